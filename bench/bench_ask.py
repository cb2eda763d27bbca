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
   through `ragvl.answer.answering.answer_question()` as `Index.ask` does (retrieval excluded: the pages are
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
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_colqwen2 import render_pages, sample_questions  # noqa: E402
from bench_qwen2vl import (DEFAULT_MAX_PIXELS, SHARD_BYTES, ComparisonTable, add_shared_args,  # noqa: E402
                           child_main, conversion_md, default_init_std, ensure_checkpoint, ensure_converted,
                           floors_md, fmt, gb, instrument_hf, over_floor_note, log, proc_status_kb, ratio,
                           resolve_spec, run_child,
                           run_floors, save_results, spec_from_dict)

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
    from ragvl.answer.answering import answer_question
    from ragvl.answer.prompt import answer_messages
    from ragvl.retrieval.page_search import Hit
    from ragvl.models.runtime.generation import GenerationSettings
    from ragvl.models.runtime.qwen2vl import Qwen2VL

    assert MAX_PX == ANSWER_MAX_PIXELS, (MAX_PX, ANSWER_MAX_PIXELS)
    t0 = time.perf_counter()
    # Sessions open lazily; open them all here, as the reference loads its weights before timing.
    m = Qwen2VL(folder, threads=threads).open()
    load_s = time.perf_counter() - t0
    rss_loaded = gb(proc_status_kb("VmRSS"))
    log(f"  loaded in {load_s:.2f}s, RSS {rss_loaded} GB")
    pages = _case_pages(cases)
    by_path = {(path, page): png for (_, page), (path, png) in pages.items()}

    class Store:  # what answer_question() reads from a PageStore: the stored PNG of a page
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
            ans = answer_question(m, Store(), c["question"], hits, settings).consume()
            wall = time.perf_counter() - t
            tm = ans.generation.timings
            assert tm.load_s == 0, "a session opened inside a timed run"  # open() above: no stage row includes one
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


def answer_items(spec, grids: list[list[int]], prompt_tokens: int) -> list[dict]:
    """The matmuls before the first token (bench/machine.py items): the vision tower on each image
    alone (one image attends to itself only), then the prefill of the whole prompt (linears, full
    S x S attention, lm_head on the last position)."""
    from machine import prefill_items, vision_items

    return [it for g in grids for it in vision_items(spec, g)] + prefill_items(spec, prompt_tokens)


def derive(spec, machine: dict, engines: dict[str, dict], cases: list[dict]) -> dict:
    """Per case and engine: vision+prefill GFLOP/s, the floor in that engine's weight format
    (machine.stage_floor; transformers against fp32) and TTFT as a multiple of it."""
    from machine import group_flops, stage_floor

    d: dict[str, Any] = {"cases": {}, "engines": {}}
    ok = {k: e for k, e in engines.items() if "error" not in e}
    ref = next(iter(ok.values()), None)
    dtypes = sorted({"fp32" if k == "hf" else k.split("-")[1] for k in ok})
    for c in cases:
        name = c["name"]
        if ref is None:
            break
        ci = ref["cases"][name]
        items = answer_items(spec, ci["grids"], ci["prompt_tokens"])
        f = group_flops(items)
        fl = {dt: stage_floor(items, dt, machine) for dt in dtypes}
        d["cases"][name] = {"prompt_tokens": ci["prompt_tokens"], "grids": ci["grids"],
                            "gflop": f["total"] / 1e9, "gflop_by_group": {k: v / 1e9 for k, v in f.items()},
                            "floor_s": {dt: v["floor_s"] for dt, v in fl.items() if v},
                            "floor_by_group_s": {dt: v["by_group"] for dt, v in fl.items() if v}}
    hf = ok.get("hf")
    for k, e in ok.items():
        x: dict[str, Any] = {}
        fdtype = "fp32" if k == "hf" else k.split("-")[1]
        for name, ci in e["cases"].items():
            y: dict[str, Any] = {}
            items = answer_items(spec, ci["grids"], ci["prompt_tokens"])
            total = group_flops(items)["total"]
            fl = stage_floor(items, fdtype, machine)
            vis = ci.get("vision_s_warm") or ci.get("vision_s_cold")
            pre = ci.get("prefill_s_warm") or ci.get("prefill_s_cold")
            ttft = ci.get("ttft_s_warm") or ci.get("ttft_s_cold")
            if vis and pre:
                y["vision_prefill_gflops"] = total / (vis + pre) / 1e9
            if fl and ttft:
                y["floor_s"] = fl["floor_s"]
                y["ttft_over_floor"] = ttft / fl["floor_s"]
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
        w = "warm" if args.runs > 1 else "cold"  # with --runs 1 there is no warm run
        for stage in ("preprocess", "vision", "prefill"):
            row(f"{n}: {stage}, {w} (s)", cv(f"{stage}_s_{w}"), ratio_get=rv(f"{stage}_s_{w}"))
        row(f"{n}: **TTFT, cold (s)**", cv("ttft_s_cold"), ratio_get=rv("ttft_s_cold"))
        row(f"{n}: **TTFT, warm (s)**", cv("ttft_s_warm"), ratio_get=rv("ttft_s_warm"))
        row(f"{n}: vision+prefill GFLOP/s", lambda k, e, n=n: dx.get(k, {}).get(n, {}).get("vision_prefill_gflops"),
            ".1f")
        row(f"{n}: floor (s)", lambda k, e, n=n: dx.get(k, {}).get(n, {}).get("floor_s"))
        row(f"{n}: TTFT / floor (x)", lambda k, e, n=n: dx.get(k, {}).get(n, {}).get("ttft_over_floor"), ".2f")
        row(f"{n}: prompt ids == HF", lambda k, e, n=n: None if k == "hf" else
            dx.get(k, {}).get(n, {}).get("prompt_ids_equal_hf"))
        row(f"{n}: first token == HF", lambda k, e, n=n: None if k == "hf" else
            dx.get(k, {}).get(n, {}).get("first_token_equal_hf"))
    row("load (s)", lambda k, e: e.get("load_s"),
        ratio_get=lambda k: (dx.get(k, {}).get("ratio_to_hf") or {}).get("load_s"))
    row("peak RSS (GB)", lambda k, e: e.get("peak_rss_gb"), ".2f",
        ratio_get=lambda k: (dx.get(k, {}).get("ratio_to_hf") or {}).get("peak_rss_gb"))

    main = [f"Answers, {spec.name} shape (random weights, init std {args.init_std}), {args.threads} thread(s), "
            f"{args.runs} run(s) per engine. "
            f"Question: \"{cases[0]['question']}\" over "
            + "; ".join(f"{c['name']}: " + ", ".join(f"{f} p{p}" for f, p in c["pages"]) for c in cases)
            + f". Pages rendered at DEFAULT_DPI, shown at up to {ANSWER_MAX_PIXELS} pixels (768 visual tokens) each. "
            f"TTFT = from the call to the first token (preprocessing + vision + prefill + first pick). Cold = run 1 "
            f"in a fresh process; "
            + (f"warm = best of runs 2..{args.runs}; GFLOP/s and TTFT / floor use the warm numbers. " if args.runs > 1
               else "--runs 1: cold only (the warm TTFT row is empty); GFLOP/s and TTFT / floor use it. ")
            + "The floor is the engine's own weight format's (transformers: fp32). "
            "Ratio columns: ragvl time / transformers time (below 1 = ragvl faster)."
            + (f" transformers attention: {engines['hf'].get('attn_implementation')}." if table.have_hf else ""), "",
            *lines]

    dts = sorted({dt for ci in derived["cases"].values() for dt in ci["floor_s"]})
    floor = ["| floor before the first token | prompt tokens | image grids | GFLOP (vision + prefill) | "
             + " | ".join(f"floor {dt} (s)" for dt in dts) + " |", "|---|---|---|---|" + "---|" * len(dts)]
    for name, ci in derived["cases"].items():
        floor.append(f"| {name} | {ci['prompt_tokens']} | {' '.join(str(g) for g in ci['grids'])} | "
                     f"{ci['gflop']:.1f} | " + " | ".join(fmt(ci["floor_s"].get(dt), ".3f") for dt in dts) + " |")
    label = f"ragvl fp32 TTFT, {cases[0]['name']}, as a multiple of its floor"
    v = derived["targets"].get("ttft_fp32_1page_le_1_2_floor")
    targets = ["| target | value | threshold | met |", "|---|---|---|---|",
               f"| {label} | — | | |" if v is None else
               f"| {label} | {v['value']:.2f}x | ≤ {v['threshold']:g}x | {'yes' if v['met'] else 'NO'} |"]
    note = over_floor_note({f"{k} {n}": 1 / y["ttft_over_floor"] for k, x in dx.items() for n, y in x.items()
                            if isinstance(y, dict) and y.get("ttft_over_floor")})
    return {"main": "\n".join(main) + note, "floor": "\n".join(floor), "machine": floors_md(machine),
            "conversion": conversion_md(convs, args.dtypes), "targets": "\n".join(targets)}


# =============================================================================================
# main
# =============================================================================================


def build_parser() -> argparse.ArgumentParser:
    """The command line (bench/assemble.py documents it from here)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="2b", choices=("2b", "tiny"),
                   help="'2b' (Qwen2-VL-2B shape, default) or 'tiny' (tests' variant a)")
    p.add_argument("--skip-hf", action="store_true", help="do not run transformers")
    p.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"),
                   help="transformers attention implementation (default sdpa)")
    p.add_argument("--runs", type=int, default=2, help="answers per case and engine: run 1 is cold, the rest warm")
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
    from results import Run

    run = Run("bench_ask.py", "ask" if args.config == "2b" else f"ask-{spec.name}", threads=args.threads)
    work = args.work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"answers on the {spec.name} shape: hidden {spec.hidden_size}, {spec.num_layers} layers, "
        f"vision {spec.vision_depth}x{spec.vision_embed_dim}; threads {args.threads}; work {work}")
    cases = answer_cases()

    # bench_qwen2vl.py's checkpoint and conversions, with its default settings (same folders, reused).
    ckpt, ckpt_info = ensure_checkpoint(work, spec_d, DEFAULT_MAX_PIXELS, args.seed, SHARD_BYTES)
    convs, folders = {}, {}
    for dt in args.dtypes:
        folders[dt], convs[dt] = ensure_converted(work, ckpt, dt, args.reconvert)

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

    # The floors at the shapes the engines ran (every case's grids and prompt length).
    e0 = next((e for e in engines.values() if "error" not in e), None)
    machine = run_floors(work, args, [answer_items(spec, ci["grids"], ci["prompt_tokens"])
                                      for ci in (e0 or {}).get("cases", {}).values()]) if e0 else {}

    derived = derive(spec, machine, engines, cases)
    md = tables(spec, machine, engines, convs, derived, cases, args)
    results = {
        "spec": {**dataclasses.asdict(spec), "vocab_size": spec.vocab_size, "head_dim": spec.head_dim},
        "settings": {"threads": args.threads, "runs": args.runs, "max_pixels": ANSWER_MAX_PIXELS, "cases": cases,
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
