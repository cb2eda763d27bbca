"""A converted Qwen2-VL model on onnxruntime: images + chat messages in, streamed text out.

The pipeline mirrors transformers' Qwen2VLForConditionalGeneration.generate: preprocess the
images, render the chat template and expand each <|image_pad|> to the image's token count, run
the vision tower per image, splice its features into the token embeddings, compute M-RoPE
positions, prefill, then decode one token at a time with the KV cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ...errors import RagvlError
from ..contract import KIND_ANSWERER, kv_names, mrope_positions
from .generation import GenerationSettings, TokenSampler, read_generation_config
from .preprocess import ImageInput
from .tokenizer import StreamDecoder
from .conversation import Conversation, template_suffix, user_turn
from .vlm import ImageOrFeatures, Prompt, VisionLanguageModel


def user_message(text: str, n_images: int) -> list[dict]:
    """The HF chat format for one user turn: the images first, then the text."""
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


@dataclass
class Timings:
    """Where an answer's time went. No stage includes opening a session: the sessions a stage
    needs are opened (or waited for, when `open_in_background` is opening them) before its timer
    starts, and that time is `load_s` (0 once the model is open)."""

    load_s: float = 0.0  # opening the onnxruntime sessions this answer needed and found closed
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    # From the call to the first generated token, load_s excluded: preprocessing + vision +
    # prefill + 1 pick. The wall time to the first token is load_s + first_token_s.
    first_token_s: float = 0.0
    decode_steps: int = 0  # the first token comes from prefill, so steps = tokens - 1 (+1 for a stop)

    def as_dict(self) -> dict:
        steps = self.decode_steps
        return {"load_s": round(self.load_s, 4), "vision_s": round(self.vision_s, 4),
                "prefill_s": round(self.prefill_s, 4), "decode_s": round(self.decode_s, 4),
                "first_token_s": round(self.first_token_s, 4),
                "decode_tok_s": round(steps / self.decode_s, 2) if self.decode_s > 0 else None}


@dataclass
class Generation:
    """A streaming answer: iterate for text pieces; afterwards the fields hold the result."""

    _pieces: Iterator[str]
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    timings: Timings = field(default_factory=Timings)
    stop_reason: str = ""
    vision: dict = field(default_factory=dict)  # {"reused": images given as features, "computed": encoded}
    conversation: Conversation | None = None  # set once the answer is complete: pass it to follow_up
    continued: bool = False  # a follow-up that extended the kept KV cache (not a fresh prompt)
    graphs: dict = field(default_factory=dict)  # the model's open graphs: {name: {"file", "optimized", "reason"}}

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    def consume(self) -> "Generation":
        for _ in self:
            pass
        return self

    def as_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "prompt_tokens": self.prompt_tokens,
                "new_tokens": len(self.token_ids), "stop_reason": self.stop_reason, "vision": self.vision,
                "timings": self.timings.as_dict(), "graphs": self.graphs}


class Qwen2VL(VisionLanguageModel):
    """A ragvl model folder of kind qwen2-vl, opened on `device` ("cpu" or "cuda")."""

    def __init__(self, folder: str | Path, device: str | None = None, threads: int | None = None):
        super().__init__(folder, KIND_ANSWERER, device, threads)
        self.defaults = read_generation_config(self.folder)
        self._out_names = ["logits"] + [n for i in range(self.config.text.num_hidden_layers) for n in kv_names(i)[2:]]

    @property
    def decoder(self):
        return self.session("decoder")

    # -- building blocks ------------------------------------------------------------------
    def build_prompt(self, messages: list[dict], images: Sequence[ImageOrFeatures] = (),
                     max_pixels: int | None = None) -> Prompt:
        """Render the chat template and preprocess the images it refers to, in order.

        An ImageFeatures item stands for an image whose vision features were computed earlier.
        """
        pixels, grids, counts, given = self.prepare_images(images, self.image_config_for(max_pixels))
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = self.tokenizer.encode_prompt(text, counts)
        n_pads = int((ids == self.config.image_token_id).sum())
        if n_pads != sum(counts):
            raise RagvlError(f"the prompt has {n_pads} image tokens but {len(images)} image(s) "
                             f"need {sum(counts)}: pass as many images as the messages name")
        return Prompt(np.asarray(ids, dtype=np.int64), pixels, grids, given)

    def empty_cache(self, batch: int = 1) -> dict[str, np.ndarray]:
        t = self.config.text
        z = np.zeros((batch, t.num_key_value_heads, 0, t.head_dim), np.float32)
        return {n: z for i in range(t.num_hidden_layers) for n in kv_names(i)[:2]}

    def run_decoder(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                    past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder call; returns (last-position logits (B, V), the new cache as the next past)."""
        outs = self.decoder.run(self._out_names, {"inputs_embeds": embeds, "attention_mask": mask,
                                                  "position_ids": positions, **past})
        cache = {}
        for i in range(self.config.text.num_hidden_layers):
            pk, pv, _, _ = kv_names(i)
            cache[pk], cache[pv] = outs[1 + 2 * i], outs[2 + 2 * i]
        return outs[0], cache

    def decode_step(self, token: int, cache: dict[str, np.ndarray], length: int, delta: int
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Feed one token after `length` cached ones: (logits (V,), the grown cache).

        Past the prompt, all three M-RoPE rows advance together from length + rope delta.
        """
        logits, cache = self.run_decoder(self.embed_ids(np.array([[token]], np.int64)),
                                         np.ones((1, length + 1), np.int64),
                                         np.full((3, 1, 1), length + delta, np.int64), cache)
        return logits[0], cache

    def prefill(self, prompt: Prompt, timings: Timings | None = None):
        """Vision + prefill: returns (logits (V,), cache, rope delta).

        The sessions they need are opened first, into `timings.load_s` (the vision tower only
        when some image has no given features)."""
        timings = timings or Timings()
        timings.load_s += self.ensure_open(*(("vision",) if self.needs_vision(prompt) else ()), "embed", "decoder")
        t0 = time.perf_counter()
        feats = self.encode_images(prompt)
        t1 = time.perf_counter()
        ids = prompt.ids[None]  # (1, S)
        embeds = self.embed_prompt(ids, feats)  # (1, S, H)
        positions, deltas = mrope_positions(ids, self.config.image_token_id, prompt.grids,
                                            self.config.vision.spatial_merge_size)
        logits, cache = self.run_decoder(embeds, np.ones_like(ids), positions, self.empty_cache())
        timings.vision_s += t1 - t0
        timings.prefill_s += time.perf_counter() - t1
        return logits[0], cache, int(deltas[0])

    # -- generation -----------------------------------------------------------------------
    def generate(self, messages: list[dict], images: Sequence[ImageOrFeatures] = (),
                 settings: GenerationSettings | None = None, max_pixels: int | None = None) -> Generation:
        """Stream an answer to `messages` (HF chat format) over `images`.

        An item of `images` may be ImageFeatures (this model's own vision output for that image,
        e.g. stored at indexing): it is spliced in without running the vision tower.
        """
        settings = settings or self.defaults
        start = time.perf_counter()
        prompt = self.build_prompt(messages, images, max_pixels)
        return self.generate_prompt(prompt, settings, messages=messages, max_pixels=max_pixels, start=start)

    def generate_prompt(self, prompt: Prompt, settings: GenerationSettings | None = None, *,
                        messages: list[dict] | None = None, max_pixels: int | None = None,
                        start: float | None = None) -> Generation:
        """Stream an answer to an already built prompt (`messages` as rendered into it, if known)."""
        settings = settings or self.defaults
        start = time.perf_counter() if start is None else start
        gen = Generation(iter(()), prompt_tokens=len(prompt.ids), graphs=self.loaded,
                         vision={"reused": prompt.n_given, "computed": len(prompt.grids) - prompt.n_given})

        def first(timings: Timings):
            logits, cache, delta = self.prefill(prompt, timings)
            return logits, cache, delta, list(prompt.ids), len(prompt.ids)

        gen._pieces = self._decode_loop(first, settings, gen, start,
                                        lambda: (messages or [], prompt, max_pixels))
        return gen

    def follow_up(self, conversation: Conversation, text: str, settings: GenerationSettings | None = None
                  ) -> Generation:
        """Stream the answer to a follow-up user turn over the same images.

        The kept KV cache of `conversation` is extended with only the new turn's tokens; the result
        equals answering the whole conversation from scratch. Where the chat template does not
        allow that, the whole conversation is prompted again (`Generation.continued` is False).
        """
        settings = settings or self.defaults
        start = time.perf_counter()
        conv = conversation
        messages = conv.messages + [user_turn(text)]
        suffix = template_suffix(self.tokenizer.apply_chat_template, conv.messages,
                                 conv.messages[-1]["content"], text)
        if suffix is None:  # the whole conversation again, over the images already prepared
            p = conv.prompt
            merge = self.config.vision.spatial_merge_size
            ids = self.tokenizer.encode_prompt(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True),
                                               [int(np.prod(g)) // merge ** 2 for g in p.grids])
            prompt = Prompt(np.asarray(ids, np.int64), p.pixel_values, p.grids, p.given)
            return self.generate_prompt(prompt, settings, messages=messages, max_pixels=conv.max_pixels, start=start)
        new = [int(t) for t in self.tokenizer.encode_prompt(suffix, [])]
        ids = conv.ids + new
        gen = Generation(iter(()), prompt_tokens=len(ids), vision={"reused": 0, "computed": 0}, continued=True,
                         graphs=self.loaded)

        def extend(timings: Timings):
            timings.load_s += self.ensure_open("embed", "decoder")
            t0 = time.perf_counter()
            todo = np.asarray([ids[conv.cached:]], np.int64)  # (1, n): tokens not in the cache yet
            n = todo.shape[1]
            positions = np.broadcast_to(np.arange(conv.cached, conv.cached + n) + conv.delta, (3, 1, n))
            logits, cache = self.run_decoder(self.embed_ids(todo), np.ones((1, len(ids)), np.int64),
                                             np.ascontiguousarray(positions, np.int64), conv.cache)
            timings.prefill_s += time.perf_counter() - t0
            return logits[0], cache, conv.delta, list(ids), len(ids)

        gen._pieces = self._decode_loop(extend, settings, gen, start, lambda: (messages, conv.prompt, conv.max_pixels))
        return gen

    def _decode_loop(self, first, settings: GenerationSettings, gen: Generation, start: float,
                     context) -> Iterator[str]:
        """Decode after `first(timings)` -> (logits, cache, rope delta, ids so far, ids in cache);
        at the end, `gen.conversation` keeps the state for a follow-up (`context()` gives the
        messages, first prompt and max_pixels). `first` opens the embed and decoder sessions
        (into `load_s`), so the decode steps never open one."""
        tok = self.tokenizer
        stops = set(settings.eos_token_ids) | {t for t in (tok.im_end_id, tok.eos_token_id) if t is not None}
        if settings.ignore_eos:
            stops = set()
        sampler = TokenSampler(settings)
        logits, cache, delta, ids, total = first(gen.timings)
        stream = StreamDecoder(self.tokenizer)
        gen.stop_reason = "length"
        for step in range(settings.max_new_tokens):
            token = sampler(logits, np.asarray(ids, np.int64))
            if step == 0:
                gen.timings.first_token_s = time.perf_counter() - start - gen.timings.load_s
            if token in stops:
                gen.stop_reason = "stop"
                break
            ids.append(token)
            gen.token_ids.append(token)
            piece = stream.feed(token)
            if piece:
                yield piece
            if step + 1 == settings.max_new_tokens:
                break
            t0 = time.perf_counter()
            logits, cache = self.decode_step(token, cache, total, delta)
            total += 1
            gen.timings.decode_s += time.perf_counter() - t0
            gen.timings.decode_steps += 1
        tail = stream.flush()
        if tail:
            yield tail
        messages, prompt, max_pixels = context()
        text = tok.decode(gen.token_ids, skip_special_tokens=True)  # what the pieces add up to
        gen.conversation = Conversation(messages + [{"role": "assistant", "content": text}], prompt, ids, cache,
                                        total, delta, max_pixels)

    def chat(self, prompt: str, images: Sequence[ImageInput] = (), settings: GenerationSettings | None = None,
             max_pixels: int | None = None) -> Generation:
        """One user turn: `images` first, then `prompt`, as qwen2_vl.py's `--input x --prompt y`."""
        return self.generate(user_message(prompt, len(images)), images, settings, max_pixels)

