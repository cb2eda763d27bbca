"""Qwen2-VL tokenization at run time: tokenizer.json, the checkpoint's chat template, streaming decode.

No torch, no transformers: the `tokenizers` library reads the checkpoint's tokenizer.json and
jinja2 renders the chat template in the same sandboxed environment transformers uses, so the
prompt ids equal those of transformers' Qwen2VLProcessor (tests/test_tokenizer.py checks it).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ...errors import RagvlError

# Token strings of the Qwen2-VL special tokens. Their ids are looked up in each checkpoint's vocab.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Where a chat template may sit, in the order transformers 5.3 looks (processing_utils.py,
# ProcessorMixin.get_processor_dict, then the tokenizer's own loading in tokenization_utils_base.py):
#   processor_config.json "chat_template" > chat_template.json > chat_template.jinja
#   > tokenizer_config.json "chat_template".
# Note: the processor reads the legacy chat_template.json BEFORE chat_template.jinja, so when
# both exist the .json wins; tokenizer_config.json is only the tokenizer's (the hub's) copy.
CHAT_TEMPLATE_SOURCES = ("processor_config.json", "chat_template.json", "chat_template.jinja", "tokenizer_config.json")

# Same stand-in transformers' Qwen2VLProcessor uses while expanding image pads, so that the
# expansion cannot re-match its own output.
_PLACEHOLDER = "<|placeholder|>"


def _read_json(path: Path) -> Any:
    """json.load with a one-line RagvlError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RagvlError(f"{path}: cannot read JSON ({e})") from e


