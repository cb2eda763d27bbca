#!/usr/bin/env python
"""Where a decode step's time goes: onnxruntime's profiler on the answerer's decoder, per part.

Opens a converted Qwen2-VL folder's decoder with a profiling session (as ragvl opens it: the
optimized copy where valid, this CPU's int8 kernel), prefills `--prompt` tokens of random
embeddings, then decodes `--steps` tokens, and sums the profile's node times over the decode
steps only: by part of the model (attention projections, the attention itself, KV cache
growth, MLP, norms and residuals, rotary, lm_head) and by operator type. Beside them: the wall
time of a step, the share of it no node accounts for (the executor between nodes), and the
weight bytes one step reads against the memory bandwidth measured here (machine.py's streaming
reads), which bounds a step from below. Writes bench/results/<cpu kind>/profile_decode.md and
.json.

    python bench/experiments/profile_decode.py --answerer bench/out/ckpt-qwen2vl-2b-...-ragvl-int8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent  # results.py and machine.py
sys.path.insert(0, str(BENCH))
from results import Run  # noqa: E402

NAME = "profile_decode"
MATMULS = ("MatMulNBits", "MatMulInteger", "MatMul", "Gemm", "FusedMatMul")


def part(node: str, op: str) -> str:
    """The decoder part a node belongs to, from the paths the converter (and runtime/int8.py's
    rewrite, which keeps them) gives its nodes."""
    if "lm_head" in node:
        return "lm_head"
    if "/self_attn" in node:
        if any(p in node for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "attention projections"
        if "_cache/" in node:  # k_cache / v_cache: past + this step's key or value
            return "KV cache growth (Concat)"
        if op in ("GroupQueryAttention", "Softmax") or "/qk" in node or "/pv" in node:
            return "attention (scores, softmax, values)"
        if "_rot/" in node:  # q_rot / k_rot: rotate_half and the cos / sin products
            return "rotary"
        return "attention: reshapes, masks, other"
    if "/mlp" in node:
        return "MLP"
    if "norm" in node or "/Add" in node:
        return "norms, residuals"
    return "other"


def profile(folder: str, threads: int, prompt: int, steps: int) -> dict:
    from ragvl.models.runtime.qwen2vl import Qwen2VL
    from ragvl.models.runtime.session import create_session, session_kernel

    tmp = tempfile.mkdtemp()
    m = Qwen2VL(folder, threads=threads)
    t = m.config.text
    rng = np.random.default_rng(0)
    embeds = (rng.standard_normal((1, prompt, t.hidden_size)) * 0.02).astype(np.float32)
    positions = np.broadcast_to(np.arange(prompt, dtype=np.int64), (3, 1, prompt)).copy()

    def decode() -> list[float]:
        """Prefill, then `steps` greedy steps: their wall times."""
        logits, cache = m.run_decoder(embeds, np.ones((1, prompt), np.int64), positions, m.empty_cache())
        token, walls = int(np.argmax(logits[0])), []
        for i in range(steps):
            t0 = time.perf_counter()
            logits, cache = m.decode_step(token, cache, prompt + i, 0)
            walls.append(time.perf_counter() - t0)
            token = int(np.argmax(logits))
        return walls

    m.open("embed", "decoder")
    plain = decode()  # as ragvl runs it: the profiler's own cost per node stays out of this figure
    m._sessions.pop("decoder")
    path, preoptimized = m.graph_path("decoder")
    t0 = time.perf_counter()
    m._sessions["decoder"] = create_session(path, threads=threads, optimize=not preoptimized,
                                            profile=os.path.join(tmp, "decoder"))
    load_s = time.perf_counter() - t0
    walls = decode()
    events = json.loads(Path(m._sessions["decoder"].end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[1]["ts"]  # run 0 is the prefill
    by_part: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    nodes_s = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        node, op = e["name"][:-len("_kernel_time")], e.get("args", {}).get("op_name", "?")
        if op == "If":  # its branch's nodes are recorded themselves: counting it too would count them twice
            continue
        by_part[part(node, op)] += e["dur"] / 1e6 / steps
        by_op[op] += e["dur"] / 1e6 / steps
        nodes_s += e["dur"] / 1e6 / steps
    n_nodes = sum(1 for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                  and e["ts"] >= start and e.get("args", {}).get("op_name") != "If") / steps
    return {"folder": folder, "dtype": m.manifest["dtype"], "int8_kernel": session_kernel(m._sessions["decoder"]),
            "threads": threads, "prompt": prompt, "steps": steps, "load_s": round(load_s, 2),
            "step_s": round(float(np.median(plain)), 5),
            "step_wall_s": round(float(np.median(walls)), 5), "step_nodes_s": round(nodes_s, 5),
            "nodes_per_step": round(n_nodes), "by_part_s": dict(sorted(by_part.items(), key=lambda x: -x[1])),
            "by_op_s": dict(sorted(by_op.items(), key=lambda x: -x[1]))}


def step_bytes(folder: str) -> int:
    """Weight bytes a decode step reads: every external-data byte of the decoder graph (its
    weights), the embedding table excepted (it is another graph and reads one row)."""
    from ragvl.models.contract import read_manifest

    f = Path(folder)
    graph = read_manifest(f)["graphs"]["decoder"]
    return sum(p.stat().st_size for p in f.glob(graph.removesuffix(".onnx") + "*.data")
               if ".opt." not in p.name) or (f / graph).stat().st_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--answerer", action="append", required=True, help="a converted Qwen2-VL folder (repeatable)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--prompt", type=int, default=934, help="prompt tokens prefilled before the decode steps")
    p.add_argument("--steps", type=int, default=16, help="decode steps profiled")
    p.add_argument("--mem-gb", type=float, default=2.0, help="GB streamed to measure the bandwidth")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = Run("experiments/profile_decode.py", NAME, threads=args.threads)
    from machine import measure_bandwidth

    from ragvl.models.contract import cpu_features

    results = [profile(f, args.threads, args.prompt, args.steps) for f in args.answerer]
    bw = measure_bandwidth(args.threads, args.mem_gb, 3, sorted({r["dtype"] for r in results} - {"fp32"}))
    gbs = bw["floor_gbs"]
    rows = []
    for r in results:
        nbytes = step_bytes(r["folder"])
        floor = nbytes / (gbs * 1e9)
        r.update(step_bytes=nbytes, bandwidth_gbs=gbs, step_floor_s=round(floor, 5))
        rows.append(f"| {r['dtype']} ({r['int8_kernel'] or 'no int8'}) | {r['step_s'] * 1e3:.1f} | "
                    f"{floor * 1e3:.1f} | {floor / r['step_s'] * 100:.0f}% | {nbytes / 1e6:,.0f} | "
                    f"{r['step_wall_s'] * 1e3:.1f} | {r['step_nodes_s'] * 1e3:.1f} | "
                    f"{(1 - r['step_nodes_s'] / r['step_wall_s']) * 100:.0f}% | {r['nodes_per_step']} |")
    cpu = cpu_features()
    main_table = (f"One decode step after a {args.prompt}-token prefill, median of {args.steps}: first as ragvl "
                  f"runs it, then in a profiling session, whose per-node recording slows the step (the parts "
                  f"below are shares of that slower step); node times from onnxruntime's profiler (an If's own "
                  f"entry left out: its branch's nodes are counted); floor = the decoder's weight bytes / {gbs} "
                  f"GB/s (this machine's fastest streaming read, machine.py). This CPU: {cpu.model} "
                  f"({cpu.kind}).\n\n"
                  "| decoder | step (ms) | floor (ms) | % of floor | weights (MB) | profiled step (ms) | in nodes (ms) "
                  "| between nodes | nodes |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    parts = sorted({p for r in results for p in r["by_part_s"]}, key=lambda p: -max(r["by_part_s"].get(p, 0) for r in results))
    head = "| part | " + " | ".join(f"{r['dtype']} (ms)" for r in results) + " |\n|---|" + "---|" * len(results) + "\n"
    part_table = head + "\n".join(f"| {p} | " + " | ".join(f"{r['by_part_s'].get(p, 0) * 1e3:.2f}" for r in results) + " |"
                                  for p in parts)
    ops = sorted({o for r in results for o in r["by_op_s"]}, key=lambda o: -max(r["by_op_s"].get(o, 0) for r in results))[:12]
    head = "| operator | " + " | ".join(f"{r['dtype']} (ms)" for r in results) + " |\n|---|" + "---|" * len(results) + "\n"
    op_table = head + "\n".join(f"| {o} | " + " | ".join(f"{r['by_op_s'].get(o, 0) * 1e3:.2f}" for r in results) + " |"
                                for o in ops)
    run.add("main", main_table)
    run.add("parts", part_table)
    run.add("ops", op_table)
    run.save({"cpu": cpu.as_dict(), "bandwidth": bw, "results": results})
    print(main_table, part_table, op_table, sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
