#!/usr/bin/env python
"""int8 retrieval fidelity against fp32: does quantization keep the order of pages a query tells apart?

On random weights "top-5 identical" is either trivial or impossible, so this measures what int8
can actually break: the order of two pages under one query. For every int8 embedder given
(the rows kernel under every CPU kernel exact on this machine, `--kernels`, and MatMulNBits for
comparison), over `--pages` page images x `--queries` questions:

* the int8 score error: |int8 MaxSim - fp32 MaxSim| over every (query, page), max and p99;
* the pairs of pages whose fp32 scores differ by more than that max error under a query, and
  how many of them int8 ranks in the same order (a pair further apart than twice the error
  cannot flip; between one and two errors it may);
* the same over every pair, and identical top-5 / top-1 per query.

Pages: the sample_pdfs pages rendered at DEFAULT_DPI, then their top and bottom halves, centred
crops and left halves until `--pages` distinct images; questions: sample_pdfs/questions.json,
then reworded ones. Each engine embeds at `--max-pixels` (default 128 visual tokens a page, a
sixth of what indexing uses, to keep 3 engines x 50 pages within half an hour on 2 cores;
quantization error is per token).
Speed is not measured here (bench_colqwen2.py does), so the run may share the machine.
Writes bench/results/<cpu kind>/int8_fidelity.md and .json.

    python bench/experiments/fidelity_int8.py --fp32 bench/out/...-ragvl-fp32 --int8 bench/out/...-ragvl-int8 \\
        --int8 bench/out/...-ragvl-int8-nbits
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent  # results.py and the benchmarks whose helpers an experiment reuses
sys.path.insert(0, str(BENCH))
from results import Run  # noqa: E402

NAME = "int8_fidelity"
EXTRA_QUESTIONS = ["What is the total shown in the table?", "Which year had the highest value?",
                   "Who is the author of this report?", "What does the chart on this page compare?",
                   "List the main findings.", "What is the trend over time?", "Which region grew fastest?",
                   "What are the units of the figure?", "Summarise the conclusion.", "What is the date of the report?"]


def page_images(n: int) -> list:
    """n distinct page images: whole sample pages, then top/bottom halves, centred crops, left halves."""
    from bench_colqwen2 import render_pages

    whole = [image for _, _, _, image in render_pages()]
    out = list(whole)
    crops = [lambda im: im.crop((0, 0, im.width, im.height // 2)),
             lambda im: im.crop((0, im.height // 2, im.width, im.height)),
             lambda im: im.crop((im.width // 6, im.height // 6, im.width * 5 // 6, im.height * 5 // 6)),
             lambda im: im.crop((0, 0, im.width // 2, im.height))]
    for crop in crops:
        out += [crop(im) for im in whole]
    if len(out) < n:
        raise SystemExit(f"only {len(out)} page images available, asked for {n}")
    return out[:n]


def questions(n: int) -> list[str]:
    from bench_colqwen2 import sample_questions

    qs = [q["question"] for q in sample_questions()] + EXTRA_QUESTIONS
    return qs[:n]


def embed(folder: str, pages: list, queries: list[str], threads: int, max_pixels: int) -> dict:
    from ragvl.models.runtime.colqwen2 import ColQwen2

    m = ColQwen2(folder, threads=threads, max_pixels=max_pixels)
    p = [m.embed_images([im])[0] for im in pages]
    q = m.embed_queries(queries)
    wf = m.manifest.get("weight_format") or {}
    kernel = wf.get("encoder", wf).get("kernel", "nbits")  # older manifests: one flat MatMulNBits format
    del m
    gc.collect()
    return {"pages": p, "queries": q, "kernel": kernel}


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """ref, got: (Q, P) MaxSim scores of fp32 and int8."""
    err = np.abs(got - ref)
    eps = float(err.max())
    i, j = np.triu_indices(ref.shape[1], k=1)
    gap = ref[:, i] - ref[:, j]  # (Q, pairs)
    same = np.sign(gap) == np.sign(got[:, i] - got[:, j])
    beyond = np.abs(gap) > eps
    top = lambda s, k: np.argsort(-s, axis=1, kind="stable")[:, :k]  # noqa: E731
    return {"max_err": eps, "p99_err": float(np.percentile(err, 99)),
            "pairs": int(gap.size), "pairs_beyond": int(beyond.sum()), "kept_beyond": int(same[beyond].sum()),
            "pairs_beyond_2x": int((np.abs(gap) > 2 * eps).sum()),
            "kept_all": int(same.sum()),
            "top5_identical": float(np.mean(np.all(top(ref, 5) == top(got, 5), axis=1))),
            "top1_equal": float(np.mean(top(ref, 1)[:, 0] == top(got, 1)[:, 0]))}


def table(r: dict) -> str:
    rows = ["| int8 embedder (kernel) | max / p99 score error | pairs beyond the max error | kept order | "
            "all pairs kept | identical top-5 | top-1 equal | max score diff to the first rows kernel |",
            "|---|---|---|---|---|---|---|---|"]
    for name, c in r["engines"].items():
        kept = c["kept_beyond"] / max(c["pairs_beyond"], 1)
        first = c.get("diff_to_first_kernel")
        rows.append(f"| {name} | {c['max_err']:.4f} / {c['p99_err']:.4f} | {c['pairs_beyond']} of {c['pairs']} "
                    f"({c['pairs_beyond_2x']} beyond 2x) | {c['kept_beyond']} ({kept:.2%}) | "
                    f"{c['kept_all'] / c['pairs']:.2%} | {c['top5_identical']:.2f} | {c['top1_equal']:.2f} | "
                    f"{'—' if first is None else f'{first:.1e}'} |")
    return (f"{r['n_pages']} page images x {r['n_queries']} questions, at most {r['max_pixels'] // 784} visual "
            f"tokens a page; fp32 MaxSim scores span {r['score_spread']:.2f}. A pair is two pages under one "
            f"question; \"beyond the max error\": their fp32 scores differ by more than the largest int8 score "
            f"error of that embedder.\n\n" + "\n".join(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fp32", required=True, help="the fp32 ColQwen2 model folder (the reference)")
    p.add_argument("--int8", action="append", required=True, help="an int8 ColQwen2 model folder (repeatable)")
    p.add_argument("--pages", type=int, default=50)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--max-pixels", type=int, default=128 * 28 * 28)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--kernels", default=None,
                   help="the CPU kernels a rows-kernel folder is run with, comma-separated (default: every "
                        "kernel exact on this CPU, its own choice first)")
    args = p.parse_args(argv)
    from ragvl.models.contract import INT8_KERNELS, cpu_features, int8_kernel

    exact = [int8_kernel()] + [k for k in INT8_KERNELS if k != int8_kernel()
                               and (k != "u8s8" or cpu_features().int8_dot)]
    kernels = args.kernels.split(",") if args.kernels else exact
    run = Run(Path(__file__).name, NAME, argv, threads=args.threads)
    from ragvl.retrieval.maxsim import maxsim_scores

    pages, qs = page_images(args.pages), questions(args.queries)
    ref = embed(args.fp32, pages, qs, args.threads, args.max_pixels)
    score = lambda e: np.stack([maxsim_scores(q, e["pages"]) for q in e["queries"]])  # noqa: E731  (Q, P)
    ref_scores = score(ref)
    r = {"n_pages": len(pages), "n_queries": len(qs), "max_pixels": args.max_pixels,
         "score_spread": float(np.ptp(ref_scores)), "engines": {}}
    for folder in args.int8:
        name = Path(folder).name.split("-ragvl-")[-1]  # bench_colqwen2.py names its folders <ckpt>-ragvl-<dtype>
        first = None
        for k in kernels:
            os.environ["RAGVL_INT8_KERNEL"] = k  # read when the engine opens its sessions
            e = embed(folder, pages, qs, args.threads, args.max_pixels)
            if e["kernel"] != "rows":  # MatMulNBits: one kernel whatever the CPU
                r["engines"][f"{name} ({e['kernel']} kernel)"] = compare(ref_scores, score(e))
                break
            got = score(e)
            c = compare(ref_scores, got)
            first = got if first is None else first
            c["diff_to_first_kernel"] = float(np.abs(got - first).max())
            r["engines"][f"{name} (rows kernel, {k})"] = c
        os.environ.pop("RAGVL_INT8_KERNEL", None)
    run.add("main", table(r))
    run.save(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