def _pick_template(value: Any, path: Path) -> str | None:
    """A chat_template value is a string, or a list of {"name", "template"} dicts (or a name->template
    dict); pick the "default" one, as transformers does."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(value, dict):
        if "default" in value:
            return value["default"]
        raise RagvlError(f"{path}: several chat templates ({', '.join(map(str, value))}) and none named 'default'")
    raise RagvlError(f"{path}: chat_template has unexpected type {type(value).__name__}")


def find_chat_template(model_dir: str | Path) -> tuple[str | None, Path | None]:
    """Return (template, file it came from), or (None, None) when the folder has no chat template."""
    d = Path(model_dir)
    for name in CHAT_TEMPLATE_SOURCES:
        path = d / name
        if not path.is_file():
            continue
        if name.endswith(".jinja"):
            try:
                return path.read_text(encoding="utf-8"), path
            except (OSError, UnicodeDecodeError) as e:
                raise RagvlError(f"{path}: cannot read chat template ({e})") from e
        template = _pick_template(_read_json(path).get("chat_template"), path)
        if template is not None:
            return template, path
    return None, None


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _compile_template(template: str):
    """Compile like transformers.utils.chat_template_utils._cached_compile_jinja_template.

    ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension,
    a `tojson` filter that does not HTML-escape (and keeps non-ASCII), `raise_exception` and
    `strftime_now` globals. `{% generation %}` blocks (used by some templates to mark assistant
    tokens) render their body unchanged, as transformers does when it is not tracking them.
    """
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


class Tokenizer:
    """A checkpoint's tokenizer.json plus its chat template and Qwen2-VL special-token ids."""

    def __init__(
        self,
        backend,
        chat_template: str | None = None,
        config: dict[str, Any] | None = None,
        source: str | Path = "<memory>",
        chat_template_path: Path | None = None,
    ):
        """Wrap a `tokenizers.Tokenizer`. Most callers want `Tokenizer.from_dir`."""
        self._tok = backend
        self.chat_template = chat_template
        self.chat_template_path = chat_template_path
        self.source = str(source)
        self._compiled = None
        config = config or {}
        # Named special tokens, as tokenizer_config.json gives them (the chat template may use them
        # as variables, e.g. {{ eos_token }}: transformers passes the same map when rendering).
        self.special_tokens_map: dict[str, str] = {}
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            content = _token_content(config.get(key))
            if content is not None:
                self.special_tokens_map[key] = str(content)
        # Qwen2 defaults when the config does not say (Qwen2Tokenizer's own defaults for pad, and the
        # Instruct models' eos).
        eos = self.special_tokens_map.get("eos_token", IM_END)
        pad = self.special_tokens_map.get("pad_token", ENDOFTEXT)

        self.endoftext_id = self._id(ENDOFTEXT)
        self.im_start_id = self._id(IM_START)
        self.im_end_id = self._id(IM_END)
        self.vision_start_id = self._id(VISION_START)
        self.vision_end_id = self._id(VISION_END)
        self.image_pad_id = self._id(IMAGE_PAD)
        self.video_pad_id = self._id(VIDEO_PAD)
        self.eos_token_id = self._id(eos)
        self.pad_token_id = self._id(pad)

    def _id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        """Load tokenizer.json, tokenizer_config.json (optional) and the chat template from a folder.

        Raises RagvlError naming the file when tokenizer.json is missing or unreadable. A folder
        without a chat template still loads (retrieval models need none); apply_chat_template
        then raises.
        """
        from tokenizers import Tokenizer as _BackendTokenizer

        d = Path(model_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise RagvlError(f"{path}: missing (the checkpoint's tokenizer.json is required)")
        try:
            backend = _BackendTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses with multi-line text
            raise RagvlError(f"{path}: cannot read tokenizer ({e})") from e
        config_path = d / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        template, template_path = find_chat_template(d)
        tok = cls(backend, template, config, source=d, chat_template_path=template_path)
        if tok.image_pad_id is None:
            raise RagvlError(f"{path}: no {IMAGE_PAD} token (not a Qwen2-VL tokenizer)")
        return tok

    # ---- sizes and plain encode / decode ----------------------------------------------------

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added tokens included (the model's embedding may have more rows)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None when it is not in the vocab."""
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text`, int64 (T,). Special tokens written in the text are recognised."""
        # add_special_tokens=True like transformers' tokenizer __call__: Qwen2's post-processor is
        # ByteLevel and adds nothing, but a checkpoint whose tokenizer.json adds tokens is honoured.
        return np.asarray(self._tok.encode(text, add_special_tokens=True).ids, dtype=np.int64)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; equal to transformers' tokenizer.decode (clean_up_tokenization_spaces off)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- prompts -----------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render HF-format messages with the checkpoint's chat template, as transformers does.

        messages: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}]
        (content may also be a plain string). Extra keyword arguments reach the template, e.g.
        add_vision_id=True for Qwen2-VL's "Picture N: " prefixes.
        """
        if self.chat_template is None:
            raise RagvlError(
                f"{self.source}: no chat template (looked in {', '.join(CHAT_TEMPLATE_SOURCES)})"
            )
        if self._compiled is None:
            try:
                self._compiled = _compile_template(self.chat_template)
            except Exception as e:
                raise RagvlError(f"{self.chat_template_path}: chat template does not compile ({e})") from e
        # transformers' processor rewrites OpenAI-style {"type": "image_url", "image_url": ...}
        # items to {"type": "image", "url": ...} before rendering.
        messages = [_normalize_message(m) for m in messages]
        tools = kwargs.pop("tools", None)
        documents = kwargs.pop("documents", None)
        # Like transformers: the named special tokens are template variables unless a keyword
        # argument of the same name overrides them.
        variables = {**{k: v for k, v in self.special_tokens_map.items() if k not in kwargs}, **kwargs}
        return self._compiled.render(
            messages=messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )

    def expand_image_pads(self, text: str, image_token_counts: list[int]) -> str:
        """Replace the i-th <|image_pad|> in `text` by image_token_counts[i] copies of it.

        This is what Qwen2VLProcessor.__call__ does to the prompt text before tokenizing.
        """
        n_pads = text.count(IMAGE_PAD)
        if n_pads != len(image_token_counts):
            raise RagvlError(
                f"prompt has {n_pads} {IMAGE_PAD} markers but {len(image_token_counts)} images were given"
            )
        for count in image_token_counts:
            text = text.replace(IMAGE_PAD, _PLACEHOLDER * int(count), 1)
        return text.replace(_PLACEHOLDER, IMAGE_PAD)

    def encode_prompt(self, text: str, image_token_counts: list[int] | tuple[int, ...] = ()) -> np.ndarray:
        """Token ids (S,) int64 of a rendered prompt with each image's pad expanded to its token count.

        image_token_counts[i] = grid_t * grid_h * grid_w / merge_size**2 of the i-th image in
        prompt order. Equals Qwen2VLProcessor's input_ids for the same text and images.
        """
        return self.encode(self.expand_image_pads(text, list(image_token_counts)))

    def mm_token_type_ids(self, ids: np.ndarray) -> np.ndarray:
        """Qwen2VLProcessor's mm_token_type_ids for `ids`: 1 at image pads, 2 at video pads, else 0.

        Same shape as `ids`, int64.
        """
        ids = np.asarray(ids)
        out = np.zeros(ids.shape, dtype=np.int64)
        out[ids == self.image_pad_id] = 1
        if self.video_pad_id is not None:
            out[ids == self.video_pad_id] = 2
        return out

    def stream_decoder(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        """A StreamDecoder bound to this tokenizer."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


def _normalize_message(message: dict) -> dict:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    new = []
    for item in content:
        if isinstance(item, dict) and item.get("type") == "image_url" and "image_url" in item:
            info = item["image_url"]
            new.append({"type": "image", "url": info.get("url", "") if isinstance(info, dict) else info})
        else:
            new.append(item)
    return {**message, "content": new}


class StreamDecoder:
    """Incremental detokenizer: feed ids one at a time, get back only complete text.

    Byte-level BPE splits multi-byte UTF-8 characters (most Japanese ones) across tokens; decoding
    such a prefix gives U+FFFD. So the undecoded tail is decoded whole at each step, and held back
    while it ends in U+FFFD. The tail is decoded with a few already-emitted tokens in front of it
    (`prefix`) and only the part past their text is emitted, so decoders that treat the start of
    a sequence specially (e.g. strip a leading space) still join up. The concatenation of all
    pieces, flush() included, equals tokenizer.decode(all ids).

    A U+FFFD that is final can only be told apart at the end, so flush() emits whatever is held
    (an invalid byte sequence then shows up as U+FFFD, exactly as in the full decode).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the context window (already emitted tokens)
        self._read = 0  # first token whose text has not been emitted

    def _decode(self, start: int, stop: int | None = None) -> str:
        return self._tokenizer.decode(self.ids[start:stop], skip_special_tokens=self._skip)

    def feed(self, token_id: int) -> str:
        """Add one token id; return the newly completed text ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        if len(text) <= len(prefix_text) or text.endswith("\ufffd") or not text.startswith(prefix_text):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        """Return everything still held back (call once generation has ended)."""
        prefix_text = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        self._prefix = self._read = len(self.ids)
        # With byte-level BPE `text` always starts with `prefix_text` (the prefix ends on a
        # character boundary), so this slice is exactly the held-back text.
        return text[len(prefix_text) :]

    def text(self) -> str:
        """The full decode of every id fed so far."""
        return self._decode(0)
