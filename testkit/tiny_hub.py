"""The torch-free parts of a tiny Qwen2-VL / ColQwen2 checkpoint in the Hugging Face hub layout.

Shared by the two weight builders: testkit/tiny_numpy.py (numpy, no torch: the runtime-only test
suite) and testkit/tiny_checkpoints.py + testkit/tiny_colqwen2.py (torch + transformers, the reference
stack of the parity tests). Both write the same files around their weights:

- the tokenizer (testkit/tiny_tokenizer.py, re-exported here: ``build_tokenizer`` ...);
- the shapes of the tiny variants (``TinySpec``, ``SPECS``);
- ``config.json`` in the flat hub layout (transformers 4.x) or the nested 5.3 layout,
  ``preprocessor_config.json``, ``generation_config.json``;
- safetensors files, single or sharded with ``model.safetensors.index.json`` (``write_safetensors``);
- ColQwen2's config files; its key names and LoRA adapters are in testkit/tiny_lora.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

from tiny_tokenizer import (  # noqa: F401 (re-exported)
    PRETOKENIZE_REGEX,
    QWEN2_VL_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    _tokenizer_json,
    _write_json,
    build_tokenizer,
    special_token_ids,
    tokenizer_size,
)

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


def write_safetensors(
    out: Path, tensors: dict[str, Any], *, sharded: bool, num_shards: int, save_file: Callable, meta: dict
) -> None:
    """Write `tensors` (numpy arrays or torch tensors, by hub name) into `out` as model.safetensors,
    or, when `sharded`, as `num_shards` shards plus model.safetensors.index.json.

    save_file: safetensors.numpy.save_file or safetensors.torch.save_file; meta: the file metadata
    ({"format": "pt"} is what transformers writes and looks for).
    """
    names = sorted(tensors)
    if not sharded:
        save_file({k: tensors[k] for k in names}, str(out / "model.safetensors"), metadata=meta)
        return
    # Balance shards by bytes, keeping the sorted key order (like transformers' max_shard_size
    # splitting, but with a fixed shard count so tiny models still get >= 2 shards).
    sizes = {k: int(tensors[k].nbytes) for k in names}
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


# ---------------------------------------------------------------------------------------------
# ColQwen2
# ---------------------------------------------------------------------------------------------

EMBED_DIM = 128  # ColQwen2.dim: custom_text_proj's output width


def colqwen2_config(spec: TinySpec, layout: str = "nested", dtype: str = "float32") -> dict[str, Any]:
    """config.json of a ColQwen2 checkpoint: the Qwen2-VL config with architectures ["ColQwen2"].

    "flat" is what vidore/colqwen2-base / -v1.0-merged ship (written by transformers 4.x);
    "nested" is what transformers 5.3 writes. model_type stays "qwen2_vl".
    """
    if layout == "nested":
        cfg = nested_config(spec, dtype)
    elif layout == "flat":
        cfg = flat_config(spec, dtype)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    cfg["architectures"] = ["ColQwen2"]
    return cfg


def colqwen2_preprocessor_config(min_pixels: int = HUB_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS) -> dict:
    """preprocessor_config.json as the ColQwen2 hub repos ship it (Qwen2-VL's, saved by ColQwen2Processor).

    The hub file keeps Qwen2-VL's max_pixels (12845056); training capped pages at 768 visual tokens
    (602112 pixels) through ColQwen2Processor(max_num_visual_tokens=768). Tests use a small cap.
    """
    cfg = preprocessor_config(min_pixels, max_pixels)
    cfg["processor_class"] = "ColQwen2Processor"
    return cfg
