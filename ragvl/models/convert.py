"""`ragvl models convert`: a Hugging Face Qwen2-VL checkpoint folder -> a ragvl model folder.

No torch and no transformers: tensors stream from the safetensors memory maps through numpy
into ONNX external-data files, one at a time. The output is written into a temporary sibling
folder and renamed into place at the end, so an interrupted conversion never leaves a folder
that looks like a model.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import RagvlError
from .checkpoint import Checkpoint, TensorSource
from .config import QWEN2VL_ARCHITECTURES, read_config
from .decoder_graph import build_decoder, build_embed, text_tensor_names
from .manifest import KIND_GENERATOR, MANIFEST, write_manifest
from .onnx_builder import GraphBuilder
from .quantize import FORMATS
from .vision_graph import build_vision, vision_tensor_names

# Files carried over verbatim; the runtime reads tokenizer, chat template and the
# preprocessing / generation defaults from them exactly as transformers would.
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
              "chat_template.jinja", "preprocessor_config.json", "generation_config.json",
              "special_tokens_map.json")
PEFT_PREFIXES = ("base_model.model.",)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def convert(src: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False,
            fused_attention: bool = True, log: Callable[[str], None] = _log) -> Path:
    """Convert the checkpoint folder `src` into the ragvl model folder `out`; returns `out`.

    `fused_attention` uses onnxruntime's MultiHeadAttention kernel in the vision tower (about
    1.4x faster there on a CPU than MatMul + Softmax, which materialise the N x N scores).
    """
    src, out = Path(src), Path(out)
    if dtype not in FORMATS:
        raise RagvlError(f"--dtype {dtype}: expected one of {', '.join(FORMATS)}")
    fmt = FORMATS[dtype]
    if not src.is_dir():
        raise RagvlError(f"{src}: no such checkpoint folder")
    cfg = read_config(src, allowed=QWEN2VL_ARCHITECTURES)
    if not (src / "tokenizer.json").exists():
        raise RagvlError(f"{src / 'tokenizer.json'}: missing (the checkpoint's fast tokenizer is required)")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise RagvlError(f"{out}: already exists and is not empty (use --force to replace it)")
        if not (out / MANIFEST).exists():
            raise RagvlError(f"{out}: exists and is not a ragvl model; refusing to replace it")

    t0 = time.perf_counter()
    ckpt = Checkpoint(src)
    source = TensorSource(ckpt, strip_prefixes=PEFT_PREFIXES)
    expected = vision_tensor_names(cfg.vision) + text_tensor_names(cfg.text, cfg.tie_word_embeddings)
    if cfg.tie_word_embeddings and "lm_head.weight" in source:
        expected.append("lm_head.weight")  # some exports store the tied copy too; it is ignored
        source.used.add("lm_head.weight")
    source.check(expected)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, build in (
            ("vision", lambda g: build_vision(g, source, cfg.vision, fmt, fused_attention)),
            ("embed", lambda g: build_embed(g, source, cfg.text, fmt)),
            ("decoder", lambda g: build_decoder(g, source, cfg.text, cfg.tie_word_embeddings, fmt)),
        ):
            log(f"converting {name} graph ({dtype})")
            g = GraphBuilder(name, tmp / f"{name}.onnx")
            build(g)
            g.save()
        source.check_all_used()
        for f in SIDE_FILES:
            if (src / f).exists():
                shutil.copy2(src / f, tmp / f)
        write_manifest(tmp, {
            "kind": KIND_GENERATOR,
            "architecture": cfg.architecture,
            "dtype": dtype,
            "weight_format": {"bits": fmt.bits, "block_size": fmt.block_size} if fmt.quantized else None,
            "fused_attention": fused_attention,
            "config": cfg.to_dict(),
            "graphs": {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"},
            "source": {"path": str(src.resolve()), "checkpoint_dtype": cfg.torch_dtype},
            "ragvl_version": __version__,
        })
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        ckpt.close()
    log(f"converted {src} -> {out} in {time.perf_counter() - t0:.1f}s")
    return out
