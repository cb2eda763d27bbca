"""Tiny random-weight ColQwen2 checkpoints in the hub layout, plus the colpali-engine reference harness.

Test and benchmark helper only: it imports torch, transformers, peft and colpali-engine (the
reference stack), which the runtime package `ragvl` never does. It builds on testkit/tiny_checkpoints.py
(same specs, tokenizer, config writers and Qwen2-VL weight init); the ColQwen2 config writers
(testkit/tiny_hub.py) and the LoRA adapter writer (testkit/tiny_lora.py) are shared with the torch-free
builder testkit/tiny_numpy.py.

What the builders write (everything the hub's ColQwen2 repos hold, tiny):

``make_colqwen2_checkpoint`` -- a MERGED ColQwen2, like vidore/colqwen2-base or vidore/colqwen2-v1.0-merged:

- ``model.safetensors`` (or shards + ``model.safetensors.index.json``) with the Qwen2-VL hub keys
  ``visual.*``, ``model.embed_tokens.weight``, ``model.layers.N.*``, ``model.norm.weight`` (no
  ``lm_head``: ColQwen2 is a ``Qwen2VLModel``) plus ``custom_text_proj.weight`` (128, hidden) and
  ``custom_text_proj.bias`` (128,). With ``prefix="base_model.model."`` the projection is stored as
  ``base_model.model.custom_text_proj.*``: that is the only prefixed form colpali-engine 0.3.18
  loads (see ``make_colqwen2_checkpoint``);
- ``config.json``: model_type "qwen2_vl", architectures ["ColQwen2"], flat (hub, transformers 4.x)
  or nested (transformers 5.3) layout, otherwise the same fields as the Qwen2-VL config;
- ``preprocessor_config.json`` (hub-like, processor_class "ColQwen2Processor", small max_pixels);
- ``tokenizer.json`` / ``tokenizer_config.json`` (the tiny offline BPE);
- no ``generation_config.json``: ColQwen2 is an embedding model and never generates.

``make_colqwen2_lora`` -- a PEFT LoRA adapter folder like vidore/colqwen2-v1.0 (over colqwen2-base):
``adapter_config.json`` + ``adapter_model.safetensors`` (+ the processor files, as the hub repo has).

Typical use::

    base = make_colqwen2_checkpoint(tmp_path / "base")
    model = load_colqwen2(base)
    processor = make_colqwen2_processor(base)
    docs = colpali_embed_images(model, processor, [page1, page2])     # list of (n_i, 128) float32
    queries = colpali_embed_queries(model, processor, ["revenue 2023?"])
    scores = colpali_scores(processor, queries, docs)                  # (n_queries, n_docs)

    adapter = make_colqwen2_lora(base, tmp_path / "adapter")
    merged = merged_reference(base, adapter)                           # ColQwen2 with LoRA merged
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import tiny_checkpoints as tc
from tiny_hub import EMBED_DIM, colqwen2_config, colqwen2_preprocessor_config  # noqa: F401 (re-exported)
from tiny_lora import (  # noqa: F401 (re-exported: tests and benchmarks use them from here)
    COLQWEN2_LORA_TARGET_MODULES,
    CUSTOM_TEXT_PROJ_PREFIX,
    PROCESSOR_FILES,
    adapter_key,
    hub_to_model_name,
    lora_targets,
    model_to_hub_name,
    write_lora_adapter,
)

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------


# The query prefix the published checkpoints were trained with. colpali-engine 0.3.18's
# BaseVisualRetrieverProcessor.query_prefix defaults to "" (reference-facts section 4).
QUERY_PREFIX = "Query: "
QUERY_AUGMENTATION = "<|endoftext|>" * 10  # ColQwen2Processor.query_augmentation_token * 10
DOCUMENT_PROMPT = (  # ColQwen2Processor.visual_prompt_prefix, before <|image_pad|> expansion
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
)



# ---------------------------------------------------------------------------------------------
# Merged checkpoint
# ---------------------------------------------------------------------------------------------


def colqwen2_hub_tensors(variant: str | tc.TinySpec = "a", seed: int = 0) -> dict[str, Any]:
    """The merged ColQwen2 weights (fp32 torch tensors) under unprefixed hub names.

    Qwen2-VL part: tiny_checkpoints.build_hf_model(seed) (normal(0, 0.2) matrices, re-drawn
    non-trivial biases and norm weights), lm_head dropped. custom_text_proj: weight
    normal(0, initializer_range), bias 0.1 * normal, from a generator seeded with seed + 2.
    """
    import torch

    spec = tc._spec(variant)
    model = tc.build_hf_model(spec, seed=seed)
    tensors = tc.hub_state_dict(model)
    tensors.pop("lm_head.weight", None)  # ColQwen2 has no LM head (untied variant "b" has one)
    gen = torch.Generator().manual_seed(seed + 2)
    std = spec.initializer_range
    tensors["custom_text_proj.weight"] = std * torch.randn(EMBED_DIM, spec.hidden_size, generator=gen)
    tensors["custom_text_proj.bias"] = 0.1 * torch.randn(EMBED_DIM, generator=gen)
    return tensors


def make_colqwen2_checkpoint(
    out_dir: str | Path,
    variant: str | tc.TinySpec = "a",
    layout: str = "nested",
    sharded: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    prefix: str = "",
    *,
    prefix_scope: str = "custom_text_proj",
    num_shards: int = 2,
    min_pixels: int = tc.HUB_MIN_PIXELS,
    max_pixels: int = tc.TINY_MAX_PIXELS,
) -> Path:
    """Write a tiny random MERGED ColQwen2 checkpoint folder in the hub layout and return its path.

    variant: "a" | "b" (tiny_checkpoints.SPECS) or a TinySpec. layout: "nested" | "flat" config.json.
    sharded: >= 2 shards + index json. dtype: stored tensor dtype ("float32" | "bfloat16" | "float16").
    seed: weight seed (same seed, same weights whatever the layout/dtype/prefix).

    prefix: "" or "base_model.model.". colpali-engine 0.3.18 loads with the key mapping
    {"^model": "language_model"} (Qwen2VLModel's) followed by ColQwen2's own
    {"^base_model\\.model\\.custom_text_proj": "custom_text_proj", "^model\\.layers": ...,
    "^model\\.embed_tokens": ..., "^model\\.norm": ...}; nothing strips "base_model.model." from
    any other key. So:

    - prefix_scope="custom_text_proj" (default): only custom_text_proj.* gets the prefix, the form
      colpali-engine's mapping exists for; it loads identically.
    - prefix_scope="all": EVERY key gets the prefix. colpali-engine 0.3.18 does NOT load this: its
      load report lists every tensor as UNEXPECTED/MISSING and the model keeps random init (no
      error). Only for testing a converter's prefix stripping; take the reference embeddings
      from the unprefixed twin (same seed).

    min_pixels / max_pixels: preprocessor_config.json.
    """
    import torch

    if layout not in ("nested", "flat"):
        raise ValueError(f"unknown layout {layout!r}")
    if dtype not in tc._DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    if prefix not in ("", CUSTOM_TEXT_PROJ_PREFIX):
        raise ValueError(f"prefix must be '' or {CUSTOM_TEXT_PROJ_PREFIX!r}, got {prefix!r}")
    if prefix_scope not in ("custom_text_proj", "all"):
        raise ValueError(f"unknown prefix_scope {prefix_scope!r}")
    spec = tc._spec(variant)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tensors = {}
    for k, v in colqwen2_hub_tensors(spec, seed=seed).items():
        if prefix and (prefix_scope == "all" or k.startswith("custom_text_proj.")):
            k = prefix + k
        tensors[k] = v.to(getattr(torch, dtype)).contiguous()
    tc._save_safetensors(out, tensors, sharded=sharded, num_shards=num_shards)

    tc._write_json(out / "config.json", colqwen2_config(spec, layout, dtype))
    tc._write_json(out / "preprocessor_config.json", colqwen2_preprocessor_config(min_pixels, max_pixels))
    tc.build_tokenizer(out)
    return out


def expected_colqwen2_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The stored tensors of a (loadable) ColQwen2 checkpoint under ColQwen2 parameter names, as fp32.

    What ColQwen2.from_pretrained(ckpt_dir, dtype=float32).state_dict() must equal exactly.
    """
    return {hub_to_model_name(k): v.float() for k, v in tc.read_hub_tensors(ckpt_dir).items()}


# ---------------------------------------------------------------------------------------------
# LoRA adapter
# ---------------------------------------------------------------------------------------------


def make_colqwen2_lora(base_dir: str | Path, adapter_dir: str | Path, r: int = 4, seed: int = 1,
                       target_modules: str | list[str] = COLQWEN2_LORA_TARGET_MODULES, **kwargs) -> Path:
    """tiny_hub.write_lora_adapter with torch weights from a generator seeded with `seed`
    (kwargs: lora_alpha, lora_dropout, key_layout, base_model_name_or_path, a_std, b_std)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    return write_lora_adapter(base_dir, adapter_dir, randn=lambda shape: torch.randn(shape, generator=gen),
                              save_file=save_file, r=r, target_modules=target_modules, **kwargs)


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(adapter_config dict, {key: fp32 torch tensor}) of an adapter folder."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg = json.loads((d / "adapter_config.json").read_text())
    return cfg, {k: v.float() for k, v in load_file(str(d / "adapter_model.safetensors")).items()}


def manual_merge(base_dir: str | Path, adapter_dir: str | Path) -> dict[str, Any]:
    """W + (lora_alpha / r) * B @ A for every adapted weight, under ColQwen2 parameter names (fp32).

    Only the adapted weights are returned; everything else is the base checkpoint's.
    """
    cfg, ad = read_adapter(adapter_dir)
    base = expected_colqwen2_state(base_dir)
    scale = cfg["lora_alpha"] / cfg["r"]
    out = {}
    for key, a in ad.items():
        if not key.endswith(".lora_A.weight"):
            continue
        b = ad[key.replace(".lora_A.weight", ".lora_B.weight")]
        hub_module = key[len("base_model.model.") : -len(".lora_A.weight")]
        name = hub_to_model_name(hub_module + ".weight")
        out[name] = base[name] + scale * (b @ a)
    return out


def write_merged_checkpoint(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + manual_merge as a merged checkpoint folder (like vidore/colqwen2-v1.0-merged).

    Unprefixed hub keys, fp32, single file, the base's config and processor files.
    """
    import torch

    base, out = Path(base_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = expected_colqwen2_state(base)
    state.update(manual_merge(base, adapter_dir))
    tensors = {model_to_hub_name(k): v.to(torch.float32).contiguous() for k, v in state.items()}
    tc._save_safetensors(out, tensors, sharded=False, num_shards=1)
    cfg = json.loads((base / "config.json").read_text())
    cfg["dtype" if "dtype" in cfg else "torch_dtype"] = "float32"
    tc._write_json(out / "config.json", cfg)
    for f in PROCESSOR_FILES:
        if (base / f).exists():
            shutil.copyfile(base / f, out / f)
    return out


def merged_reference(base_dir: str | Path, adapter_dir: str | Path):
    """The reference for a merge done by ragvl: colpali-engine's ColQwen2 loaded from `base_dir`,
    the adapter applied with peft (PeftModel.from_pretrained) and merge_and_unload(); fp32, eval.

    Guards against peft silently skipping tensors (a key-name mismatch would leave lora_B at zero):
    every tensor of the adapter file must have landed in the PeftModel, and every LoRA layer peft
    created must come from the file.
    """
    import torch
    from peft import PeftModel

    model = load_colqwen2(base_dir)
    _, ad = read_adapter(adapter_dir)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    loaded = {k: v for k, v in peft_model.state_dict().items() if ".lora_" in k}
    want = {}
    for key, t in ad.items():
        stem, which = key[: -len(".lora_A.weight")], key[-len("lora_A.weight") : -len(".weight")]
        module = hub_to_model_name(stem[len("base_model.model.") :] + ".weight")[: -len(".weight")]
        want[f"base_model.model.{module}.{which}.default.weight"] = t
    if sorted(loaded) != sorted(want):
        raise AssertionError(
            f"peft wrapped other layers than the adapter file holds: "
            f"only in model {sorted(set(loaded) - set(want))[:4]}, only in file {sorted(set(want) - set(loaded))[:4]}"
        )
    for k, t in want.items():
        if not torch.equal(loaded[k].float(), t):
            raise AssertionError(f"peft did not load adapter tensor {k}")
    merged = peft_model.merge_and_unload()
    merged.rope_deltas = None
    return merged.eval()


# ---------------------------------------------------------------------------------------------
# colpali-engine reference harness
# ---------------------------------------------------------------------------------------------


def load_colqwen2(ckpt_dir: str | Path):
    """ColQwen2.from_pretrained in fp32, eager attention, eval mode (colpali-engine 0.3.18).

    Raises if the load report has missing/unexpected/mismatched keys: transformers only logs them
    and silently keeps random init (e.g. for a fully "base_model.model."-prefixed checkpoint).
    """
    import torch
    from colpali_engine.models import ColQwen2

    model, info = ColQwen2.from_pretrained(
        str(ckpt_dir), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: sorted(v)[:6] for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise AssertionError(
            f"ColQwen2.from_pretrained({ckpt_dir}) did not load cleanly: {bad} {info.get('error_msgs')}"
        )
    return model.eval()


def make_colqwen2_processor(ckpt_dir: str | Path, max_num_visual_tokens: int | None = None, **image_kwargs):
    """A ColQwen2Processor for `ckpt_dir` that works without torchvision (transformers 5.3).

    Same workaround as tiny_checkpoints.make_hf_processor: the slow numpy/PIL Qwen2VLImageProcessor
    from preprocessor_config.json (`image_kwargs` override it), a plain BaseVideoProcessor with the
    processor's class check bypassed for it. query_prefix is set to "Query: " on the instance (the
    published checkpoints' training format; 0.3.18's class default is ""). Padding side is left
    (ColQwen2Processor.__init__ sets it). max_num_visual_tokens: as
    ColQwen2Processor.from_pretrained(max_num_visual_tokens=n) does, max_pixels = n * 28 * 28
    (the published checkpoints: 768).
    """
    from colpali_engine.models import ColQwen2Processor
    from transformers import AutoTokenizer, Qwen2VLImageProcessor
    from transformers.video_processing_utils import BaseVideoProcessor

    d = Path(ckpt_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    image_processor = Qwen2VLImageProcessor.from_pretrained(str(d), **image_kwargs)
    processor = tc.without_torchvision(ColQwen2Processor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=BaseVideoProcessor()
    )
    if max_num_visual_tokens is not None:
        processor.image_processor.max_pixels = max_num_visual_tokens * 28 * 28
        processor.image_processor.size["longest_edge"] = processor.image_processor.max_pixels
    processor.query_prefix = QUERY_PREFIX
    assert processor.tokenizer.padding_side == "left"
    return processor


def _run(model, batch) -> list[np.ndarray]:
    """One forward pass from a fresh M-RoPE state; the non-padding rows of each item as float32."""
    import torch

    # transformers 5.3's Qwen2VLModel caches `rope_deltas` across forward calls (it is meant for
    # generate's decode steps). Reset it so that every call behaves like a freshly loaded model;
    # see colpali_embed_queries for why this matters.
    model.rope_deltas = None
    with torch.no_grad():
        out = model(**batch)
    model.rope_deltas = None
    mask = batch["attention_mask"].bool()
    return [out[i][mask[i]].float().numpy().astype(np.float32) for i in range(out.shape[0])]


def colpali_embed_images(model, processor, images, batch_size: int = 2) -> list[np.ndarray]:
    """Document (page image) embeddings exactly as colpali-engine's docs compute them.

    For each batch: ``processor.process_images(images)`` then ``model(**batch)`` under no_grad.
    Returns, per image, the rows where attention_mask == 1 (prompt text tokens AND image tokens,
    since mask_non_image_embeddings=False), float32 (n_i, 128), L2-normalised.

    The batch carries ``mm_token_type_ids`` (Qwen2VLProcessor in 5.3 returns it by default and
    ColQwen2Processor.process_images keeps it), so Qwen2VLModel computes the 3-D M-RoPE positions
    with get_rope_index (per item, left padding excluded through attention_mask). Without it the
    model silently falls back to 1-D positions and the embeddings change far beyond float noise;
    this harness refuses such a batch.
    """
    embs: list[np.ndarray] = []
    for i in range(0, len(images), batch_size):
        batch = processor.process_images(list(images[i : i + batch_size]))
        if "mm_token_type_ids" not in batch:
            raise AssertionError("processor did not return mm_token_type_ids: the model would use 1-D positions")
        embs.extend(_run(model, batch))
    return embs


def colpali_embed_queries(model, processor, queries, batch_size: int = 2) -> list[np.ndarray]:
    """Query embeddings exactly as colpali-engine's docs compute them.

    For each batch: ``processor.process_queries(queries)`` (text = query_prefix + q +
    "<|endoftext|>" * 10, left-padded) then ``model(**batch)``. Returns per query the rows where
    attention_mask == 1, float32 (n_i, 128), L2-normalised.

    The reference behaviour is that of a freshly loaded model: ``model.rope_deltas`` is reset
    before every call. Why: Qwen2VLModel.compute_3d_position_ids (transformers 5.3) only builds
    M-RoPE positions when the batch has images; for a text-only batch it reuses the
    ``self.rope_deltas`` left behind by the last image batch, if any:
    ``position_ids = cumsum(attention_mask) - 1 + rope_deltas.repeat_interleave(B_q // B_doc)``.

    - Same or a multiple of the previous document batch size: the query tokens are shifted by a
      constant (the document's rope delta, negative); RoPE attention only sees relative
      positions, so the embeddings move by float noise only (~3e-7 on the tiny model).
    - Otherwise it crashes: B_q < B_doc gives an empty delta ("mat1 and mat2 shapes cannot be
      multiplied (Sx0 ...)"), a non-multiple B_q > B_doc a broadcast error ("size of tensor a (3)
      must match the size of tensor b (2)").
    - On a fresh model (rope_deltas None) position_ids falls back to cache_position, i.e.
      0..S-1 for every row *including* left padding, so a padded query's first real token sits
      at position n_pad instead of 0 -- again a constant shift, float noise only. Text tokens use
      the same position on all three M-RoPE rows, so queries are plain 1-D RoPE.

    So a runtime that gives each query positions 0..n-1 matches this reference up to float noise.
    """
    embs: list[np.ndarray] = []
    for i in range(0, len(queries), batch_size):
        batch = processor.process_queries(list(queries[i : i + batch_size]))
        embs.extend(_run(model, batch))
    return embs


def colpali_scores(processor, qs, ps) -> np.ndarray:
    """MaxSim scores (n_queries, n_docs) float32 via processor.score_multi_vector on CPU, each
    document scored alone (in a batch, colpali's zero padding would make a score depend on its
    neighbours; ragvl's scores are pure MaxSim)."""
    import torch

    q = [torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in qs]
    cols = [processor.score_multi_vector(q, [torch.from_numpy(np.asarray(x, dtype=np.float32))], device="cpu")
            for x in ps]                                               # each (n_queries, 1)
    return torch.cat(cols, dim=1).numpy().astype(np.float32) if cols else np.zeros((len(qs), 0), np.float32)


def document_prompt_ids(processor, n_image_tokens: int) -> list[int]:
    """Token ids of DOCUMENT_PROMPT with <|image_pad|> expanded n_image_tokens times."""
    text = DOCUMENT_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * n_image_tokens)
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def query_prompt_ids(processor, query: str) -> list[int]:
    """Token ids of "Query: " + query + "<|endoftext|>" * 10."""
    return processor.tokenizer(QUERY_PREFIX + query + QUERY_AUGMENTATION, add_special_tokens=False)["input_ids"]
