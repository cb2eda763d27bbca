"""`ragvl models convert`: a Hugging Face Qwen2-VL checkpoint folder -> a ragvl model folder.

No torch and no transformers: tensors stream from the safetensors memory maps through numpy
into ONNX external-data files, one at a time. The output is written into a temporary sibling
folder and renamed into place at the end, so an interrupted conversion never leaves a folder
that looks like a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ... import __version__
from ...errors import RagvlError
from ...fsutil import remove_stale_partials, replace_dir
from .checkpoint import Checkpoint, TensorSource
from ..contract import (COLQWEN2_ARCHITECTURES, KIND_ANSWERER, KIND_EMBEDDER, MANIFEST, optimized_graph, read_config,
                        same_optimizer, write_manifest)
from .decoder_graph import build_decoder, build_embed, colbert_tensor_names, text_tensor_names
from .lora import LoraAdapter, MergedSource, is_adapter
from .onnx_builder import GraphBuilder
from .optimize import LEVEL, PROVIDER, external_files, record as optimized_record, save_optimized
from .quantize import FORMATS, WeightFormat
from .vision_graph import build_vision, vision_tensor_names

# Files carried over verbatim; the runtime reads tokenizer, chat template and the
# preprocessing / generation defaults from them exactly as transformers would.
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
              "chat_template.jinja", "preprocessor_config.json", "generation_config.json",
              "special_tokens_map.json", "processor_config.json")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vision_key(source: TensorSource, names: list[str], fmt: WeightFormat, fused_attention: bool) -> str:
    """A hash of the vision tower's weights (as float32) and graph options: equal keys, equal graphs."""
    # int8 vision graphs converted before the rows kernel existed used nbits: their keys differ
    kernel = "|kernel=rows" if fmt.kernel == "rows" else ""
    h = hashlib.sha256(f"{fmt.name}|fused={fused_attention}{kernel}|".encode())
    for name in names:
        h.update(name.encode())
        h.update(source.get(name).tobytes())
    return h.hexdigest()


