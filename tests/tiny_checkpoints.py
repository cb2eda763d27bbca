"""Tiny random-weight Qwen2-VL checkpoints in the Hugging Face hub layout, plus the HF reference harness.

Test and benchmark helper only: it imports torch and transformers (the reference stack), which
the runtime package `ragvl` never does.

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
import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Qwen2's special tokens, in the order the hub assigns their ids (151643 ... 151656). Here they are
# appended after the trained vocabulary, so they keep that relative order and sit at the end,
# like the hub's.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split regex (transformers/models/qwen2/tokenization_qwen2.py, and the hub's
# tokenizer.json). transformers 5.3's Qwen2Tokenizer rebuilds the backend from vocab+merges with
# exactly this pipeline, while ragvl reads tokenizer.json as is: writing the same pipeline into
# tokenizer.json keeps the two identical.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen/Qwen2-VL-2B-Instruct's chat template, verbatim from its tokenizer_config.json (the same
# string is in transformers' own tests/models/qwen2_vl/test_processing_qwen2_vl.py). Reconstructed
# from memory and checked character by character against several public copies of that file.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The built-in training text: English (including every word of the chat template's fixed text),
# Japanese (hiragana, katakana, kanji, full-width punctuation), digits and ASCII punctuation. Chars
# that do not occur here are still encodable (byte-level BPE) but split into 2-4 byte tokens,
# which is exactly what the streaming-decoder tests need.
_TRAINING_TEXT = """\
system
You are a helpful assistant.
user
assistant
Picture 1: Picture 2: Picture 3: Video 1:
Describe the image. What is shown in this picture? Describe this page in detail.
Answer the question using only the pages below. If the answer is not on the pages, say so.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Retrieval-augmented generation finds the most relevant pages and lets the model read them.
Table 3 shows revenue of $1,234.56 (up 7.8%) for Q4 2023; see section 2.1, page 17.
Figures: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 2048 3.14159 -42 +7 1e-6 50% #1 @home
Punctuation: , . ; : ! ? ' " ( ) [ ] { } < > / \\ | - _ = + * & ^ % $ # @ ~ `
The invoice is due on 2024-03-31. Contact: info@example.com or https://example.com/docs?id=42.
こんにちは。今日はいい天気ですね。
これは日本語のテストです。東京は日本の首都です。
この画像を説明してください。このページには何が書かれていますか？
質問に答えてください。答えはページの中にあります。
私は学生です。図書館で本を読みます。駅まで歩いて十分です。
カタカナ：コンピュータ、データ、モデル、ページ、テキスト、イメージ。
数字：一、二、三、四、五、百、千、万。２０２４年３月３１日。
「検索拡張生成」は、関連するページを見つけてモデルに読ませます。
売上高は前年比７．８％増の１２３億円でした（第４四半期）。
Mixed: The page says 東京タワー is 333 m tall. 答え: 42.
"""

_BPE_VOCAB_SIZE = 640  # the trainer stops early on this small text; ~600 tokens + 14 specials


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    """Train the tiny byte-level BPE once per process and return its tokenizer.json text.

    Training is deterministic for a fixed text and trainer, so every checkpoint built in a
    session shares the same vocabulary.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(
        BPE(
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    # The hub Qwen2 pipeline: NFC, regex split, byte-level mapping (no regex of its own).
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        # All 256 byte symbols, so that any UTF-8 text is encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_TRAINING_TEXT.splitlines(keepends=True), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok.to_str()


def special_token_ids() -> dict[str, int]:
    """Ids of the Qwen2 special tokens in the tiny tokenizer, e.g. {"<|image_pad|>": 618, ...}."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_tokenizer_json())
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def tokenizer_size() -> int:
    """Number of tokens in the tiny tokenizer, specials included."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_tokenizer_json()).get_vocab_size(with_added_tokens=True)


def _tokenizer_config(include_chat_template: bool) -> dict[str, Any]:
    """tokenizer_config.json as Qwen/Qwen2-VL-2B-Instruct ships it, with this vocabulary's ids."""
    ids = special_token_ids()
    cfg: dict[str, Any] = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "chat_template": QWEN2_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "padding_side": "left",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if not include_chat_template:
        del cfg["chat_template"]
    return cfg


def build_tokenizer(out_dir: str | Path, chat_template_location: str = "tokenizer_config") -> Path:
    """Write tokenizer.json, tokenizer_config.json and the chat template into `out_dir`.

    chat_template_location: "tokenizer_config" (inside tokenizer_config.json, as on the hub),
    "chat_template.json" ({"chat_template": ...}, the processor's legacy file) or
    "chat_template.jinja" (the raw file transformers 5.x writes).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if chat_template_location not in ("tokenizer_config", "chat_template.json", "chat_template.jinja"):
        raise ValueError(f"unknown chat_template_location {chat_template_location!r}")
    (out / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
    in_config = chat_template_location == "tokenizer_config"
    _write_json(out / "tokenizer_config.json", _tokenizer_config(include_chat_template=in_config))
    if chat_template_location == "chat_template.json":
        _write_json(out / "chat_template.json", {"chat_template": QWEN2_VL_CHAT_TEMPLATE})
    elif chat_template_location == "chat_template.jinja":
        (out / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE, encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# Model specs
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """Shape of one tiny Qwen2-VL variant. head_dim = hidden_size / num_heads for both towers."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    mrope_section: tuple[int, int, int]  # sums to text head_dim / 2
    vision_depth: int
    vision_embed_dim: int
    vision_num_heads: int
    vision_mlp_ratio: int
    tie_word_embeddings: bool
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    # Large, so logits are peaked and greedy comparisons do not hinge on near-ties.
    initializer_range: float = 0.2
    # The hub pads the embedding matrix past the tokenizer (151936 rows for 151657 tokens);
    # rounding up to a multiple of this reproduces that, so a runtime cannot confuse the two sizes.
    vocab_multiple: int = 64
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def vocab_size(self) -> int:
        n = tokenizer_size()
        return int(math.ceil(n / self.vocab_multiple) * self.vocab_multiple)


SPECS: dict[str, TinySpec] = {
    # GQA with 2 query heads per KV head; tied lm_head like Qwen2-VL-2B.
    "a": TinySpec(
        name="a",
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        mrope_section=(2, 3, 3),
        vision_depth=2,
        vision_embed_dim=32,
        vision_num_heads=4,  # vision head_dim 8
        vision_mlp_ratio=4,
        tie_word_embeddings=True,
    ),
    # 6 query heads on 1 KV head (the 2B's group size of 6); untied lm_head like Qwen2-VL-7B.
    "b": TinySpec(
        name="b",
        hidden_size=96,
        intermediate_size=200,
        num_layers=3,
        num_heads=6,
        num_kv_heads=1,
        mrope_section=(4, 2, 2),
        vision_depth=3,
        vision_embed_dim=48,
        vision_num_heads=3,  # vision head_dim 16
        vision_mlp_ratio=2,
        tie_word_embeddings=False,
    ),
}

for _s in SPECS.values():
    assert sum(_s.mrope_section) * 2 == _s.head_dim, _s
    assert (_s.vision_embed_dim // _s.vision_num_heads) % 4 == 0, _s


def _spec(variant: str | TinySpec) -> TinySpec:
    if isinstance(variant, TinySpec):
        return variant
    try:
        return SPECS[variant]
    except KeyError:
        raise ValueError(f"unknown tiny variant {variant!r}; known: {sorted(SPECS)}") from None


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float16")


def nested_config(spec: TinySpec, dtype: str = "float32") -> dict[str, Any]:
    """config.json in the layout transformers 5.3's save_pretrained writes (text_config, rope_parameters)."""
    ids = special_token_ids()
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "dtype": dtype,
        "image_token_id": ids["<|image_pad|>"],
        "model_type": "qwen2_vl",
        "text_config": {
            "attention_dropout": 0.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "hidden_act": "silu",
            "hidden_size": spec.hidden_size,
            "initializer_range": spec.initializer_range,
            "intermediate_size": spec.intermediate_size,
            "layer_types": ["full_attention"] * spec.num_layers,
            "max_position_embeddings": spec.max_position_embeddings,
            "max_window_layers": spec.num_layers,
            "model_type": "qwen2_vl_text",
            "num_attention_heads": spec.num_heads,
            "num_hidden_layers": spec.num_layers,
            "num_key_value_heads": spec.num_kv_heads,
            "pad_token_id": ids["<|endoftext|>"],
            "rms_norm_eps": spec.rms_norm_eps,
            "rope_parameters": {
                "mrope_section": list(spec.mrope_section),
                "rope_theta": spec.rope_theta,
                "rope_type": "default",
            },
            "sliding_window": None,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": spec.vocab_size,
        },
        "tie_word_embeddings": spec.tie_word_embeddings,
        "transformers_version": "5.3.0",
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "depth": spec.vision_depth,
            "embed_dim": spec.vision_embed_dim,
            "hidden_act": "quick_gelu",
            "hidden_size": spec.hidden_size,  # the merger's output feeds the text model
            "in_channels": 3,
            "initializer_range": spec.initializer_range,
            "mlp_ratio": spec.vision_mlp_ratio,
            "model_type": "qwen2_vl",
            "num_heads": spec.vision_num_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
    }


def flat_config(spec: TinySpec, dtype: str = "float32") -> dict[str, Any]:
    """config.json in the flat transformers-4.x layout of the hub's Qwen2-VL-2B-Instruct.

    Same field set as the hub file: text fields at top level, `rope_scaling` with type "mrope",
    `vision_config` using `in_chans`; no pad_token_id (the hub config has none).
    """
    ids = special_token_ids()
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": spec.initializer_range,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_layers,
        "model_type": "qwen2_vl",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "sliding_window": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": dtype,
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": spec.vision_depth,
            "embed_dim": spec.vision_embed_dim,
            "mlp_ratio": spec.vision_mlp_ratio,
            "num_heads": spec.vision_num_heads,
            "in_chans": 3,
            "hidden_size": spec.hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "hidden_act": "quick_gelu",
        },
        "rope_scaling": {"type": "mrope", "mrope_section": list(spec.mrope_section)},
        "vocab_size": spec.vocab_size,
    }


