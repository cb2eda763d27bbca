#!/usr/bin/env python
"""Time to first token of ragvl's answers (Qwen2-VL, onnxruntime fp32 / int8 / int4) vs transformers fp32, same weights.

One run does everything, side by side:

1. builds or reuses bench_qwen2vl.py's random-weight Qwen2-VL checkpoint (default: the real
   Qwen2-VL-2B shape) and its ragvl conversions, all cached in --work (the same folders
   bench_qwen2vl.py uses, so a run of either reuses the other's);
2. runs every engine (transformers fp32, ragvl fp32 / int8 / int4) in its own child process on
   two answers over sample_pdfs/ pages rendered at DEFAULT_DPI, each shown at up to
   ANSWER_MAX_PIXELS (768 visual tokens): a 1-page and a 3-page answer to the first sample
   question, with the prompt ragvl builds (`ragvl.answer.prompt.answer_messages`). ragvl goes
   through `ragvl.answer.answering.answer()` as `Index.ask` does (retrieval excluded: the pages are
   given), transformers through the processor (max_pixels 602112) and a greedy generate of 1 new
   token with every processor output (mm_token_type_ids included). Per answer: preprocessing,
   vision, prefill and time to first token (TTFT: from the call to the first token, so
   preprocessing + vision + prefill + the first pick), cold (run 1) and warm (best of runs 2..);
   peak RSS per engine; whether the prompt ids and the first token equal transformers';
3. measures this machine's onnxruntime fp32 MatMul GFLOP/s (bench_qwen2vl.py's "machine" child);
4. derives the physical floor of each answer: (vision FLOPs + prefill FLOPs, counted from the
   shapes) / MatMul GFLOP/s, and every engine's TTFT as a multiple of it (target: ragvl fp32
   1-page TTFT <= 1.2x the floor);
5. prints Markdown tables and writes every number to <work>/results_ask.json.

    python bench/bench_ask.py                         # the 2B shape (long: see bench/README.md)
    python bench/bench_ask.py --config tiny           # seconds; checks the harness end to end
    python bench/bench_ask.py --skip-hf --dtypes fp32 --runs 1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_colqwen2 import render_pages, sample_questions  # noqa: E402
from bench_qwen2vl import (DEFAULT_MAX_PIXELS, ComparisonTable, SHARD_BYTES, _cores, _cpu_name, child_main,  # noqa: E402
                           ensure_checkpoint, ensure_converted, fmt, gb, instrument_hf, log, prefill_flops,
                           proc_status_kb, ratio, resolve_spec, default_init_std, add_shared_args,
                           write_results, run_child, spec_from_dict, vision_flops)

ANSWER_MAX_PIXELS = 768 * 28 * 28  # ragvl.answer.answering.ANSWER_MAX_PIXELS (checked in the children)
TTFT_FLOOR_TARGET = 1.2
STAGES = ("preprocess_s", "vision_s", "prefill_s", "ttft_s")


def answer_cases() -> list[dict]:
    """The two answers: the first sample question over its page, and over its page plus the next two
    distinct pages the sample questions point at (as a retrieval of k=3 might return them)."""
    qs = sample_questions()
    pages: list[list] = []
    for q in qs:
        if [q["file"], q["page"]] not in pages:
            pages.append([q["file"], q["page"]])
    return [{"name": "1 page", "question": qs[0]["question"], "pages": pages[:1]},
            {"name": "3 pages", "question": qs[0]["question"], "pages": pages[:3]}]


def _case_pages(cases: list[dict]) -> dict[tuple[str, int], tuple[str, bytes]]:
    """{(file name, page): (path, PNG bytes)} of every page the cases use, as the index stores them."""
    from ragvl.ingest import png_bytes

    want = list(dict.fromkeys((f, p) for c in cases for f, p in c["pages"]))
    return {(name, page): (path, png_bytes(image)) for name, page, path, image in render_pages(only=want)}


def _sha(ids) -> str:
    import numpy as np

    return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]


def _summarise(recs: dict[str, list[dict]]) -> dict:
    """Per case: cold = run 1, warm = best (min) of runs 2.."""
    out = {}
    for name, runs in recs.items():
        s: dict[str, Any] = {"runs": runs}
        for k in STAGES:
            s[k + "_cold"] = runs[0].get(k)
            warm = [r[k] for r in runs[1:] if r.get(k) is not None]
            s[k + "_warm"] = min(warm) if warm else None
        out[name] = s
    return out


# =============================================================================================
# Child tasks
# =============================================================================================


def task_ragvl(folder: str, threads: int, runs: int, cases: list[dict]) -> dict:
    import io

    import onnxruntime as ort
    from PIL import Image

    from ragvl.answer.answering import ANSWER_MAX_PIXELS as MAX_PX
    from ragvl.answer.answering import answer
    from ragvl.answer.prompt import answer_messages
    from ragvl.index.search import Hit
    from ragvl.models.runtime.generation import GenerationSettings
    from ragvl.models.runtime.qwen2vl import Qwen2VL

    assert MAX_PX == ANSWER_MAX_PIXELS, (MAX_PX, ANSWER_MAX_PIXELS)
    t0 = time.perf_counter()
    m = Qwen2VL(folder, threads=threads)
    load_s = time.perf_counter() - t0
    rss_loaded = gb(proc_status_kb("VmRSS"))
    log(f"  loaded in {load_s:.2f}s, RSS {rss_loaded} GB")
    pages = _case_pages(cases)
    by_path = {(path, page): png for (_, page), (path, png) in pages.items()}

    class Store:  # what answer() reads from a PageStore: the stored PNG of a page
        def page_image(self, path: str, page: int) -> bytes:
            return by_path[(path, page)]

    settings = GenerationSettings(max_new_tokens=1, ignore_eos=True)
    recs: dict[str, list[dict]] = {c["name"]: [] for c in cases}
    info: dict[str, dict] = {}
    for r in range(runs):
        for c in cases:
            paths = [(pages[(f, p)][0], p) for f, p in c["pages"]]
            hits = [Hit(i + 1, path, page, 0.0) for i, (path, page) in enumerate(paths)]
            messages = answer_messages(c["question"], paths)
            images = [Image.open(io.BytesIO(by_path[k])) for k in paths]
            t = time.perf_counter()
            prompt = m.build_prompt(messages, images, max_pixels=ANSWER_MAX_PIXELS)
            pre = time.perf_counter() - t
            t = time.perf_counter()
            ans = answer(m, Store(), c["question"], hits, settings).consume()
            wall = time.perf_counter() - t
            tm = ans.generation.timings
            recs[c["name"]].append({"preprocess_s": round(pre, 5), "vision_s": round(tm.vision_s, 5),
                                    "prefill_s": round(tm.prefill_s, 5), "ttft_s": round(tm.first_token_s, 5),
                                    "answer_call_s": round(wall, 5)})
            info[c["name"]] = {"prompt_tokens": int(len(prompt.ids)), "prompt_sha": _sha(prompt.ids),
                               "grids": [list(g) for g in prompt.grids],
                               "first_token": [int(x) for x in ans.generation.token_ids]}
            log(f"  run {r + 1}/{runs} {c['name']}: vision {tm.vision_s:.3f}s prefill {tm.prefill_s:.3f}s "
                f"TTFT {tm.first_token_s:.3f}s ({len(prompt.ids)} prompt tokens)")
    return {"engine": "ragvl", "dtype": m.manifest["dtype"], "load_s": round(load_s, 3),
            "rss_after_load_gb": rss_loaded, "onnxruntime": ort.__version__, "threads": threads,
            "cases": {k: {**info[k], **v} for k, v in _summarise(recs).items()}}


def task_hf(ckpt: str, threads: int, runs: int, cases: list[dict], attn: str) -> dict:
    import copy
    import io

    import torch
    import transformers
    from PIL import Image
    from transformers import Qwen2VLForConditionalGeneration

    from ragvl.answer.prompt import answer_messages
    from tiny_checkpoints import hf_generate, make_hf_processor

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = Qwen2VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32,
                                                            attn_implementation=attn).eval()
    processor = make_hf_processor(ckpt, max_pixels=ANSWER_MAX_PIXELS)
    load_s = time.perf_counter() - t0
    rss_loaded = gb(proc_status_kb("VmRSS"))
    log(f"  loaded in {load_s:.2f}s, RSS {rss_loaded} GB (attention: {attn})")
    vision_time, stamps = instrument_hf(model)
    pages = _case_pages(cases)
    recs: dict[str, list[dict]] = {c["name"]: [] for c in cases}
    info: dict[str, dict] = {}
    for r in range(runs):
        for c in cases:
            paths = [(pages[(f, p)][0], p) for f, p in c["pages"]]
            messages = answer_messages(c["question"], paths)
            images = [Image.open(io.BytesIO(pages[(f, p)][1])).convert("RGB") for f, p in c["pages"]]
            t = time.perf_counter()
            text = processor.apply_chat_template(copy.deepcopy(messages), add_generation_prompt=True)
            processor(text=[text], images=images, return_tensors="pt")
            pre = time.perf_counter() - t
            vision_time[0] = 0.0
            stamps.t = []
            t = time.perf_counter()
            ref = hf_generate(model, processor, messages, images, max_new_tokens=1)
            s = stamps.t  # s[0]: prompt handed to the streamer (before the first forward), s[1]: the new token
            recs[c["name"]].append({"preprocess_s": round(pre, 5), "vision_s": round(vision_time[0], 5),
                                    "prefill_s": round(s[1] - s[0] - vision_time[0], 5),
                                    "ttft_s": round(s[1] - t, 5)})
            info[c["name"]] = {"prompt_tokens": int(len(ref["prompt_ids"])), "prompt_sha": _sha(ref["prompt_ids"]),
                               "grids": [[int(x) for x in g] for g in ref["image_grid_thw"]],
                               "first_token": ref["new_token_ids"].tolist()}
            log(f"  run {r + 1}/{runs} {c['name']}: vision {vision_time[0]:.3f}s "
                f"TTFT {s[1] - t:.3f}s ({len(ref['prompt_ids'])} prompt tokens)")
    return {"engine": "transformers", "attn_implementation": attn, "load_s": round(load_s, 3),
            "rss_after_load_gb": rss_loaded, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "cases": {k: {**info[k], **v} for k, v in _summarise(recs).items()}}


TASKS = {"ragvl": task_ragvl, "hf": task_hf}


# =============================================================================================
# Derived numbers
# =============================================================================================


def answer_flops(spec, grids: list[list[int]], prompt_tokens: int) -> dict[str, float]:
    """Vision (each image on its own: bench_qwen2vl.vision_flops per grid) + prefill of the whole
    prompt (bench_qwen2vl.prefill_flops: linears, full S x S attention, lm_head on the last position)."""
    v = sum(vision_flops(spec, g)["total"] for g in grids)
    p = prefill_flops(spec, prompt_tokens)["total"]
    return {"vision": v, "prefill": p, "total": v + p}


def derive(spec, machine: dict, engines: dict[str, dict], cases: list[dict]) -> dict:
    peak = (machine.get("matmul") or {}).get("gflops")
    d: dict[str, Any] = {"matmul_gflops": peak, "cases": {}, "engines": {}}
    ok = {k: e for k, e in engines.items() if "error" not in e}
    ref = next(iter(ok.values()), None)
    for c in cases:
        name = c["name"]
        if ref is None:
            break
        ci = ref["cases"][name]
        f = answer_flops(spec, ci["grids"], ci["prompt_tokens"])
        d["cases"][name] = {"prompt_tokens": ci["prompt_tokens"], "grids": ci["grids"],
                            "vision_gflop": f["vision"] / 1e9, "prefill_gflop": f["prefill"] / 1e9,
                            "floor_s": f["total"] / peak / 1e9 if peak else None}
    hf = ok.get("hf")
    for k, e in ok.items():
        x: dict[str, Any] = {}
        for name, ci in e["cases"].items():
            y: dict[str, Any] = {}
            f = answer_flops(spec, ci["grids"], ci["prompt_tokens"])
            vis = ci.get("vision_s_warm") or ci.get("vision_s_cold")
            pre = ci.get("prefill_s_warm") or ci.get("prefill_s_cold")
            ttft = ci.get("ttft_s_warm") or ci.get("ttft_s_cold")
            if vis and pre:
                y["vision_prefill_gflops"] = f["total"] / (vis + pre) / 1e9
                y["vision_prefill_frac_of_matmul"] = ratio(y["vision_prefill_gflops"], peak)
            if peak and ttft:
                y["ttft_over_floor"] = ttft / (f["total"] / peak / 1e9)
            if hf and k != "hf":
                h = hf["cases"][name]
                y["ratio_to_hf"] = {s: ratio(ci.get(s), h.get(s)) for s in
                                    [st + w for st in STAGES for w in ("_cold", "_warm")]}
                y["prompt_ids_equal_hf"] = ci["prompt_sha"] == h["prompt_sha"]
                y["first_token_equal_hf"] = ci["first_token"] == h["first_token"]
            x[name] = y
        if hf and k != "hf":
            x["ratio_to_hf"] = {s: ratio(e.get(s), hf.get(s)) for s in ("load_s", "peak_rss_gb")}
        d["engines"][k] = x
    fp32 = d["engines"].get("ragvl-fp32", {}).get(cases[0]["name"], {})
    d["targets"] = {"ttft_fp32_1page_le_1_2_floor":
                    None if fp32.get("ttft_over_floor") is None else
                    {"value": fp32["ttft_over_floor"], "threshold": TTFT_FLOOR_TARGET,
                     "met": fp32["ttft_over_floor"] <= TTFT_FLOOR_TARGET}}
    return d


# =============================================================================================
# Tables
# =============================================================================================


def tables(spec, machine, engines, convs, derived, cases, args) -> str:
    cols = [("hf", "transformers fp32")] + [(f"ragvl-{dt}", f"ragvl {dt}") for dt in args.dtypes]
    cols = [(k, t) for k, t in cols if k in engines]
    dx = derived["engines"]
    table = ComparisonTable("answer / stage", cols, engines)
    lines, row = table.lines, table.row

    for c in cases:
        n = c["name"]

        def cv(key, n=n):
            return lambda k, e: e["cases"][n].get(key)

        def rv(key, n=n):
            return lambda k: (dx.get(k, {}).get(n, {}).get("ratio_to_hf") or {}).get(key)

        row(f"{n}: prompt tokens", cv("prompt_tokens"), "d")
        row(f"{n}: preprocess, warm (s)", cv("preprocess_s_warm"), ratio_get=rv("preprocess_s_warm"))
        row(f"{n}: vision, warm (s)", cv("vision_s_warm"), ratio_get=rv("vision_s_warm"))
        row(f"{n}: prefill, warm (s)", cv("prefill_s_warm"), ratio_get=rv("prefill_s_warm"))
        row(f"{n}: **TTFT, cold (s)**", cv("ttft_s_cold"), ratio_get=rv("ttft_s_cold"))
        row(f"{n}: **TTFT, warm (s)**", cv("ttft_s_warm"), ratio_get=rv("ttft_s_warm"))
        row(f"{n}: vision+prefill GFLOP/s", lambda k, e, n=n: dx.get(k, {}).get(n, {}).get("vision_prefill_gflops"),
            ".1f")
        row(f"{n}: TTFT / floor (x)", lambda k, e, n=n: dx.get(k, {}).get(n, {}).get("ttft_over_floor"), ".2f")
        row(f"{n}: prompt ids == HF", lambda k, e, n=n: None if k == "hf" else
            dx.get(k, {}).get(n, {}).get("prompt_ids_equal_hf"))
        row(f"{n}: first token == HF", lambda k, e, n=n: None if k == "hf" else
            dx.get(k, {}).get(n, {}).get("first_token_equal_hf"))
    row("load (s)", lambda k, e: e.get("load_s"),
        ratio_get=lambda k: (dx.get(k, {}).get("ratio_to_hf") or {}).get("load_s"))
    row("peak RSS (GB)", lambda k, e: e.get("peak_rss_gb"), ".2f",
        ratio_get=lambda k: (dx.get(k, {}).get("ratio_to_hf") or {}).get("peak_rss_gb"))

    out = [f"### Answer TTFT benchmark: {spec.name}, {args.threads} thread(s), {args.runs} run(s)", "",
           f"Question: \"{cases[0]['question']}\" over "
           + "; ".join(f"{c['name']}: " + ", ".join(f"{f} p{p}" for f, p in c["pages"]) for c in cases)
           + f". Pages rendered at DEFAULT_DPI, shown at up to {ANSWER_MAX_PIXELS} pixels (768 visual tokens) each. "
           f"TTFT = from the call to the first token (preprocessing + vision + prefill + first pick). Cold = run 1 "
           f"in a fresh process; warm = best of runs 2..{args.runs} (cold with --runs 1 is shown as —). "
           f"GFLOP/s and TTFT / floor use the warm numbers (cold with --runs 1). "
           f"Ratio columns: ragvl time / transformers time (below 1 = ragvl faster)."
           + (f" transformers attention: {engines['hf'].get('attn_implementation')}." if table.have_hf else ""), "",
           *lines, ""]

    mm = machine.get("matmul") or {}
    if not machine or "error" in machine:
        out += ["Machine limits not measured: no floors.", ""]
    else:
        out += [f"ORT fp32 MatMul {mm.get('n')}^3 on {args.threads} thread(s), best: **{fmt(mm.get('gflops'), '.1f')} "
                f"GFLOP/s**.", ""]
    out += ["| physical floor | prompt tokens | image grids | vision GFLOP | prefill GFLOP | floor (s) |",
            "|---|---|---|---|---|---|"]
    for name, ci in derived["cases"].items():
        out.append(f"| {name} | {ci['prompt_tokens']} | {' '.join(str(g) for g in ci['grids'])} | "
                   f"{ci['vision_gflop']:.1f} | {ci['prefill_gflop']:.1f} | {fmt(ci['floor_s'], '.3f')} |")
    out.append("")

    out += ["| conversion (shared with bench_qwen2vl.py) | convert() (s) | vision (MB) | LM = embed+decoder (MB) "
            "| folder (MB) |", "|---|---|---|---|---|"]
    for dt in args.dtypes:
        c = convs.get(dt, {})
        if "error" in c or not c:
            out.append(f"| {dt} | error | | | |")
            continue
        s = c["sizes"]
        out.append(f"| {dt}{' (cached)' if c.get('cached') else ''} | {fmt(c.get('convert_s'), '.2f')} | "
                   f"{s['vision'] / 1e6:.2f} | {s['lm'] / 1e6:.2f} | {s['total'] / 1e6:.2f} |")
    out.append("")

    out += ["| target | value | threshold | met |", "|---|---|---|---|"]
    v = derived["targets"].get("ttft_fp32_1page_le_1_2_floor")
    label = f"ragvl fp32 TTFT, {cases[0]['name']}, as a multiple of the physical floor"
    out.append(f"| {label} | — | | |" if v is None else
               f"| {label} | {v['value']:.2f}x | {v['threshold']:g}x | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(out) + "\n"


# =============================================================================================
# main
# =============================================================================================


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="2b", choices=("2b", "tiny"),
                   help="'2b' (Qwen2-VL-2B shape, default) or 'tiny' (tests' variant a)")
    p.add_argument("--skip-hf", action="store_true", help="do not run transformers")
    p.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"),
                   help="transformers attention implementation (default sdpa)")
    p.add_argument("--runs", type=int, default=2, help="answers per case and engine: run 1 is cold, the rest warm")
    add_shared_args(p)
    args = p.parse_args(argv)
    if not args.child:
        args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        bad = [d for d in args.dtypes if d not in ("fp32", "int8", "int4")]
        if bad:
            p.error(f"--dtypes: unknown {bad}; expected fp32, int8, int4")
        if args.runs < 1:
            p.error("--runs must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.child_args), args.child_out, tasks=TASKS)
        return 0
    args.init_std = default_init_std(args.config, args.init_std)
    spec_d = resolve_spec(args.config, None, args.init_std)
    spec = spec_from_dict(spec_d)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"answers on the {spec.name} shape: hidden {spec.hidden_size}, {spec.num_layers} layers, "
        f"vision {spec.vision_depth}x{spec.vision_embed_dim}; threads {args.threads}; work {work}")
    cases = answer_cases()

    # bench_qwen2vl.py's checkpoint and conversions, with its default settings (same folders, reused).
    ckpt, ckpt_info = ensure_checkpoint(work, spec_d, DEFAULT_MAX_PIXELS, args.seed, SHARD_BYTES)
    convs, folders = {}, {}
    for dt in args.dtypes:
        folders[dt], convs[dt] = ensure_converted(work, ckpt, dt, args.reconvert)

    machine: dict[str, Any] = {}
    if not args.skip_machine:
        log("machine: MatMul")
        machine = run_child("machine", {"threads": args.threads, "matmul_n": args.matmul_n, "mem_gb": 0.05,
                                        "reps": args.reps}, work)

    engines: dict[str, dict] = {}
    if not args.skip_hf:
        log(f"engine transformers fp32 ({args.hf_attn})")
        engines["hf"] = run_child("hf", {"ckpt": str(ckpt), "threads": args.threads, "runs": args.runs,
                                         "cases": cases, "attn": args.hf_attn}, work, script=__file__)
    for dt in args.dtypes:
        name = f"ragvl-{dt}"
        if "error" in convs[dt]:
            engines[name] = {"error": "conversion failed"}
            continue
        log(f"engine {name}")
        engines[name] = run_child("ragvl", {"folder": str(folders[dt]), "threads": args.threads, "runs": args.runs,
                                            "cases": cases}, work, script=__file__)

    derived = derive(spec, machine, engines, cases)
    md = tables(spec, machine, engines, convs, derived, cases, args)
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "cpu_count": os.cpu_count(), "processor": _cpu_name()},
        "spec": {**dataclasses.asdict(spec), "vocab_size": spec.vocab_size, "head_dim": spec.head_dim},
        "settings": {"threads": args.threads, "runs": args.runs, "max_pixels": ANSWER_MAX_PIXELS, "cases": cases,
                     "hf_attn": None if args.skip_hf else args.hf_attn},
        "checkpoint": {"path": str(ckpt), **ckpt_info},
        "conversions": convs,
        "machine": machine,
        "engines": engines,
        "derived": derived,
        "table_md": md,
    }
    return write_results(work, "results_ask.json", results, md)


if __name__ == "__main__":
    sys.exit(main())
