#!/usr/bin/env python
"""Qwen2-VL on ragvl (onnxruntime; fp32 / int8 / int4) against transformers (torch fp32), same weights.

One run does everything, side by side:

1. builds (or reuses, from --work) a random-weight checkpoint in the hub layout: bf16 safetensors,
   shards, config.json, tokenizer and preprocessor/generation configs. Default shape: the real
   Qwen2-VL-2B (2.21 B parameters, vocab 151936). Built on the meta device and filled tensor by
   tensor, one shard at a time, so it never holds the model in fp32;
2. converts it with `ragvl.models.converter.convert` once per --dtypes entry, each in a fresh interpreter:
   converter wall time, converter peak RSS and the on-disk size of vision / embed / decoder;
3. runs every engine (transformers fp32, ragvl fp32 / int8 / int4) in its own child process on
   one synthetic 1024x683 page + a short question: load time, preprocessing, vision encoder,
   prefill, decode tok/s over --new-tokens greedy tokens (EOS ignored), peak RSS, cold (1st run)
   and warm (later runs) separately; and whether ragvl fp32's greedy tokens equal transformers';
4. measures this machine: onnxruntime fp32 MatMul GFLOP/s and memory read GB/s;
5. derives the targets: vision GFLOP/s as a fraction of the MatMul peak (>= 80 %), decode tok/s
   as a fraction of the bandwidth floor (fp32 >= 85 %), int4 decode >= 30 tok/s;
6. prints Markdown tables and writes every number to <work>/results_qwen2vl.json.

Every child reports its own peak RSS as /proc/self/status VmHWM (the high-water mark of that
process's address space, which starts fresh at exec), so the numbers are per engine and per
conversion. The parent imports neither torch nor onnxruntime.

    python bench/bench_qwen2vl.py                      # the 2B shape (long: tens of minutes, ~25 GB disk)
    python bench/bench_qwen2vl.py --config tiny        # seconds; checks the harness end to end
    python bench/bench_qwen2vl.py --skip-hf --dtypes int4 --new-tokens 64

See bench/README.md for what each number means and how FLOPs and bytes are counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "testkit"))  # tiny_checkpoints: the shared checkpoint writer + HF harness
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # machine.py, results.py

from results import T_START, fmt, log, usable_cores  # noqa: E402,F401 (fmt, log: used by the scripts importing this one)
CKPT_FORMAT = 1  # bump when the checkpoint builder changes, so cached checkpoints are rebuilt
PAGE_SIZE = (1024, 683)  # (width, height): 3552 patches / 888 image tokens at max_pixels 28*28*1280
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
QUESTION = "What is the total amount on this page?"
SHARD_BYTES = 1 << 30  # checkpoint shard size: bounds the builder's memory to about one shard



# =============================================================================================
# Model shapes
# =============================================================================================

# The fields of testkit/tiny_checkpoints.TinySpec, plus an explicit vocabulary size: TinySpec derives
# vocab_size from the tiny tokenizer (a few hundred tokens), while the 2B's embedding / lm_head
# have 151936 rows, which matters for both memory and decode speed. Token ids stay below the tiny
# tokenizer's size; the extra rows are simply never looked up by the embedding (but are read by
# lm_head on every step, as in the real model).
QWEN2VL_2B = dict(
    name="qwen2vl-2b",
    hidden_size=1536,
    intermediate_size=8960,
    num_layers=28,
    num_heads=12,
    num_kv_heads=2,
    mrope_section=(16, 24, 24),
    vision_depth=32,
    vision_embed_dim=1280,
    vision_num_heads=16,
    vision_mlp_ratio=4,
    tie_word_embeddings=True,
    vocab=151936,
)


def bench_spec_class():
    """TinySpec with a settable vocabulary (0 = the tiny tokenizer's size rounded up, as TinySpec)."""
    from tiny_checkpoints import TinySpec

    @dataclasses.dataclass(frozen=True)
    class BenchSpec(TinySpec):
        vocab: int = 0

        @property
        def vocab_size(self) -> int:
            return self.vocab or TinySpec.vocab_size.fget(self)

    return BenchSpec


def default_init_std(config: str, given: float | None) -> float:
    """0.2 for the tiny configs (peaked logits); 0.02 at full size, where 0.2 makes the forward chaotic."""
    if given is not None:
        return given
    return 0.2 if config.startswith("tiny") else 0.02


def resolve_spec(config: str, vocab: int | None, init_std: float) -> dict[str, Any]:
    """--config ('2b', 'tiny', 'tiny-b' or a config.json path) -> a BenchSpec field dict."""
    from tiny_checkpoints import SPECS, tokenizer_size

    if config == "2b":
        d = dict(QWEN2VL_2B)
    elif config in ("tiny", "tiny-a", "tiny-b"):
        s = SPECS["b" if config == "tiny-b" else "a"]
        d = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
        d["name"] = config
        d["vocab"] = 0
    else:
        from ragvl.models.contract.config import read_config

        path = Path(config)
        cfg = read_config(path.parent if path.name == "config.json" else path)
        t, v = cfg.text, cfg.vision
        d = dict(name=path.parent.name if path.name == "config.json" else path.name,
                 hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                 num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
                 num_kv_heads=t.num_key_value_heads, mrope_section=tuple(t.mrope_section),
                 vision_depth=v.depth, vision_embed_dim=v.embed_dim, vision_num_heads=v.num_heads,
                 vision_mlp_ratio=int(v.mlp_ratio), tie_word_embeddings=cfg.tie_word_embeddings,
                 rope_theta=t.rope_theta, rms_norm_eps=t.rms_norm_eps, vocab=t.vocab_size)
    if vocab is not None:
        d["vocab"] = vocab
    d["initializer_range"] = init_std
    d["mrope_section"] = tuple(d["mrope_section"])
    spec = bench_spec_class()(**d)
    if spec.vocab_size < tokenizer_size():
        raise SystemExit(f"vocab {spec.vocab_size} is smaller than the tiny tokenizer ({tokenizer_size()} tokens)")
    if 2 * sum(spec.mrope_section) != spec.head_dim:
        raise SystemExit(f"mrope_section {spec.mrope_section} must sum to head_dim/2 = {spec.head_dim // 2}")
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def spec_from_dict(d: dict[str, Any]):
    d = dict(d)
    d["mrope_section"] = tuple(d["mrope_section"])
    return bench_spec_class()(**d)


# =============================================================================================
# Synthetic page image
# =============================================================================================


def page_image(size: tuple[int, int] = PAGE_SIZE, seed: int = 0):
    """A white page with lines of word-like glyph noise, a header bar, a table and scanner noise."""
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 255, np.float32)
    img[int(0.04 * h): int(0.04 * h) + 14, int(0.08 * w): int(0.55 * w)] = 30  # title bar
    y = int(0.10 * h)
    margin = int(0.06 * w)
    table_top = int(0.62 * h)
    while y < h - margin:
        if table_top <= y < table_top + 120:  # a ruled table block
            for r in range(6):
                img[y + r * 20, margin: w - margin] = 60
                for c in range(4):
                    x0 = margin + 10 + c * (w - 2 * margin) // 4
                    n = int(rng.integers(20, 70))
                    glyphs = rng.random((9, n)) < 0.45
                    img[y + r * 20 + 6: y + r * 20 + 15, x0: x0 + n][glyphs] = rng.integers(0, 80)
            y += 130
            continue
        line_h = int(rng.integers(8, 12))
        x = margin
        line_end = w - margin - (int(rng.integers(0, 300)) if rng.random() < 0.2 else 0)
        while x < line_end - 10:
            n = min(int(rng.integers(12, 80)), line_end - x)
            glyphs = rng.random((line_h, n)) < 0.45
            img[y: y + line_h, x: x + n][glyphs] = rng.integers(0, 90)
            x += n + int(rng.integers(5, 11))
        y += line_h + int(rng.integers(7, 12)) + (18 if rng.random() < 0.1 else 0)
    img += rng.normal(0, 4, img.shape)
    rgb = np.clip(img, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    return Image.fromarray(rgb)


# =============================================================================================
# Child processes
# =============================================================================================


def proc_status_kb(field: str) -> int | None:
    """A /proc/self/status field in kB (VmHWM: this process's peak RSS; VmRSS: current)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    if field == "VmHWM":  # not Linux: fall back to getrusage (kB on Linux, bytes on macOS)
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r // 1024 if sys.platform == "darwin" else r
    return None


def gb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024 / 1024, 3)


def run_child(task: str, args: dict[str, Any], work: Path, script: str | Path | None = None) -> dict[str, Any]:
    """Run `task` in a fresh interpreter; returns its JSON result plus wall_s (or an error).

    `script` is the benchmark whose `--child` handles the task (default: this file); the other
    benchmarks in bench/ run their own tasks through it.
    """
    fd, out = tempfile.mkstemp(prefix=f"child-{task}-", suffix=".json", dir=work)
    os.close(fd)
    cmd = [sys.executable, str(Path(script or __file__).resolve()), "--child", task, "--child-args", json.dumps(args),
           "--child-out", out]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_EPOCH": repr(T_START), "BENCH_TASK": task}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    wall = time.perf_counter() - t0
    try:
        res = json.loads(Path(out).read_text()) if Path(out).stat().st_size else {}
    finally:
        Path(out).unlink(missing_ok=True)
    if proc.returncode != 0 or not res:
        why = f"exit {proc.returncode}" + (" (SIGKILL: out of memory?)" if proc.returncode == -9 else "")
        log(f"child {task} failed ({why})")
        return {"error": why, "process_wall_s": round(wall, 3)}
    res["process_wall_s"] = round(wall, 3)
    return res


def child_main(task: str, args: dict[str, Any], out: str, tasks: dict[str, Any] | None = None) -> None:
    """Run one task in this (child) process and write its JSON result, with this process's peak RSS.

    `tasks`: {name: function} (default: this file's tasks).
    """
    tasks = tasks or {"build": task_build, "convert": task_convert, "machine": task_machine,
                      "hf": task_hf, "ragvl": task_ragvl}
    res = tasks[task](**args)
    res["peak_rss_gb"] = gb(proc_status_kb("VmHWM"))
    Path(out).write_text(json.dumps(res))


# ---------------------------------------------------------------------------------------------
# build: the random checkpoint
# ---------------------------------------------------------------------------------------------


def _fill(name: str, shape: tuple[int, ...], std: float, gen):
    """Random bf16 tensor for hub tensor `name`, drawn like tiny_checkpoints.build_hf_model:
    matrices ~ N(0, std); biases ~ 0.1 N(0, 1); norm weights ~ 1 + 0.1 N(0, 1)."""
    import torch

    t = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name.endswith(".bias"):
        t.mul_(0.1)
    elif len(shape) == 1 and ("norm" in name or "ln_q" in name):
        t.mul_(0.1).add_(1.0)
    else:
        t.mul_(std)
    return t.to(torch.bfloat16)


def task_build(spec: dict, out: str, max_pixels: int, seed: int, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write the checkpoint shard by shard: meta-device model for names/shapes, then random fill."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from tiny_checkpoints import (HUB_MIN_PIXELS, _write_json, build_tokenizer, generation_config,
                                  nested_config, preprocessor_config, to_hub_name)

    t0 = time.perf_counter()
    s = spec_from_dict(spec)
    torch.set_num_threads(os.cpu_count() or 1)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = nested_config(s, "bfloat16")
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config))
    shapes = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and s.tie_word_embeddings:
            continue  # the hub leaves the tied head out
        shapes[to_hub_name(name)] = tuple(t.shape)
    del model
    names = sorted(shapes)
    nbytes = {k: 2 * math.prod(shapes[k]) for k in names}
    shards: list[list[str]] = [[]]
    acc = 0
    for k in names:  # sorted key order, new shard when the current one is full (as max_shard_size)
        if shards[-1] and acc + nbytes[k] > shard_bytes:
            shards.append([])
            acc = 0
        shards[-1].append(k)
        acc += nbytes[k]
    gen = torch.Generator().manual_seed(seed)
    meta = {"format": "pt"}
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: _fill(k, shapes[k], s.initializer_range, gen) for k in keys}
        save_file(tensors, str(out_dir / fname), metadata=meta)
        del tensors
        weight_map.update({k: fname for k in keys})
        log(f"  wrote {fname} ({sum(nbytes[k] for k in keys) / 1e9:.2f} GB)")
    if len(shards) > 1:
        _write_json(out_dir / "model.safetensors.index.json",
                    {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map})
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "preprocessor_config.json", preprocessor_config(HUB_MIN_PIXELS, max_pixels))
    _write_json(out_dir / "generation_config.json", generation_config("greedy"))
    build_tokenizer(out_dir)
    n_params = sum(math.prod(v) for v in shapes.values())
    return {"build_s": round(time.perf_counter() - t0, 2), "params": n_params, "shards": len(shards),
            "bytes": sum(nbytes.values())}


# ---------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------


def folder_sizes(folder: Path) -> dict[str, int]:
    """Bytes per graph (graph + its external data) in a ragvl model folder, plus the total."""
    sizes: dict[str, int] = {}
    for g in ("vision", "embed", "decoder"):
        sizes[g] = sum(f.stat().st_size for f in (folder / f"{g}.onnx", folder / f"{g}.onnx.data") if f.exists())
    sizes["decoder_data"] = (folder / "decoder.onnx.data").stat().st_size if (folder / "decoder.onnx.data").exists() else 0
    sizes["lm"] = sizes["embed"] + sizes["decoder"]
    if (folder / "encoder.onnx").exists():  # a ColQwen2 embedder: the encoder takes the decoder's place
        sizes["encoder"] = sum(f.stat().st_size for f in (folder / "encoder.onnx", folder / "encoder.onnx.data")
                               if f.exists())
        sizes["lm"] += sizes["encoder"]
    sizes["total"] = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return sizes


def task_convert(ckpt: str, out: str, dtype: str) -> dict:
    """`dtype`: a converter dtype, or "int8-nbits" (int8 with MatMulNBits in every graph)."""
    from ragvl.models.converter.convert import convert

    t0 = time.perf_counter()
    base, _, kernel = dtype.partition("-")
    convert(ckpt, out, dtype=base, force=True, int8_kernel=kernel or "rows", log=lambda m: log(f"  {m}"))
    wall = time.perf_counter() - t0  # convert() alone; the parent adds process_wall_s (interpreter + imports)
    return {"dtype": dtype, "convert_s": round(wall, 2), "sizes": folder_sizes(Path(out))}


# ---------------------------------------------------------------------------------------------
# machine: the floors (bench/machine.py)
# ---------------------------------------------------------------------------------------------


def task_machine(threads: int, shapes: list[dict], dtypes: list[str], reps: int, mem_gb: float) -> dict:
    """The floors (bench/machine.py): MatMul rates at the engines' shapes, streaming bandwidth."""
    from machine import task_floors

    return task_floors(threads, shapes, dtypes, reps, mem_gb)


# ---------------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------------


def _warm(runs: list[dict], key: str, best=min):
    vals = [r[key] for r in runs[1:] if r.get(key) is not None]
    return best(vals) if vals else None


def _summarise(runs: list[dict]) -> dict:
    """Cold = run 1; warm = best of runs 2.. (times: min, tok/s: max)."""
    out: dict[str, Any] = {"runs": runs}
    for key in ("preprocess_s", "vision_s", "prefill_s", "first_token_s", "decode_s_per_token"):
        out[key + "_cold"] = runs[0].get(key)
        out[key + "_warm"] = _warm(runs, key)
    out["decode_tok_s_cold"] = runs[0].get("decode_tok_s")
    out["decode_tok_s_warm"] = _warm(runs, "decode_tok_s", best=max)
    return out


def task_ragvl(folder: str, threads: int, new_tokens: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from ragvl.models.runtime.generation import GenerationSettings
    from ragvl.models.runtime.qwen2vl import Qwen2VL, user_message

    t0 = time.perf_counter()
    # Sessions open lazily; open them all here, as the reference loads its weights before timing.
    m = Qwen2VL(folder, threads=threads).open()
    load_s = time.perf_counter() - t0
    rss_loaded = gb(proc_status_kb("VmRSS"))
    log(f"  loaded in {load_s:.2f}s, RSS {rss_loaded} GB")
    image = page_image()
    messages = user_message(QUESTION, 1)
    settings = GenerationSettings(max_new_tokens=new_tokens, ignore_eos=True)
    recs, tokens, prompt = [], None, None
    for r in range(runs):
        t = time.perf_counter()
        prompt = m.build_prompt(messages, [image])
        pre = time.perf_counter() - t
        g = m.generate(messages, [image], settings).consume()
        tm = g.timings
        assert tm.load_s == 0, "a session opened inside a timed run"  # open() above: no stage row includes one
        rec = {"preprocess_s": pre, "vision_s": tm.vision_s, "prefill_s": tm.prefill_s,
               "first_token_s": tm.first_token_s, "decode_s": tm.decode_s, "decode_steps": tm.decode_steps,
               "decode_tok_s": tm.decode_steps / tm.decode_s if tm.decode_s else None,
               "decode_s_per_token": tm.decode_s / tm.decode_steps if tm.decode_steps else None}
        recs.append({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()})
        log(f"  run {r + 1}/{runs}: vision {tm.vision_s:.3f}s prefill {tm.prefill_s:.3f}s "
            f"decode {rec['decode_tok_s'] or 0:.2f} tok/s")
        if tokens is not None and tokens != g.token_ids:
            log("  warning: greedy tokens differ between runs")
        tokens = g.token_ids
    return {"engine": "ragvl", "load_s": round(load_s, 3), "rss_after_load_gb": rss_loaded,
            "onnxruntime": ort.__version__, "threads": threads, "prompt_tokens": int(len(prompt.ids)),
            "prompt_sha": hashlib.sha256(np.asarray(prompt.ids, np.int64).tobytes()).hexdigest()[:16],
            "grid_thw": list(prompt.grids[0]), "tokens": [int(t) for t in tokens], **_summarise(recs)}


def instrument_hf(model):
    """Instrument a transformers Qwen2-VL model without touching the math: time the vision tower
    inside generate, and timestamp every token generate hands to a streamer (the prompt first,
    then each new token). Returns (vision_time, stamps): vision_time[0] accumulates seconds,
    stamps.t is the list of timestamps; reset both before each generate call."""
    from transformers.generation.streamers import BaseStreamer

    vision_time = [0.0]
    inner = model.model.get_image_features

    def timed_image_features(*a, **k):
        t = time.perf_counter()
        r = inner(*a, **k)
        vision_time[0] += time.perf_counter() - t
        return r

    model.model.get_image_features = timed_image_features

    class Stamps(BaseStreamer):
        def __init__(self):
            self.t: list[float] = []

        def put(self, value):
            self.t.append(time.perf_counter())

        def end(self):
            pass

    stamps = Stamps()
    generate = model.generate
    model.generate = lambda *a, **k: generate(*a, streamer=stamps, **k)
    return vision_time, stamps


def task_hf(ckpt: str, threads: int, new_tokens: int, runs: int, attn: str) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import Qwen2VLForConditionalGeneration

    from ragvl.models.runtime.qwen2vl import user_message
    from tiny_checkpoints import hf_generate, make_hf_processor

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    # As tiny_checkpoints.load_hf_model, with a choice of attention kernel.
    model = Qwen2VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32,
                                                            attn_implementation=attn).eval()
    processor = make_hf_processor(ckpt)
    load_s = time.perf_counter() - t0
    rss_loaded = gb(proc_status_kb("VmRSS"))
    log(f"  loaded in {load_s:.2f}s, RSS {rss_loaded} GB (attention: {attn})")
    vision_time, stamps = instrument_hf(model)

    image = page_image()
    messages = user_message(QUESTION, 1)
    recs, ref = [], None
    for r in range(runs):
        t = time.perf_counter()
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        processor(text=[text], images=[image], return_tensors="pt")
        pre = time.perf_counter() - t
        vision_time[0] = 0.0
        stamps.t = []
        t = time.perf_counter()
        ref = hf_generate(model, processor, messages, [image], max_new_tokens=new_tokens)
        total = time.perf_counter() - t
        s = stamps.t  # s[0]: prompt handed over (before the first forward), s[i]: new token i
        steps = len(s) - 2
        decode = s[-1] - s[1] if steps > 0 else 0.0
        rec = {"preprocess_s": pre, "vision_s": vision_time[0], "prefill_s": (s[1] - s[0]) - vision_time[0],
               "first_token_s": s[1] - t, "decode_s": decode, "decode_steps": steps,
               "decode_tok_s": steps / decode if decode else None,
               "decode_s_per_token": decode / steps if steps else None, "generate_total_s": total}
        recs.append({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()})
        log(f"  run {r + 1}/{runs}: vision {rec['vision_s']:.3f}s prefill {rec['prefill_s']:.3f}s "
            f"decode {rec['decode_tok_s'] or 0:.2f} tok/s")
    ids = ref["prompt_ids"]
    return {"engine": "transformers", "attn_implementation": attn, "load_s": round(load_s, 3),
            "rss_after_load_gb": rss_loaded, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "prompt_tokens": int(len(ids)),
            "prompt_sha": hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16],
            "grid_thw": [int(x) for x in ref["image_grid_thw"][0]], "tokens": ref["new_token_ids"].tolist(),
            "min_logit_margin": round(float(ref["min_logit_margin"]), 4), **_summarise(recs)}


# =============================================================================================
# FLOPs and bytes
# =============================================================================================


def vision_flops(spec, grid_thw: list[int]) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of the vision tower's matmuls for one image of grid (t, h, w), by
    group (patch_embed, blocks_linear, blocks_attention, merger) and total: bench/machine.py's
    vision_items. Not counted: LayerNorms, rotary, softmax, activations, bias adds (O(N d))."""
    from machine import group_flops, vision_items

    return group_flops(vision_items(spec, grid_thw))


def prefill_flops(spec, seq: int) -> dict[str, float]:
    """FLOPs of one prefill over `seq` tokens (linear, attention over the full S x S as the graph
    computes it before masking, lm_head on the last position): bench/machine.py's prefill_items."""
    from machine import group_flops, prefill_items

    return group_flops(prefill_items(spec, seq))


def decoder_weight_bytes(spec, dtype: str) -> dict[str, float]:
    """Bytes of decoder weights read for one token at `dtype`, counted from shapes.

    Every Linear of every layer (q, k, v, o, gate, up, down) plus lm_head (the tied embedding, read
    in full each step) as ragvl stores them (machine.weight_bytes: fp32, or MatMulNBits with
    ragvl's block sizes); fp32 biases and norm weights; one embedding row.
    """
    from machine import weight_bytes

    H, inter, L, V = spec.hidden_size, spec.intermediate_size, spec.num_layers, spec.vocab_size
    kv = spec.num_kv_heads * spec.head_dim
    mats = [(H, H), (kv, H), (kv, H), (H, H), (inter, H), (inter, H), (H, inter)] * L + [(V, H)]
    small = 4.0 * (L * (H + 2 * kv + 2 * H) + H + H)  # q/k/v biases, 2 norms per layer, final norm, 1 embedding row
    lin = sum(weight_bytes(k, n, dtype) for n, k in mats)
    return {"linear": lin, "small": small, "total": lin + small}


def kv_read_bytes(spec, context: float) -> float:
    """K and V cache bytes (fp32) read by one decode step at `context` cached positions."""
    return 2.0 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4 * context


# =============================================================================================
# Orchestration
# =============================================================================================


def ckpt_dir_for(work: Path, spec: dict, max_pixels: int, seed: int, shard_bytes: int) -> Path:
    key = json.dumps({"spec": spec, "max_pixels": max_pixels, "seed": seed, "format": CKPT_FORMAT,
                      "shard_bytes": shard_bytes},
                     sort_keys=True, default=list)
    return work / f"ckpt-{spec['name']}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def ensure_checkpoint(work: Path, spec: dict, max_pixels: int, seed: int, shard_bytes: int) -> tuple[Path, dict]:
    d = ckpt_dir_for(work, spec, max_pixels, seed, shard_bytes)
    marker = d / "bench_checkpoint.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        log(f"checkpoint: reusing {d}")
        return d, {**info, "cached": True}
    shutil.rmtree(d, ignore_errors=True)
    log(f"checkpoint: building {d}")
    res = run_child("build", {"spec": spec, "out": str(d), "max_pixels": max_pixels, "seed": seed,
                              "shard_bytes": shard_bytes}, work)
    if "error" in res:
        raise SystemExit("building the checkpoint failed")
    marker.write_text(json.dumps(res, indent=2))
    log(f"checkpoint: {res['params'] / 1e9:.3f} B parameters in {res['shards']} shard(s), "
        f"{res['build_s']}s, peak RSS {res['peak_rss_gb']} GB")
    return d, {**res, "cached": False}


def ensure_converted(work: Path, ckpt: Path, dtype: str, reconvert: bool) -> tuple[Path, dict]:
    out = work / f"{ckpt.name}-ragvl-{dtype}"
    record = work / f"{out.name}.convert.json"
    if not reconvert and record.exists() and (out / "ragvl.json").exists():
        log(f"convert {dtype}: reusing {out} (pass --reconvert to time the converter again)")
        return out, {**json.loads(record.read_text()), "cached": True}
    shutil.rmtree(out, ignore_errors=True)
    log(f"convert {dtype}: {ckpt.name} -> {out.name}")
    res = run_child("convert", {"ckpt": str(ckpt), "out": str(out), "dtype": dtype}, work)
    if "error" not in res:
        record.write_text(json.dumps(res, indent=2))
        log(f"convert {dtype}: {res['convert_s']}s, peak RSS {res['peak_rss_gb']} GB, "
            f"LM {res['sizes']['lm'] / 1e6:.1f} MB, vision {res['sizes']['vision'] / 1e6:.1f} MB")
    return out, {**res, "cached": False}


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def derive(spec, machine: dict, engines: dict[str, dict], convs: dict[str, dict], new_tokens: int) -> dict:
    """Achieved GFLOP/s, floors (bench/machine.py), fractions, ratios to transformers and the targets."""
    from machine import item_flops, prefill_items, stage_floor, vision_items

    bw = (machine.get("bandwidth") or {}).get("floor_gbs")
    d: dict[str, Any] = {"bandwidth_floor_gbs": bw, "engines": {}}
    hf = engines.get("hf") or {}
    for name, e in engines.items():
        if "error" in e or not e:
            continue
        x: dict[str, Any] = {}
        fdtype = "fp32" if name == "hf" else name.split("-")[1]  # transformers: against the fp32 floors
        for stage, items in (("vision", vision_items(spec, e["grid_thw"])),
                             ("prefill", prefill_items(spec, e["prompt_tokens"]))):
            fl = stage_floor(items, fdtype, machine)
            x[f"{stage}_gflop"] = sum(item_flops(it) for it in items) / 1e9
            t = e.get(f"{stage}_s_warm") or e.get(f"{stage}_s_cold")
            if t:
                x[f"{stage}_gflops"] = x[f"{stage}_gflop"] / t
            if fl:
                x[f"{stage}_floor_s"] = fl["floor_s"]
                x[f"{stage}_floor_by_group_s"] = fl["by_group"]
                x[f"{stage}_frac_of_floor"] = ratio(fl["floor_s"], t)
        dtype = "hf-fp32" if name == "hf" else name.split("-")[1]
        wb = decoder_weight_bytes(spec, dtype)
        x["decode_weight_bytes_counted"] = wb["total"]
        conv = convs.get(dtype) or {}
        if conv.get("sizes", {}).get("decoder_data"):
            x["decode_weight_bytes_file"] = conv["sizes"]["decoder_data"]
        weights = x.get("decode_weight_bytes_file", wb["total"])
        context = e["prompt_tokens"] + new_tokens / 2
        x["decode_kv_bytes"] = kv_read_bytes(spec, context)
        x["decode_bytes_per_token"] = weights + x["decode_kv_bytes"]
        if bw:  # the fastest streaming read measured (machine.measure_bandwidth)
            x["decode_floor_tok_s"] = bw * 1e9 / x["decode_bytes_per_token"]
            tok_s = e.get("decode_tok_s_warm") or e.get("decode_tok_s_cold")
            x["decode_frac_of_floor"] = ratio(tok_s, x["decode_floor_tok_s"])
            if tok_s:
                x["decode_effective_gbs"] = tok_s * x["decode_bytes_per_token"] / 1e9
        if name != "hf" and hf and "error" not in hf:
            x["ratio_to_hf"] = {k: ratio(e.get(k), hf.get(k)) for k in (
                "load_s", "preprocess_s_cold", "preprocess_s_warm", "vision_s_cold", "vision_s_warm",
                "prefill_s_cold", "prefill_s_warm", "first_token_s_cold", "first_token_s_warm", "decode_s_per_token_cold",
                "decode_s_per_token_warm", "peak_rss_gb")}
            x["prompt_ids_equal_hf"] = e.get("prompt_sha") == hf.get("prompt_sha")
            x["tokens_equal_hf"] = e.get("tokens") == hf.get("tokens")
            same = 0
            for a, b in zip(e.get("tokens", []), hf.get("tokens", [])):
                if a != b:
                    break
                same += 1
            x["tokens_common_prefix"] = same
        d["engines"][name] = x
    fp32, int4 = d["engines"].get("ragvl-fp32", {}), engines.get("ragvl-int4", {})
    d["targets"] = {
        "vision_fp32_ge_80pct_floor": _target(fp32.get("vision_frac_of_floor"), 0.80),
        "decode_fp32_ge_85pct_floor": _target(fp32.get("decode_frac_of_floor"), 0.85),
        "decode_int4_ge_30_tok_s": _target(None if "error" in int4 else
                                           (int4.get("decode_tok_s_warm") or int4.get("decode_tok_s_cold")), 30.0),
        "greedy_fp32_equals_hf": fp32.get("tokens_equal_hf"),
    }
    return d


def _target(value, threshold):
    return None if value is None else {"value": value, "threshold": threshold, "met": value >= threshold}


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------



class ComparisonTable:
    """A Markdown table with one column per engine, and a ratio-to-transformers column after each
    ragvl engine when transformers ran."""

    def __init__(self, first: str, cols: list[tuple[str, str]], engines: dict):
        self.cols, self.engines = cols, engines
        self.have_hf = "hf" in engines and "error" not in engines["hf"]
        head = [first]
        for k, t in cols:
            head.append(t + (f" (failed: {engines[k]['error']})" if "error" in engines[k] else ""))
            if k != "hf" and self.have_hf:
                head.append(f"{k.split('-')[1]}/HF")
        self.lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(self, label: str, get, spec_=".3f", suffix="", ratio_get=None) -> None:
        """get(key, engine) -> value; ratio_get(key) -> the ratio to transformers (None: empty cell)."""
        cells = [label]
        for k, _ in self.cols:
            e = self.engines[k]
            cells.append(fmt(None if "error" in e else get(k, e), spec_, suffix))
            if k != "hf" and self.have_hf:
                cells.append(fmt(ratio_get(k) if "error" not in e else None, ".2f") if ratio_get else "")
        self.lines.append("| " + " | ".join(cells) + " |")


def tables(spec, machine, engines, convs, derived, args) -> str:
    cols = [("hf", "transformers fp32")] + [(f"ragvl-{dt}", f"ragvl {dt}") for dt in args.dtypes]
    cols = [(k, t) for k, t in cols if k in engines]
    dx = derived["engines"]
    table = ComparisonTable("stage", cols, engines)
    lines = table.lines

    def row(label: str, get, spec_=".3f", suffix="", ratio_key: str | None = None):
        table.row(label, get, spec_, suffix, ratio_get=ratio_key and (
            lambda k: (dx.get(k, {}).get("ratio_to_hf") or {}).get(ratio_key)))

    def ev(key):
        return lambda k, e: e.get(key)

    def dv(key, scale=1.0):
        return lambda k, e: (dx.get(k, {}).get(key) * scale) if dx.get(k, {}).get(key) is not None else None

    row("load (s)", ev("load_s"), ratio_key="load_s")
    w = "warm" if args.runs > 1 else "cold"  # with --runs 1 there is no warm run: show cold only
    temps = ("cold", "warm") if args.runs > 1 else ("cold",)
    row(f"preprocess, {w} (s)", ev(f"preprocess_s_{w}"), ratio_key=f"preprocess_s_{w}")
    for stage in ("vision", "prefill"):
        for t in temps:
            row(f"{stage}, {t} (s)", ev(f"{stage}_s_{t}"), ratio_key=f"{stage}_s_{t}")
    row(f"first token, {w} (s)", ev(f"first_token_s_{w}"), ratio_key=f"first_token_s_{w}")
    for t in temps:
        row(f"decode, {t} (ms/token)", lambda k, e, t=t: e.get(f"decode_s_per_token_{t}") and
            1e3 * e[f"decode_s_per_token_{t}"], ".1f", ratio_key=f"decode_s_per_token_{t}")
    row(f"decode, {w} (tok/s)", ev(f"decode_tok_s_{w}"), ".2f")
    row("peak RSS (GB)", ev("peak_rss_gb"), ".2f", ratio_key="peak_rss_gb")
    row("RSS after load (GB)", ev("rss_after_load_gb"), ".2f")
    row("vision GFLOP/s", dv("vision_gflops"), ".1f")
    row("vision floor (s)", dv("vision_floor_s"))
    row("vision % of floor", dv("vision_frac_of_floor", 100), ".1f", "%")
    row("prefill GFLOP/s", dv("prefill_gflops"), ".1f")
    row("prefill floor (s)", dv("prefill_floor_s"))
    row("prefill % of floor", dv("prefill_frac_of_floor", 100), ".1f", "%")
    row("decode bytes/token (MB)", dv("decode_bytes_per_token", 1e-6), ".2f")
    row("decode floor (tok/s)", dv("decode_floor_tok_s"), ".2f")
    row("decode % of floor", dv("decode_frac_of_floor", 100), ".1f", "%")
    row("greedy tokens == HF", lambda k, e: None if k == "hf" else dx.get(k, {}).get("tokens_equal_hf"))
    row("tokens agreeing with HF", lambda k, e: None if k == "hf" else
        (f"{dx[k]['tokens_common_prefix']}/{len(e.get('tokens', []))}" if "tokens_common_prefix" in dx.get(k, {}) else None))
    row("prompt ids == HF", lambda k, e: None if k == "hf" else dx.get(k, {}).get("prompt_ids_equal_hf"))

    e0 = next((engines[k] for k, _ in cols if "error" not in engines[k]), {})
    main = [f"Qwen2-VL, {spec.name} shape (random weights, init std {args.init_std}), {args.threads} thread(s), "
            f"{args.new_tokens} new tokens, {args.runs} run(s) per engine. "
            f"Image {PAGE_SIZE[0]}x{PAGE_SIZE[1]} -> grid {e0.get('grid_thw')} "
            f"({math.prod(e0.get('grid_thw') or [0])} patches), prompt {e0.get('prompt_tokens')} tokens. "
            + (f"Cold = first run in a fresh process; warm = best of runs 2..{args.runs}. "
               f"GFLOP/s, floors and targets use the warm numbers. " if args.runs > 1 else
               "Cold only (--runs 1: the first run in a fresh process); GFLOP/s, floors and targets use it. ")
            + "Ratio columns: ragvl time / transformers time (below 1 = ragvl faster); transformers is "
            "compared with the fp32 floors."
            + (f" transformers attention: {engines['hf'].get('attn_implementation')}." if table.have_hf else ""), "",
            *lines]
    note = over_floor_note({f"{k} {st}": x.get(f"{st}_frac_of_floor") for k, x in dx.items()
                            for st in ("vision", "prefill", "decode")})
    return {"main": "\n".join(main) + note, "stages": stages_md(spec, e0, dx), "floors": floors_md(machine),
            "conversion": conversion_md(convs, args.dtypes),
            "targets": targets_md(derived["targets"], (
                ("vision_fp32_ge_80pct_floor", "ragvl fp32 vision, fraction of its MatMul floor", 100, "%", ".1f"),
                ("decode_fp32_ge_85pct_floor", "ragvl fp32 decode, fraction of the bandwidth floor", 100, "%", ".1f"),
                ("decode_int4_ge_30_tok_s", "ragvl int4 decode tok/s", 1, "", ".1f"),
                ("greedy_fp32_equals_hf", "ragvl fp32 greedy tokens == transformers", None, "", ""),
            ))}


def over_floor_note(fracs: dict[str, float | None]) -> str:
    """A note when a measured stage beat its floor: on a shared machine that means the floors child
    ran under heavier load than that stage (compare the load averages), not that the kernel did."""
    over = [f"{k} ({v:.0%})" for k, v in fracs.items() if v is not None and v > 1.0]
    if not over:
        return ""
    return ("\n\n**Above 100 % of the floor:** " + ", ".join(over) + ". A stage cannot beat the matmuls it "
            "is made of, so here the floor measurement was slowed by other jobs more than the stage was; "
            "rerun on a quiet machine before reading these fractions.")


def stages_md(spec, e0: dict, dx: dict) -> str:
    """FLOPs of every group of matmuls and its floor in each format: where the time must go."""
    if not e0:
        return "No engine ran."
    flops = {"vision": vision_flops(spec, e0["grid_thw"]), "prefill": prefill_flops(spec, e0["prompt_tokens"])}
    engines = [k for k in dx if k.startswith("ragvl-") and dx[k].get("vision_floor_by_group_s")]
    out = ["| " + " | ".join(["stage: matmul group", "GFLOP"] + [f"floor {k[6:]} (s)" for k in engines]) + " |",
           "|---|---|" + "---|" * len(engines)]
    for stage, groups in flops.items():
        for g, v in groups.items():
            if g == "total":
                continue
            cells = [fmt((dx[k].get(f"{stage}_floor_by_group_s") or {}).get(g), ".3f") for k in engines]
            out.append("| " + " | ".join([f"{stage}: {g}", f"{v / 1e9:.1f}"] + cells) + " |")
        cells = [fmt(dx[k].get(f"{stage}_floor_s"), ".3f") for k in engines]
        out.append("| " + " | ".join([f"**{stage}: total**", f"**{groups['total'] / 1e9:.1f}**"] + cells) + " |")
    return "\n".join(out) + "\n"


def floors_md(machine: dict) -> str:
    from machine import floors_tables

    if not machine:
        return "Machine floors not measured (--skip-machine): no fractions of floor.\n"
    return floors_tables(machine)


def conversion_md(convs: dict, dtypes: list[str]) -> str:
    out = ["| conversion | convert() (s) | process (s) | peak RSS (GB) | vision (MB) | embed (MB) | decoder (MB) "
           "| encoder (MB) | LM (MB) | folder (MB) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for dt in dtypes:
        c = convs.get(dt, {})
        if "error" in c or not c:
            out.append(f"| {dt} | error | | | | | | | | |")
            continue
        s = c["sizes"]
        out.append(f"| {dt}{' (cached)' if c.get('cached') else ''} | {fmt(c.get('convert_s'), '.2f')} | "
                   f"{fmt(c.get('process_wall_s'), '.2f')} | {fmt(c.get('peak_rss_gb'), '.2f')} | "
                   f"{s['vision'] / 1e6:.2f} | {s['embed'] / 1e6:.2f} | {s['decoder'] / 1e6:.2f} | "
                   f"{s.get('encoder', 0) / 1e6:.2f} | {s['lm'] / 1e6:.2f} | {s['total'] / 1e6:.2f} |")
    return "\n".join(out) + "\n"


def targets_md(targets: dict, rows) -> str:
    """rows: (key, label, scale, unit, format); scale None: a yes/no target."""
    out = ["| target | value | threshold | met |", "|---|---|---|---|"]
    for key, label, scale, unit, f in rows:
        v = targets.get(key)
        if scale is None:
            out.append(f"| {label} | {fmt(v)} | yes | {fmt(v)} |")
        elif v is None:
            out.append(f"| {label} | — | | |")
        else:
            out.append(f"| {label} | {v['value'] * scale:{f}}{unit} | {v['threshold'] * scale:g}{unit} | "
                       f"{'yes' if v['met'] else 'NO'} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def add_shared_args(p: argparse.ArgumentParser) -> None:
    """The options every bench script takes: outputs, formats, threads, microbenchmarks, weights."""
    p.add_argument("--work", type=Path, default=HERE / "out", help="checkpoint and conversion cache (git-ignored)")
    p.add_argument("--dtypes", default="fp32,int8,int4", help="ragvl weight formats, comma-separated")
    p.add_argument("--threads", type=int, default=usable_cores(), help="intra-op threads (default: all usable cores)")
    p.add_argument("--skip-machine", action="store_true",
                   help="do not measure the floors (MatMul rates at the engines' shapes, memory bandwidth)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each floor microbenchmark (best is kept)")
    p.add_argument("--mem-gb", type=float, default=2.0,
                   help="GB streamed by the memory-bandwidth measurement (>> the last-level cache; "
                        "bench_colqwen2.py measures no bandwidth: its embedder never decodes)")
    p.add_argument("--results", type=Path, default=None,
                   help="folder for the results .md/.json (default bench/results for the 2B shape, "
                        "<work>/results otherwise)")
    p.add_argument("--init-std", type=float, default=None,
                   help="std of the random matrices (default 0.2 for the tiny configs, as testkit/tiny_checkpoints: "
                        "peaked logits; 0.02 at the 2B shape, where 0.2 makes every attention row one-hot and "
                        "the whole forward chaotic, so float noise alone changes the tokens)")
    p.add_argument("--seed", type=int, default=0, help="weight seed of the random checkpoint")
    p.add_argument("--reconvert", action="store_true", help="convert again even if a converted folder is cached")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-args", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)


def run_floors(work: Path, args, item_lists: list[list[dict]], mem_gb: float | None = None) -> dict:
    """Measure the floors in a child (bench/machine.py): every (shape, format) the engines' stages
    use, at args.threads, and the streaming bandwidth (mem_gb 0: skip it)."""
    from machine import shapes_to_measure

    if args.skip_machine:
        return {}
    shapes = shapes_to_measure(item_lists, args.dtypes)
    log(f"machine: {len(shapes)} matmul shapes, memory bandwidth")
    return run_child("machine", {"threads": args.threads, "shapes": shapes, "dtypes": args.dtypes, "reps": args.reps,
                                 "mem_gb": args.mem_gb if mem_gb is None else mem_gb}, work,
                     script=HERE / "bench_qwen2vl.py")


def save_results(run, tables: dict[str, str], raw: dict, args) -> int:
    """Write the named tables and the raw numbers to the results folder; the script's exit status."""
    from results import default_results_dir

    for name, md in tables.items():
        run.add(name, md)
    run.save(raw, args.results or default_results_dir(args.config, args.work))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line (bench/assemble.py documents it from here)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="2b",
                   help="'2b' (Qwen2-VL-2B shape, default), 'tiny' / 'tiny-b' (tests' tiny variants) or a "
                        "config.json path (flat or nested; its token ids are replaced by the tiny tokenizer's)")
    p.add_argument("--vocab", type=int, default=None, help="override the vocabulary size (embedding/lm_head rows)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per generation (EOS ignored)")
    p.add_argument("--runs", type=int, default=2, help="generations per engine: run 1 is cold, the rest warm")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="preprocessor max_pixels written into the checkpoint (default 28*28*1280)")
    p.add_argument("--shard-mb", type=float, default=SHARD_BYTES / 2 ** 20,
                   help="checkpoint shard size in MiB (default 1024; bounds the builder's memory)")
    p.add_argument("--skip-hf", action="store_true", help="do not run transformers")
    p.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"),
                   help="transformers attention implementation (default sdpa, transformers' default)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the shape, parameter count, FLOPs and bytes per token, then exit")
    add_shared_args(p)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if not args.child:
        args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        bad = [d for d in args.dtypes if d not in ("fp32", "int8", "int4")]
        if bad:
            p.error(f"--dtypes: unknown {bad}; expected fp32, int8, int4")
        if args.runs < 1 or args.new_tokens < 2:
            p.error("--runs must be >= 1 and --new-tokens >= 2")
    return args


