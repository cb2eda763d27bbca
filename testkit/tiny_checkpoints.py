"""Tiny random-weight Qwen2-VL checkpoints in the Hugging Face hub layout, plus the HF reference harness.

Test and benchmark helper only: it imports torch and transformers (the reference stack), which
the runtime package `ragvl` never does. The tokenizer, specs and config files come from
testkit/tiny_hub.py, shared with the torch-free builder testkit/tiny_numpy.py.

What a checkpoint folder holds (everything the hub's Qwen/Qwen2-VL-2B-Instruct holds, tiny):

- ``model.safetensors`` or ``model-0000N-of-0000M.safetensors`` + ``model.safetensors.index.json``,
  tensors under the hub names ``visual.*``, ``model.embed_tokens.weight``, ``model.layers.N.*``,
  ``model.norm.weight`` and, only when untied, ``lm_head.weight``;
- ``config.json``: "flat" (what transformers 4.x wrote, i.e. the hub) or "nested" (what 5.3 writes);
- ``preprocessor_config.json``, ``generation_config.json``;
- ``tokenizer.json`` (a byte-level BPE trained here, offline) and ``tokenizer_config.json``;
- the chat template in ``tokenizer_config.json`` (the hub), ``chat_template.json`` or ``chat_template.jinja``.

Typical use::

    ckpt = make_checkpoint(tmp_path / "a", variant="a")
    model = load_hf_model(ckpt)
    processor = make_hf_processor(ckpt)
    ref = hf_generate(model, processor, messages, [image], max_new_tokens=32)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

# The torch-free parts (tokenizer, specs, config files, safetensors writing) live in tiny_hub,
# shared with the numpy builder; re-exported here for the tests and benchmarks that use them.
from tiny_hub import (  # noqa: F401
    _DTYPES,
    HUB_MAX_PIXELS,
    HUB_MIN_PIXELS,
    PRETOKENIZE_REGEX,
    QWEN2_VL_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    SPECS,
    TINY_MAX_PIXELS,
    TinySpec,
    _spec,
    _tokenizer_json,
    _write_json,
    build_tokenizer,
    flat_config,
    generation_config,
    nested_config,
    preprocessor_config,
    special_token_ids,
    tokenizer_size,
    write_safetensors,
)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def to_hub_name(name: str) -> str | None:
    """Map a transformers-5.3 module name to the hub checkpoint key (None: not stored)."""
    if name.startswith("model.visual."):
        return name[len("model.") :]  # visual.*
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]  # model.embed_tokens / layers / norm
    if name == "lm_head.weight":
        return name
    raise ValueError(f"unexpected parameter {name}")


def build_hf_model(variant: str | TinySpec = "a", seed: int = 0):
    """A randomly initialised Qwen2VLForConditionalGeneration (fp32, eval mode) for `variant`.

    After transformers' own init (normal(0, initializer_range) matrices, zero biases, unit norms),
    biases and norm weights/biases are re-drawn around their defaults: with zeros and ones a port
    that drops the q/k/v bias or a LayerNorm bias would still match the reference.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    spec = _spec(variant)
    cfg = Qwen2VLConfig(**nested_config(spec))
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Tied lm_head shares storage with embed_tokens: named_parameters lists it once.
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "norm" in name and p.ndim == 1:  # RMSNorm / LayerNorm / merger ln_q weights
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def hub_state_dict(model) -> dict[str, Any]:
    """The model's tensors under hub key names, tied lm_head left out (as the hub does)."""
    tied = model.config.tie_word_embeddings
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        out[to_hub_name(name)] = t.detach().clone().contiguous()
    return out


def _save_safetensors(out: Path, tensors: dict[str, Any], sharded: bool, num_shards: int) -> None:
    """tiny_hub.write_safetensors for torch tensors."""
    from safetensors.torch import save_file

    write_safetensors(out, tensors, sharded=sharded, num_shards=num_shards, save_file=save_file, meta={"format": "pt"})


