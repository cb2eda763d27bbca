"""Benchmark of distributed indexing (`ragvl index --workers`) and of a first search on s3://.

    python bench/bench_ray.py                       # tiny embedder, 36 pages (~3 min on 2 cores)
    python bench/bench_ray.py --embedder DIR --copies 1   # any converted embedder (e.g. the 2B shape)

Indexing throughput, each run a fresh `ragvl index` process on the same documents (the sample
PDFs, copied `--copies` times under different names), into a fresh index:

* one process, 2 threads (RAGVL_THREADS=2);
* Ray, 1 worker x 2 threads (`--workers 1 --threads-per-worker 2`, a fresh local Ray instance);
* Ray, 2 workers x 1 thread.

"wall s" is the whole command, start-up and model loads included (a single run's own summary time
leaves out its model load, a Ray run's includes starting Ray and the workers, so only wall time
compares). pages/min is pages / wall s. The load average is recorded before
and after each run: the machine is shared and its other work shows in the numbers.

First search against an s3:// index on a local S3 server (moto): a fresh process on a machine
without the search cache (what the cache must fetch from object storage), a second search in the
same process, and a fresh process with the cache present. Writes bench/results/ray.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "testkit")]
RESULTS = ROOT / "bench" / "results"

CONFIGS = [
    ("1 process x 2 threads", [], {"RAGVL_THREADS": "2"}),
    ("Ray 1 worker x 2 threads", ["--workers", "1", "--threads-per-worker", "2"], {}),
    ("Ray 2 workers x 1 thread", ["--workers", "2", "--threads-per-worker", "1"], {}),
]


def _env(extra: dict) -> dict:
    env = {**os.environ, **extra, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    return env


def tiny_embedder(tmp: Path) -> Path:
    from tiny_colqwen2 import make_colqwen2_checkpoint

    from ragvl.models.converter.convert import convert

    return convert(make_colqwen2_checkpoint(tmp / "ckpt", variant="a"), tmp / "colqwen2-tiny", log=lambda m: None)


def make_docs(tmp: Path, copies: int) -> tuple[Path, int]:
    import pymupdf

    docs, pages = tmp / "docs", 0
    for c in range(copies):
        for pdf in sorted((ROOT / "sample_pdfs").glob("*.pdf")):
            (docs / f"copy{c}").mkdir(parents=True, exist_ok=True)
            shutil.copy(pdf, docs / f"copy{c}" / pdf.name)
            with pymupdf.open(pdf) as d:
                pages += d.page_count
    return docs, pages


def run_index(docs: Path, db: str, embedder: Path, args: list[str], env: dict) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", db, "--embedder",
                        str(embedder), "-q", "--json", *args], capture_output=True, text=True, env=_env(env))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"ragvl index failed: {r.stderr[-2000:]}")
    s = json.loads(r.stdout)
    return {"wall_s": round(wall, 2), "run_s": s["seconds"], "pages": s["pages"],
            "pages_per_min": round(60 * s["pages"] / max(s["seconds"], 1e-3), 1), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2)}


SEARCH_CHILD = r"""
import json, sys, time
from ragvl.retrieval.page_search import PageSearch
from ragvl.store.page_store import PageStore
from ragvl.models.runtime.colqwen2 import ColQwen2
q1, q2 = ColQwen2(sys.argv[2]).embed_queries(["revenue by region", "incident escalation steps"])
t0 = time.perf_counter(); store = PageStore(sys.argv[1]); n = store.count()
t1 = time.perf_counter(); ps = PageSearch(store)
t2 = time.perf_counter(); ps.search(q1, 5)
t3 = time.perf_counter(); ps.search(q2, 5)
t4 = time.perf_counter()
print(json.dumps({"open_s": t1 - t0, "cache_s": t2 - t1, "first_s": t3 - t2, "next_s": t4 - t3}))
"""


def bench_s3_search(docs: Path, embedder: Path, tmp: Path) -> dict:
    import boto3

    from scale_helpers import s3_server

    with s3_server() as s3env:
        uri = "s3://bkt/bench"
        run_index(docs, uri, embedder, [], {"RAGVL_THREADS": "2"})
        c = boto3.client("s3")
        objs = [o for p in c.get_paginator("list_objects_v2").paginate(Bucket="bkt", Prefix="bench/")
                for o in p.get("Contents", [])]
        table_bytes = sum(o["Size"] for o in objs if o["Key"].startswith("bench/pages.lance/"))
        out = {"table_mb": round(table_bytes / 2**20, 2), "objects": len(objs)}
        cache = tmp / "cache-home"
        for label in ("cold cache", "warm cache"):
            r = subprocess.run([sys.executable, "-c", SEARCH_CHILD, uri, str(embedder)], capture_output=True,
                               text=True, env=_env({"RAGVL_CACHE": str(cache), **s3env}))
            if r.returncode != 0:
                raise SystemExit(r.stderr[-2000:])
            out[label] = {k: round(v, 3) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
        out["cache_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20, 2)
        local = tmp / "local-db"
        run_index(docs, str(local), embedder, [], {"RAGVL_THREADS": "2"})
        r = subprocess.run([sys.executable, "-c", SEARCH_CHILD, str(local), str(embedder)], capture_output=True,
                           text=True, env=_env({}))
        out["local first search"] = {k: round(v, 3) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"## Distributed indexing (Ray {res['ray_version']})", "",
             f"{m['cpus']} CPUs ({m['cpu']}), shared with other work; embedder: {res['embedder']}; "
             f"{res['pages']} pages ({res['docs']} sample PDFs x {res['copies']} copies).", "",
             "| configuration | pages | wall s | fixed s (a 1-page run) | pages/min | pages/min after "
             "start-up | load avg before / after |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in res["indexing"].items():
        lines.append(f"| {name} | {r['pages']} | {r['wall_s']:.1f} | {r['fixed_s']:.1f} | "
                     f"{r['pages_per_min']:.0f} | {r['pages_per_min_after_start']:.0f} | "
                     f"{r['load_before']} / {r['load_after']} |")
    lines += ["", "\"fixed s\" is the same command on a folder with one 1-page PDF: planning, the model load and, "
              "for Ray, starting a local instance and its worker processes. \"after start-up\" divides the other "
              "pages by wall s minus fixed s. With the tiny embedder a page costs milliseconds of model time, so "
              "these runs measure Ray's overhead and PDF rendering. Rendering is why 2 workers x 1 thread beat one "
              "process after start-up: one process renders its pages one at a time (MuPDF uses one thread), two "
              "workers render two at once. With a real embedder (tens of seconds a page on 2 cores, onnxruntime "
              "using every thread it is given) the fixed cost is amortised after a page or two and one machine's "
              "cores give about the same pages/min either way: Ray's gain is more machines.", ""]
    s = res["s3_search"]
    lines += ["## First search against an s3:// index (moto on 127.0.0.1)", "",
              f"pages table {s['table_mb']} MB in {s['objects']} objects; local search cache {s['cache_mb']} MB.", "",
              "| case | open the index s | vectors: fetch + cache, or load cache s | first query s | next query s |",
              "|---|---:|---:|---:|---:|",
              *[f"| {label} | {s[k]['open_s']:.3f} | {s[k]['cache_s']:.3f} | {s[k]['first_s']:.3f} | {s[k]['next_s']:.3f} |"
                for label, k in (("s3://, cold cache (a new machine)", "cold cache"),
                                 ("s3://, warm cache (new process)", "warm cache"),
                                 ("local folder, cold cache (new process)", "local first search"))],
              "",
              "\"open\" is mostly importing LanceDB in a fresh process (the same for a local folder). \"fetch + "
              "cache\" is what object storage adds: the vectors column of every page read from the bucket and "
              "written to the local cache; a warm cache is memory-mapped instead. The first query's time is the "
              "MaxSim engine's own start-up, the same for every kind of index. "
              "A cold first search reads the vectors column of every page from object storage into the local "
              "cache (under RAGVL_CACHE, keyed by the URI and index id); later searches, and later processes on "
              "that machine, memory-map the cache and only ask the store for its current version. On a real "
              "bucket, expect the cold read to take the table size divided by the bandwidth to the bucket.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", type=Path, help="a converted embedder folder [default: build the tiny one]")
    ap.add_argument("--copies", type=int, default=3, help="copies of the sample PDFs to index")
    ap.add_argument("--skip-s3", action="store_true")
    args = ap.parse_args(argv)
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ragvl-bench-ray-"))
    try:
        embedder = args.embedder or tiny_embedder(tmp)
        docs, pages = make_docs(tmp, args.copies)
        res = {"ray_version": ray.__version__, "embedder": "tiny (testkit/tiny_colqwen2.py)" if not args.embedder
               else str(args.embedder), "pages": pages, "docs": len(list((ROOT / "sample_pdfs").glob("*.pdf"))),
               "copies": args.copies, "indexing": {},
               "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}}
        from tiny_pdfs import make_pdf

        one = make_pdf(tmp / "one" / "one.pdf", 1).parent  # a run on one page: the fixed cost
        for name, flags, env in CONFIGS:
            print(f"{name} ...", file=sys.stderr, flush=True)
            i = len(res["indexing"])
            r = run_index(docs, str(tmp / f"db-{i}"), embedder, flags, env)
            r["fixed_s"] = run_index(one, str(tmp / f"one-{i}"), embedder, flags, env)["wall_s"]
            r["pages_per_min"] = round(60 * r["pages"] / r["wall_s"], 1)
            r["pages_per_min_after_start"] = round(60 * (r["pages"] - 1) / max(r["wall_s"] - r["fixed_s"], 1e-3), 1)
            res["indexing"][name] = r
            print(f"  {res['indexing'][name]}", file=sys.stderr, flush=True)
        if not args.skip_s3:
            print("s3 first search ...", file=sys.stderr, flush=True)
            res["s3_search"] = bench_s3_search(docs, embedder, tmp)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ray.json").write_text(json.dumps(res, indent=2) + "\n")
        if "s3_search" in res:
            md = markdown(res)
            (RESULTS / "ray.md").write_text("<!-- Written by bench/bench_ray.py; do not edit: rerun it and "
                                            "bench/assemble.py. -->\n\n<!-- table: ray.all -->\n" + md)
            print(md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