def dry_shape(spec, args) -> tuple[list[int], int]:
    """The page's patch grid and an approximate prompt length, without running a model."""
    from ragvl.models.runtime.preprocess import ImageConfig, smart_resize

    cfg = ImageConfig(max_pixels=args.max_pixels)
    h, w = smart_resize(PAGE_SIZE[1], PAGE_SIZE[0], cfg.factor, cfg.min_pixels, cfg.max_pixels)
    grid = [1, h // 14, w // 14]
    return grid, grid[1] * grid[2] // 4 + 22  # image tokens + the template and question (approximate)


def dry_run(spec, args) -> None:
    grid, seq = dry_shape(spec, args)
    vf, pf = vision_flops(spec, grid), prefill_flops(spec, seq)
    print(json.dumps({"spec": dataclasses.asdict(spec), "vocab_size": spec.vocab_size, "grid_thw": grid,
                      "vision_gflop": {k: round(v / 1e9, 1) for k, v in vf.items()},
                      "prefill_gflop_approx": {k: round(v / 1e9, 1) for k, v in pf.items()},
                      "decode_weight_gb": {dt: round(decoder_weight_bytes(spec, dt)["total"] / 1e9, 3)
                                           for dt in ("fp32", "int8", "int4")}}, indent=2, default=list))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.child_args), args.child_out)
        return 0
    args.init_std = default_init_std(args.config, args.init_std)
    spec_d = resolve_spec(args.config, args.vocab, args.init_std)
    spec = spec_from_dict(spec_d)
    if args.dry_run:
        dry_run(spec, args)
        return 0
    from results import Run

    run = Run("bench_qwen2vl.py", "qwen2vl" if args.config == "2b" else f"qwen2vl-{spec.name}", threads=args.threads)
    work = args.work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"shape {spec.name}: hidden {spec.hidden_size}, {spec.num_layers} layers, vocab {spec.vocab_size}, "
        f"vision {spec.vision_depth}x{spec.vision_embed_dim}; threads {args.threads}; work {work}")

    ckpt, ckpt_info = ensure_checkpoint(work, spec_d, args.max_pixels, args.seed, int(args.shard_mb * 2 ** 20))
    convs, folders = {}, {}
    for dt in args.dtypes:
        folders[dt], convs[dt] = ensure_converted(work, ckpt, dt, args.reconvert)

    engines: dict[str, dict] = {}
    if not args.skip_hf:
        log(f"engine transformers fp32 ({args.hf_attn})")
        engines["hf"] = run_child("hf", {"ckpt": str(ckpt), "threads": args.threads, "new_tokens": args.new_tokens,
                                         "runs": args.runs, "attn": args.hf_attn}, work)
    for dt in args.dtypes:
        name = f"ragvl-{dt}"
        if "error" in convs[dt]:
            engines[name] = {"error": "conversion failed"}
            continue
        log(f"engine {name}")
        engines[name] = run_child("ragvl", {"folder": str(folders[dt]), "threads": args.threads,
                                            "new_tokens": args.new_tokens, "runs": args.runs}, work)

    # The floors at the shapes the engines actually ran (grid and prompt length from their results).
    from machine import prefill_items, vision_items

    e0 = next((e for e in engines.values() if "error" not in e), None)
    grid, seq = (e0["grid_thw"], e0["prompt_tokens"]) if e0 else dry_shape(spec, args)
    machine = run_floors(work, args, [vision_items(spec, grid), prefill_items(spec, seq)])

    derived = derive(spec, machine, engines, convs, args.new_tokens)
    md = tables(spec, machine, engines, convs, derived, args)
    results = {
        "spec": {**dataclasses.asdict(spec), "vocab_size": spec.vocab_size, "head_dim": spec.head_dim},
        "image": {"size": list(PAGE_SIZE), "max_pixels": args.max_pixels, "question": QUESTION},
        "settings": {"threads": args.threads, "new_tokens": args.new_tokens, "runs": args.runs,
                     "hf_attn": None if args.skip_hf else args.hf_attn},
        "checkpoint": {"path": str(ckpt), **ckpt_info},
        "conversions": convs,
        "machine": machine,
        "engines": engines,
        "derived": derived,
    }
    return save_results(run, md, results, args)


if __name__ == "__main__":
    sys.exit(main())