def make_checkpoint(
    out_dir: str | Path,
    variant: str | TinySpec = "a",
    layout: str = "nested",
    sharded: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    *,
    num_shards: int = 2,
    chat_template_location: str = "tokenizer_config",
    min_pixels: int = HUB_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    generation: str = "hub",
) -> Path:
    """Write a tiny random Qwen2-VL checkpoint folder in the hub layout and return its path.

    variant: "a" | "b" (see SPECS) or a TinySpec. layout: "nested" (transformers 5.3 config.json)
    or "flat" (transformers 4.x / hub config.json). sharded: >= 2 shards + index json.
    dtype: stored tensor dtype ("float32" | "bfloat16" | "float16"). seed: weight init seed.
    chat_template_location: see build_tokenizer. min/max_pixels: preprocessor_config.json.
    generation: "hub" | "greedy" generation_config.json.
    """
    import torch

    if layout not in ("nested", "flat"):
        raise ValueError(f"unknown layout {layout!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    spec = _spec(variant)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    model = build_hf_model(spec, seed=seed)
    tensors = {k: v.to(getattr(torch, dtype)) for k, v in hub_state_dict(model).items()}
    _save_safetensors(out, tensors, sharded=sharded, num_shards=num_shards)

    config = nested_config(spec, dtype) if layout == "nested" else flat_config(spec, dtype)
    _write_json(out / "config.json", config)
    _write_json(out / "preprocessor_config.json", preprocessor_config(min_pixels, max_pixels))
    _write_json(out / "generation_config.json", generation_config(generation))
    build_tokenizer(out, chat_template_location=chat_template_location)
    return out


def read_hub_tensors(ckpt_dir: str | Path) -> dict[str, Any]:
    """All tensors of a checkpoint folder (single file or sharded), as stored (torch tensors)."""
    from safetensors.torch import load_file

    d = Path(ckpt_dir)
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out: dict[str, Any] = {}
    for f in files:
        out.update(load_file(str(d / f)))
    return out


# ---------------------------------------------------------------------------------------------
# HF reference harness
# ---------------------------------------------------------------------------------------------


def load_hf_model(ckpt_dir: str | Path):
    """Qwen2VLForConditionalGeneration.from_pretrained in fp32, eval mode, eager attention.

    Eager attention: plain matmul + softmax in fp32, the most literal reference and identical
    from run to run; the tiny sizes make its cost irrelevant.
    """
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(
        str(ckpt_dir), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _hf_chat_template(ckpt_dir: Path, tokenizer) -> str | None:
    """The chat template a Qwen2VLProcessor.from_pretrained would get, as transformers 5.3 resolves it.

    ProcessorMixin.get_processor_dict looks at processor_config.json's "chat_template", then
    chat_template.json, then chat_template.jinja. It never falls back to tokenizer_config.json,
    so a hub folder with the template only there gives a processor without one; the tokenizer
    (chat_template.jinja, then tokenizer_config.json) does have it, and that is used then.
    """
    from transformers import Qwen2VLProcessor

    processor_dict, _ = Qwen2VLProcessor.get_processor_dict(str(ckpt_dir), local_files_only=True)
    template = processor_dict.get("chat_template")
    if isinstance(template, dict):
        template = template.get("default")
    return template if template is not None else tokenizer.chat_template


def without_torchvision(processor_class):
    """`processor_class` minus its class check on `video_processor`: transformers 5.3's real video
    processor imports torchvision, so tests pass a plain BaseVideoProcessor (never used for images)."""

    class NoTorchvision(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    NoTorchvision.__name__ = f"{processor_class.__name__}NoTorchvision"
    return NoTorchvision


def make_hf_processor(ckpt_dir: str | Path, **image_kwargs):
    """A Qwen2VLProcessor for `ckpt_dir` that works without torchvision (transformers 5.3).

    image processor: the slow numpy/PIL Qwen2VLImageProcessor from preprocessor_config.json, with
    `image_kwargs` (e.g. max_pixels=...) overriding it. video processor: a plain
    BaseVideoProcessor, since the real Qwen2-VL one imports torchvision; the processor's class
    check is bypassed for it because `transformers.BaseVideoProcessor` is a dummy placeholder
    when torchvision is absent. Videos are never processed here.
    """
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.video_processing_utils import BaseVideoProcessor

    d = Path(ckpt_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    image_processor = Qwen2VLImageProcessor.from_pretrained(str(d), **image_kwargs)
    return without_torchvision(Qwen2VLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=BaseVideoProcessor(),
        chat_template=_hf_chat_template(d, tokenizer),
    )


def hf_generate(
    model,
    processor,
    messages: list[dict],
    images: list | None = None,
    max_new_tokens: int = 32,
    *,
    stop_at_eos: bool = False,
    **template_kwargs,
) -> dict[str, Any]:
    """Greedy HF generation for one conversation; the reference every parity test compares with.

    Renders `messages` with the processor's chat template (add_generation_prompt=True, plus any
    `template_kwargs` such as add_vision_id=True), runs the processor on the text and `images`
    (PIL images, in prompt order), and calls `model.generate(do_sample=False)` with every
    processor output, `mm_token_type_ids` included (without it transformers 5.3 silently falls
    back to 1-D positions).

    End of sequence: with stop_at_eos=False (default) EOS does not stop generation, so exactly
    `max_new_tokens` plain-argmax tokens come back. That is done by running generate with a
    generation config that has no eos_token_id, not with min_new_tokens (which would mask EOS
    logits and change the argmax); a runtime compares by simply not stopping on EOS.

    Returns numpy arrays: prompt_ids (S,) int64, new_token_ids (N,) int64, first_logits (V,) fp32
    (raw logits of the first generated position), mm_token_type_ids (S,), min_logit_margin
    (float, see below), and when images are
    given pixel_values (P, C*T*ps*ps) fp32 and image_grid_thw (n_images, 3); plus text, the
    rendered prompt string.
    """
    import torch
    from transformers import GenerationConfig

    # Deep copy: the processor rewrites content lists of the caller's messages in place.
    text = processor.apply_chat_template(copy.deepcopy(messages), add_generation_prompt=True, **template_kwargs)
    inputs = processor(text=[text], images=images if images else None, return_tensors="pt")
    if "mm_token_type_ids" not in inputs:
        raise AssertionError("processor did not return mm_token_type_ids; HF would use 1-D positions")

    ids = processor.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    gen_cfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=ids[0],
        eos_token_id=model.generation_config.eos_token_id if stop_at_eos else None,
        return_dict_in_generate=True,
        output_logits=True,
    )
    # generate() fills every unset (None) field from model.generation_config, which would bring
    # the checkpoint's EOS ids (and its do_sample/top_k/...) back; swap in a bare config meanwhile.
    saved = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=ids[0])
    try:
        with torch.no_grad():
            out = model.generate(**inputs, generation_config=gen_cfg)
    finally:
        model.generation_config = saved

    prompt_len = inputs["input_ids"].shape[1]
    result: dict[str, Any] = {
        "text": text,
        "prompt_ids": inputs["input_ids"][0].numpy().astype(np.int64),
        "new_token_ids": out.sequences[0, prompt_len:].numpy().astype(np.int64),
        "first_logits": out.logits[0][0].float().numpy(),
        "mm_token_type_ids": inputs["mm_token_type_ids"][0].numpy().astype(np.int64),
        # Smallest top-1 minus top-2 raw logit over the generated steps: how far the greedy
        # choices are from a tie (a runtime within this of HF must pick the same tokens).
        "min_logit_margin": min(
            float(d[0] - d[1]) for d in (torch.topk(s[0].float(), 2).values for s in out.logits)
        ),
    }
    if images:
        result["pixel_values"] = inputs["pixel_values"].float().numpy()
        result["image_grid_thw"] = inputs["image_grid_thw"].numpy().astype(np.int64)
    return result

