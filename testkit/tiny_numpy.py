"""Tiny random Qwen2-VL and ColQwen2 checkpoints written with numpy alone: no torch, no transformers.

The runtime-only test suite (`pytest -m "not reference"`) builds its models with this: numpy
weights under the hub key names, written with ``safetensors.numpy``, around the same tokenizer,
config and side files as the torch builders (all from testkit/tiny_hub.py). ragvl's own converter
then turns a checkpoint into a model folder, exactly as it does a downloaded one.

The weights follow the reference builders' recipe (testkit/tiny_checkpoints.build_hf_model):
matrices normal(0, initializer_range), biases 0.1 * normal, norm weights 1 + 0.1 * normal, so
logits are peaked and a port that drops a bias would show. They are not the same numbers as the
torch-built checkpoints of the same seed; a reference test checks that transformers and
colpali-engine load these folders with exactly these tensors.

Typical use::

    ckpt = make_numpy_checkpoint(tmp_path / "qwen", variant="a")          # a Qwen2-VL-2B-Instruct
    emb = make_numpy_checkpoint(tmp_path / "col", kind="colqwen2")        # a merged ColQwen2
    lora = make_numpy_lora(emb, tmp_path / "adapter")                     # like vidore/colqwen2-v1.0
    folder = convert(ckpt, tmp_path / "qwen2-vl-tiny")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiny_hub import (
    EMBED_DIM,
    HUB_MIN_PIXELS,
    TINY_MAX_PIXELS,
    TinySpec,
    _spec,
    _write_json,
    build_tokenizer,
    colqwen2_config,
    colqwen2_preprocessor_config,
    flat_config,
    generation_config,
    preprocessor_config,
    write_safetensors,
)
from tiny_lora import write_lora_adapter

KINDS = ("qwen2-vl", "colqwen2")
NUMPY_DTYPES = ("float32", "float16")  # numpy has no bfloat16


def hub_shapes(spec: TinySpec, kind: str = "qwen2-vl") -> dict[str, tuple[int, ...]]:
    """{hub key: shape} of every tensor a `kind` checkpoint of `spec` stores.

    Qwen2-VL: ``visual.*`` (patch embed Conv3d, blocks, merger), ``model.embed_tokens``,
    ``model.layers.N.*``, ``model.norm`` and, untied only, ``lm_head``. ColQwen2: the same
    without ``lm_head`` (it is a Qwen2VLModel), plus ``custom_text_proj`` (hidden -> 128).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")
    e, h, m = spec.vision_embed_dim, spec.hidden_size, spec.vision_embed_dim * 4  # 4 = 2x2 merge
    mlp = e * spec.vision_mlp_ratio
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"visual.patch_embed.proj.weight": (e, 3, 2, 14, 14)}  # Conv3d, no bias
    for i in range(spec.vision_depth):
        b = f"visual.blocks.{i}."
        shapes.update({
            b + "norm1.weight": (e,), b + "norm1.bias": (e,), b + "norm2.weight": (e,), b + "norm2.bias": (e,),
            b + "attn.qkv.weight": (3 * e, e), b + "attn.qkv.bias": (3 * e,),
            b + "attn.proj.weight": (e, e), b + "attn.proj.bias": (e,),
            b + "mlp.fc1.weight": (mlp, e), b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (e, mlp), b + "mlp.fc2.bias": (e,),
        })
    shapes.update({
        "visual.merger.ln_q.weight": (e,), "visual.merger.ln_q.bias": (e,),
        "visual.merger.mlp.0.weight": (m, m), "visual.merger.mlp.0.bias": (m,),
        "visual.merger.mlp.2.weight": (h, m), "visual.merger.mlp.2.bias": (h,),
        "model.embed_tokens.weight": (spec.vocab_size, h),
        "model.norm.weight": (h,),
    })
    for i in range(spec.num_layers):
        b = f"model.layers.{i}."
        shapes.update({
            b + "self_attn.q_proj.weight": (q, h), b + "self_attn.q_proj.bias": (q,),
            b + "self_attn.k_proj.weight": (kv, h), b + "self_attn.k_proj.bias": (kv,),
            b + "self_attn.v_proj.weight": (kv, h), b + "self_attn.v_proj.bias": (kv,),
            b + "self_attn.o_proj.weight": (h, q),  # no bias
            b + "mlp.gate_proj.weight": (spec.intermediate_size, h),
            b + "mlp.up_proj.weight": (spec.intermediate_size, h),
            b + "mlp.down_proj.weight": (h, spec.intermediate_size),
            b + "input_layernorm.weight": (h,), b + "post_attention_layernorm.weight": (h,),
        })
    if kind == "qwen2-vl" and not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, h)
    if kind == "colqwen2":
        shapes.update({"custom_text_proj.weight": (EMBED_DIM, h), "custom_text_proj.bias": (EMBED_DIM,)})
    return dict(sorted(shapes.items()))


