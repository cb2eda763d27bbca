#!/usr/bin/env python
"""Where the time of one page embedding goes: onnxruntime's profiler on ColQwen2, per part of the model.

Opens a converted ColQwen2 folder with profiling sessions, embeds one sample page (after one
warm-up page), and sums the node times of onnxruntime's profile by part: patch embedding, vision
attention (projections / the attention kernel / rotary and reshapes), vision MLP, vision norms,
merger, language model (attention / MLP / norms), the 128-d projection, other. Also by operator
type. Writes bench/results/profile_embed.md and .json.

    python bench/experiments/profile_embed.py --embedder bench/out/ckpt-colqwen2-qwen2vl-2b-...-ragvl-int8
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

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent  # results.py and the benchmarks whose helpers an experiment reuses
sys.path.insert(0, str(BENCH))
from results import Run  # noqa: E402

NAME = "profile_embed"


def part(node: str, op: str) -> str:
    """The model part a graph node belongs to, from the names the converter gives its nodes."""
    if "patch_embed" in node:
        return "vision: patch embedding"
    if node.startswith("/visual/merger"):
        return "vision: merger"
    if node.startswith("/visual/blocks"):
        if "/attn" in node:
            if op in ("MultiHeadAttention", "Softmax") or "/qk" in node or "/pv" in node:
                return "vision: attention kernel"
            if op in ("MatMulNBits", "MatMulInteger", "MatMul", "Gemm", "FusedMatMul") or "qkv" in node or "proj" in node:
                return "vision: attention projections"
            return "vision: rotary, reshapes"
        if "/mlp" in node:
            return "vision: MLP"
        return "vision: norms, residuals"
    if node.startswith("/visual"):
        return "vision: rotary tables"
    if node.startswith("/model/layers"):
        if "/self_attn" in node:
            return "language model: attention"
        if "/mlp" in node:
            return "language model: MLP"
        return "language model: norms, residuals"
    if "custom_text_proj" in node or "colbert" in node or "/proj" in node:
        return "projection (128-d)"
    if node.startswith("/model"):
        return "language model: embedding, rotary, mask, final norm"
    return "other"


def profile(folder: str, threads: int) -> dict:
    from bench_colqwen2 import render_pages
    from ragvl.models.runtime.colqwen2 import ColQwen2
    from ragvl.models.runtime.session import create_session, session_kernel

    m = ColQwen2(folder, threads=threads)
    tmp = tempfile.mkdtemp()
    for g in ("vision", "embed", "encoder"):
        path, preoptimized = m.graph_path(g)
        # as ragvl opens it (the int8 kernel this CPU runs), with the profiler on
        m._sessions[g] = create_session(path, threads=threads, optimize=not preoptimized,
                                        profile=os.path.join(tmp, g))
    pages = [image for _, _, _, image in render_pages()][:2]
    m.embed_images(pages[:1])  # warm-up: first-run allocations stay out of the figures
    # One profile per session covers both pages: only the events of its last run (the second
    # page) are counted.
    t0 = time.perf_counter()
    m.embed_images(pages[1:2])
    wall = time.perf_counter() - t0
    by_part: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for g, s in m._sessions.items():
        events = json.loads(Path(s.end_profiling()).read_text())
        runs = [e for e in events if e.get("name") == "model_run"]
        start = runs[-1]["ts"] if runs else 0  # the last run: the measured page
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
                continue
            node = e["name"][:-len("_kernel_time")]
            op = e.get("args", {}).get("op_name", "?")
            by_part[part(node, op)] += e["dur"] / 1e6
            by_op[op] += e["dur"] / 1e6
    kernels = sorted({k for k in map(session_kernel, m._sessions.values()) if k})
    return {"folder": folder, "dtype": m.manifest["dtype"], "int8_kernel": ", ".join(kernels) or None,
            "threads": threads, "wall_s": round(wall, 3),
            "by_part_s": dict(sorted(by_part.items(), key=lambda x: -x[1])),
            "by_op_s": dict(sorted(by_op.items(), key=lambda x: -x[1]))}


def tables(r: dict) -> dict[str, str]:
    """{table name: Markdown}: time by model part, and by operator (the 12 costliest)."""
    total = sum(r["by_part_s"].values())
    share = lambda rows: [f"| {k} | {v:.2f} | {v / total:.0%} |" for k, v in rows]  # noqa: E731
    kernel = f" (int8 kernel {r['int8_kernel']})" if r.get("int8_kernel") else ""
    parts = [f"ColQwen2 {r['dtype']}{kernel}, one sample page. Node time {total:.2f} s of {r['wall_s']:.2f} s wall.", "",
             "| part | s | share |", "|---|---|---|", *share(r["by_part_s"].items())]
    ops = ["| operator | s | share |", "|---|---|---|", *share(list(r["by_op_s"].items())[:12])]
    return {"parts": "\n".join(parts), "ops": "\n".join(ops)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embedder", type=Path, required=True, help="a converted ColQwen2 model folder")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args(argv)
    run = Run(Path(__file__).name, NAME, argv, threads=args.threads)
    r = profile(str(args.embedder), args.threads)
    for table, md in tables(r).items():
        run.add(table, md)
    run.save(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
