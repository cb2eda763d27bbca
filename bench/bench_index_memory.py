"""Peak memory of `ragvl index` against a document's page count, and resuming a killed run.

    python bench/bench_index_memory.py                 # 100 and 1,000 pages (minutes on 2 cores)
    python bench/bench_index_memory.py --pages 50 200  # quick

A tiny random ColQwen2 (testkit/tiny_colqwen2.py, converted by ragvl; needs torch to build the
checkpoint) embeds one PDF of N pages drawn with PyMuPDF (testkit/tiny_pdfs.py). Each run is a
fresh `python -m ragvl.cli index` process; its peak RSS is the kernel's (RUSAGE_CHILDREN
ru_maxrss of that child alone). Pages are committed in batches of 32 (indexer.BATCH_PAGES), so
the peak should not grow with N. Then the largest document is indexed again into a new folder,
the process is killed (SIGKILL) half-way, and a second run resumes: the pages it had to embed
are counted from its summary. Writes bench/out/results_index_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "testkit")]


def run_index(pdf: Path, db: Path, embedder: Path, dpi: int) -> dict:
    """One `ragvl index` process: (seconds, peak RSS MB, summary)."""
    t0 = time.perf_counter()
    # A fresh helper process per measurement, so RUSAGE_CHILDREN's max is this child's alone.
    code = ("import resource, subprocess, sys, json\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr[-2000:], "
            "'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")
    r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "ragvl.cli", "index", str(pdf),
                        "--db", str(db), "--embedder", str(embedder), "--dpi", str(dpi), "-q", "--json"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    res = json.loads(r.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"index failed: {res['err']}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(res["rss_kb"] / 1024, 1),
            "summary": json.loads(res["out"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--dpi", type=int, default=120, help="render dpi (lower: a quicker run)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    from tiny_colqwen2 import make_colqwen2_checkpoint
    from tiny_pdfs import make_pdf

    from ragvl.models.converter.convert import convert

    work = args.work or Path(tempfile.mkdtemp(prefix="ragvl-bench-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    emb = work / "embedder"
    if not (emb / "ragvl.json").exists():
        convert(make_colqwen2_checkpoint(work / "ckpt", variant="a"), emb, log=lambda m: None)
    rows = []
    for n in args.pages:
        pdf = work / f"doc{n}.pdf"
        if not pdf.exists():
            make_pdf(pdf, n, seed=n)
        db = work / f"db{n}"
        subprocess.run(["rm", "-rf", str(db)], check=True)
        print(f"indexing {n} pages ...", file=sys.stderr, flush=True)
        r = run_index(pdf, db, emb, args.dpi)
        rows.append({"pages": n, "seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"],
                     "embedded": r["summary"]["pages"], "db_mb": round(sum(f.stat().st_size for f in db.rglob("*")
                                                                              if f.is_file()) / 1e6, 1)})
        print(rows[-1], file=sys.stderr, flush=True)

    # Kill half-way through the largest document, then resume.
    n = max(args.pages)
    pdf, db = work / f"doc{n}.pdf", work / "db-killed"
    subprocess.run(["rm", "-rf", str(db)], check=True)
    full = next(r["seconds"] for r in rows if r["pages"] == n)
    p = subprocess.Popen([sys.executable, "-m", "ragvl.cli", "index", str(pdf), "--db", str(db), "--embedder",
                          str(emb), "--dpi", str(args.dpi), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(full * 0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    resumed = run_index(pdf, db, emb, args.dpi)
    resume = {"pages": n, "killed_after_s": round(full * 0.5, 1), "pages_embedded_on_resume":
              resumed["summary"]["pages"], "resume_peak_rss_mb": resumed["peak_rss_mb"]}
    print(resume, file=sys.stderr)

    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    result = {"runs": rows, "resume": resume, "batch_pages": 32, "machine_cpus": os.cpu_count(),
              "dpi": args.dpi,
              "note": "tiny random ColQwen2 (testkit/tiny_colqwen2.py variant a)"}
    (out / "results_index_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| pages | seconds | peak RSS (MB) | index size (MB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['pages']} | {r['seconds']} | {r['peak_rss_mb']} | {r['db_mb']} |")
    print(f"\nKilled after {resume['killed_after_s']} s of a {n}-page run; the next run embedded "
          f"{resume['pages_embedded_on_resume']} of {n} pages (peak RSS {resume['resume_peak_rss_mb']} MB).")


if __name__ == "__main__":
    main()