def _find_shared_vision(key: str, candidates: Sequence[Path]) -> Path | None:
    """A converted model folder whose vision graph was built from identical weights and options."""
    for folder in candidates:
        try:
            m = json.loads((Path(folder) / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if m.get("vision", {}).get("key") == key and (Path(folder) / m["graphs"]["vision"]).exists():
            return Path(folder)
    return None


def _shared_optimized(shared: Path, opt: str) -> list[str] | None:
    """The files of `shared`'s optimized vision graph (the graph, then its data files) when this
    onnxruntime, at this level, on this CPU, wrote it (reused, not redone); else None."""
    m = json.loads((shared / MANIFEST).read_text())
    if not same_optimizer(m.get("optimized"), PROVIDER, LEVEL) or not (shared / opt).exists():
        return None
    data = external_files(shared / opt)  # the plain graph's data file, and its own if it has one
    if not set(data) <= {m["graphs"]["vision"] + ".data", opt + ".data"}:
        return None
    if not all((shared / f).exists() for f in data):
        return None
    return [opt, *data]


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link shares the bytes on disk and keeps both folders self-contained."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def convert(src: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False,
            base: str | Path | None = None, share_vision: Sequence[str | Path] = (),
            fused_attention: bool = True, optimize: bool = True, int8_kernel: str = "rows",
            log: Callable[[str], None] = _log) -> Path:
    """Convert the checkpoint folder `src` into the ragvl model folder `out`; returns `out`.

    - A Qwen2-VL checkpoint becomes an answerer (vision, embed, decoder with KV cache); a ColQwen2
      checkpoint becomes an embedder (vision, embed, encoder with the 128-d projection).
    - A PEFT LoRA adapter folder is merged into `base` while converting.
    - When a model folder in `share_vision` holds a vision graph built from identical weights
      and options, it is hard-linked instead of written again; one onnxruntime session then
      serves both models in a process.
    - `fused_attention` uses onnxruntime's MultiHeadAttention kernel in the vision tower (about
      1.4x faster there on a CPU than MatMul + Softmax, which materialise the N x N scores) and
      its GroupQueryAttention in the answerer's prefill (1.5-2.3x at 934-2,537 tokens); one
      decoded token keeps MatMul + Softmax, 3x faster there (bench/experiments/attention.py).
    - `optimize` saves onnxruntime's optimized copy of every graph (optimize.py): faster loads;
      it reads the weights it did not change from the plain graph's data file (one copy on disk).
    - `int8_kernel` ("rows" or "nbits"): the int8 kernel of the graphs that only multiply many
      rows at once (vision tower, ColQwen2's encoder; quantize.py). With "rows", the answerer's
      decoder, which decodes one row at a time and prefills many, stores the same numbers in
      MatMulNBits' layout, from which CPUs with an int8 dot product derive the rows kernel at
      load; with "nbits" it keeps MatMulNBits' own blocks.
    """
    src, out = Path(src), Path(out)
    if dtype not in FORMATS:
        raise RagvlError(f"--dtype {dtype}: expected one of {', '.join(FORMATS)}")
    if int8_kernel not in ("rows", "nbits"):
        raise RagvlError(f"--int8-kernel {int8_kernel}: expected rows or nbits")
    fmt = FORMATS[dtype]
    if not src.is_dir():
        raise RagvlError(f"{src}: no such checkpoint folder")
    adapter = None
    if is_adapter(src):
        if base is None:
            raise RagvlError(f"{src}: is a LoRA adapter; pass --base DIR with its base checkpoint "
                             f"({json.loads((src / 'adapter_config.json').read_text()).get('base_model_name_or_path', '?')})")
        base = Path(base)
        if not base.is_dir():
            raise RagvlError(f"{base}: no such base checkpoint folder")
    elif base is not None:
        raise RagvlError(f"{src}: --base is only for LoRA adapter folders (no adapter_config.json here)")
    weights_dir = Path(base) if base is not None else src  # where the (base) weights are
    cfg = read_config(weights_dir)
    embedder = cfg.architecture in COLQWEN2_ARCHITECTURES
    side_dirs = [weights_dir, src] if weights_dir != src else [src]
    if not any((d / "tokenizer.json").exists() for d in side_dirs):
        raise RagvlError(f"{src / 'tokenizer.json'}: missing (the checkpoint's fast tokenizer is required)")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise RagvlError(f"{out}: already exists and is not empty (use --force to replace it)")
        if not (out / MANIFEST).exists():
            raise RagvlError(f"{out}: exists and is not a ragvl model; refusing to replace it")

    t0 = time.perf_counter()
    text_graph = "encoder" if embedder else "decoder"
    ckpt = Checkpoint(weights_dir)
    if weights_dir != src:
        adapter = LoraAdapter(src)
        source: TensorSource = MergedSource(ckpt, adapter)
        log(f"merging LoRA adapter {src} into {weights_dir}")
    else:
        source = TensorSource(ckpt)
    v_names = vision_tensor_names(cfg.vision)
    if embedder:
        expected = v_names + text_tensor_names(cfg.text, tied=True, lm_head=False) + colbert_tensor_names()
        if "lm_head.weight" in source:  # an answerer head left in a ColQwen2 export is unused
            expected.append("lm_head.weight")
            source.used.add("lm_head.weight")
    else:
        # transformers 5.3 ties only when no lm_head.weight is stored: a stored head is loaded and
        # used even where config.json says tie_word_embeddings (flat or nested layout alike).
        # A stored copy equal to the embedding stays tied (same numbers, one matrix on disk).
        tied = cfg.tie_word_embeddings and ("lm_head.weight" not in source or np.array_equal(
            source.get("lm_head.weight"), source.get("model.embed_tokens.weight")))
        expected_extra = ["lm_head.weight"] if tied and "lm_head.weight" in source else []
        if tied != cfg.tie_word_embeddings:
            log("config.json says tie_word_embeddings but the checkpoint stores lm_head.weight: "
                "using the stored head, as transformers does")
            cfg = replace(cfg, tie_word_embeddings=tied)
        expected = v_names + text_tensor_names(cfg.text, tied) + expected_extra
    source.check(expected)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)  # left by killed conversions
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # The vision tower and ColQwen2's encoder only ever see many rows at once (patches, page
        # tokens); the answerer's decoder also decodes one row at a time. Each gets its kernel.
        many_rows = fmt.for_many_rows() if int8_kernel == "rows" else fmt
        any_rows = fmt.for_any_rows() if int8_kernel == "rows" else fmt
        key = vision_key(source, v_names, many_rows, fused_attention)
        shared = _find_shared_vision(key, [Path(c) for c in share_vision])
        steps = [
            ("embed", lambda g: build_embed(g, source, cfg.text, fmt)),
            ("encoder", lambda g: build_decoder(g, source, cfg.text, True, many_rows, head="colbert")) if embedder else
            ("decoder", lambda g: build_decoder(g, source, cfg.text, cfg.tie_word_embeddings, any_rows,
                                                fused_attention=fused_attention)),
        ]
        if shared is None:
            steps.insert(0, ("vision", lambda g: build_vision(g, source, cfg.vision, many_rows, fused_attention)))
        else:
            log(f"sharing the vision graph of {shared} (identical weights)")
            for f in ("vision.onnx", "vision.onnx.data"):
                _link_or_copy(shared / f, tmp / f)
        for name, build in steps:
            log(f"converting {name} graph ({dtype})")
            g = GraphBuilder(name, tmp / f"{name}.onnx")
            build(g)
            g.save()
        source.check_all_used()
        graphs = {"vision": "vision.onnx", "embed": "embed.onnx", text_graph: f"{text_graph}.onnx"}
        optimized = None
        if optimize:
            optimized = optimized_record()
            for name, file in graphs.items():
                opt = optimized_graph(file)
                reuse = _shared_optimized(shared, opt) if name == "vision" and shared is not None else None
                if reuse:
                    for f in reuse:
                        if not (tmp / f).exists():  # vision.onnx.data is linked already
                            _link_or_copy(shared / f, tmp / f)
                else:
                    log(f"optimizing {name} graph (onnxruntime)")
                    save_optimized(tmp / file)
                optimized["graphs"][name] = opt
        for d in side_dirs:
            for f in SIDE_FILES:
                if (d / f).exists():
                    shutil.copy2(d / f, tmp / f)
        write_manifest(tmp, {
            "kind": KIND_EMBEDDER if embedder else KIND_ANSWERER,
            "architecture": cfg.architecture,
            "dtype": dtype,
            "weight_format": {"vision": many_rows.describe(), text_graph: (many_rows if embedder else any_rows).describe(),
                              "embed": fmt.describe()} if fmt.quantized else None,
            "fused_attention": fused_attention,
            "config": cfg.to_dict(),
            "graphs": graphs,
            "optimized": optimized,
            "vision": {"key": key, "shared_with": str(shared.resolve()) if shared else None},
            "source": {"path": str(src.resolve()), "base": str(Path(base).resolve()) if base else None,
                       "checkpoint_dtype": cfg.torch_dtype},
            "ragvl_version": __version__,
        })
        replace_dir(tmp, out)  # atomic: the old model stays usable until this instant
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        ckpt.close()
        if adapter is not None:
            adapter.close()
    log(f"converted {src} -> {out} in {time.perf_counter() - t0:.1f}s")
    return out