# Tiny checkpoints cap images at 64 merged tokens (8x8 merge windows) to keep tests fast.
TINY_MAX_PIXELS = 28 * 28 * 64
HUB_MIN_PIXELS = 3136
HUB_MAX_PIXELS = 12845056


def preprocessor_config(min_pixels: int = HUB_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS) -> dict[str, Any]:
    """preprocessor_config.json in the hub's Qwen2-VL style (min/max_pixels, not `size`)."""
    return {
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }


def generation_config(kind: str = "hub") -> dict[str, Any]:
    """generation_config.json. "hub": Qwen2-VL-Instruct's (sampling flags that amount to greedy);
    "greedy": plain do_sample=False."""
    ids = special_token_ids()
    base = {
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
    }
    if kind == "hub":
        return {
            **base,
            "do_sample": True,
            "repetition_penalty": 1.0,
            "temperature": 0.01,
            "top_p": 0.001,
            "top_k": 1,
            "transformers_version": "4.37.0",
        }
    if kind == "greedy":
        return {**base, "do_sample": False, "transformers_version": "5.3.0"}
    raise ValueError(f"unknown generation config kind {kind!r}")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    from safetensors.torch import save_file

    meta = {"format": "pt"}
    names = sorted(tensors)
    if not sharded:
        save_file({k: tensors[k] for k in names}, str(out / "model.safetensors"), metadata=meta)
        return
    # Balance shards by bytes, keeping the sorted key order (like transformers' max_shard_size
    # splitting, but with a fixed shard count so tiny models still get >= 2 shards).
    sizes = {k: tensors[k].numel() * tensors[k].element_size() for k in names}
    total = sum(sizes.values())
    target = total / num_shards
    shards: list[list[str]] = [[]]
    acc = 0
    for k in names:
        if acc >= target * len(shards) and len(shards) < num_shards:
            shards.append([])
        shards[-1].append(k)
        acc += sizes[k]
    assert len(shards) == num_shards and all(shards), "too few tensors to shard"
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(out / fname), metadata=meta)
        weight_map.update({k: fname for k in keys})
    _write_json(
        out / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


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