def hub_tensors(spec: TinySpec, kind: str = "qwen2-vl", seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights for hub_shapes(spec, kind): the same seed gives the same weights, and
    the same vision tower for either kind."""
    # The vision tower draws from its own stream, so a Qwen2-VL and a ColQwen2 checkpoint of the
    # same seed share it exactly, as the published pair does (the converter then links one graph).
    rng, rng_visual = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    out = {}
    for name, shape in hub_shapes(spec, kind).items():
        x = (rng_visual if name.startswith("visual.") else rng).standard_normal(shape, dtype=np.float32)
        is_norm = len(shape) == 1 and ("norm" in name or ".ln_q." in name)
        if is_norm and name.endswith(".weight"):
            out[name] = 1.0 + 0.1 * x  # around LayerNorm / RMSNorm's default 1
        elif name.endswith(".bias"):
            out[name] = 0.1 * x  # non-zero: a port that drops a bias is caught
        else:
            out[name] = spec.initializer_range * x
    return out


def make_numpy_checkpoint(
    out_dir: str | Path,
    variant: str | TinySpec = "a",
    kind: str = "qwen2-vl",
    *,
    seed: int = 0,
    dtype: str = "float32",
    sharded: bool = False,
    num_shards: int = 2,
    min_pixels: int = HUB_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> Path:
    """Write a tiny random checkpoint folder in the hub layout, with numpy, and return its path.

    kind: "qwen2-vl" (like Qwen/Qwen2-VL-2B-Instruct: weights, flat config.json,
    preprocessor_config.json, the hub's generation_config.json, tokenizer with the chat template
    in tokenizer_config.json) or "colqwen2" (like vidore/colqwen2-v1.0-merged: no lm_head, plus
    custom_text_proj, architectures ["ColQwen2"], no generation config).
    variant: "a" | "b" (tiny_hub.SPECS) or a TinySpec. dtype: "float32" | "float16" stored tensors.
    sharded: `num_shards` shards + model.safetensors.index.json. min/max_pixels: preprocessor_config.json.
    The config is the flat transformers-4.x layout of the hub files.
    """
    from safetensors.numpy import save_file

    if dtype not in NUMPY_DTYPES:
        raise ValueError(f"dtype must be one of {NUMPY_DTYPES} (numpy has no bfloat16), got {dtype!r}")
    spec = _spec(variant)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.astype(dtype) for k, v in hub_tensors(spec, kind, seed).items()}
    write_safetensors(out, tensors, sharded=sharded, num_shards=num_shards, save_file=save_file,
                      meta={"format": "pt"})  # what transformers writes and checks for
    if kind == "colqwen2":
        _write_json(out / "config.json", colqwen2_config(spec, "flat", dtype))
        _write_json(out / "preprocessor_config.json", colqwen2_preprocessor_config(min_pixels, max_pixels))
    else:
        _write_json(out / "config.json", flat_config(spec, dtype))
        _write_json(out / "preprocessor_config.json", preprocessor_config(min_pixels, max_pixels))
        _write_json(out / "generation_config.json", generation_config("hub"))
    build_tokenizer(out)
    return out


def make_numpy_lora(base_dir: str | Path, adapter_dir: str | Path, *, r: int = 4, seed: int = 1, **kwargs) -> Path:
    """A PEFT LoRA adapter folder over the ColQwen2 checkpoint `base_dir`, like vidore/colqwen2-v1.0
    over colqwen2-base: tiny_lora.write_lora_adapter with numpy weights (kwargs: see there)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    return write_lora_adapter(base_dir, adapter_dir, randn=lambda shape: rng.standard_normal(shape, dtype=np.float32),
                              save_file=save_file, r=r, **kwargs)
