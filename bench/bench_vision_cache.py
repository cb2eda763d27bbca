#!/usr/bin/env python
"""Answers in seconds: time to first token with the vision features stored at indexing, follow-ups, start-up.

One run, per weight format (each in its own child process):

1. TTFT of a 1-page and a 3-page answer (bench_ask.py's cases and prompt), three ways:
   - from scratch: the vision tower encodes every page (what `ragvl ask --no-vision-cache` does);
   - from stored features: each page's vision output rounded to float16, as `ragvl index` stores
     it, spliced in as ImageFeatures (what `ragvl ask` does when the towers are identical);
   - a follow-up ("And in Q4?") after an 8-token answer from stored features: the kept KV cache is
     extended with the new turn's tokens only.
   Targets (issue 10): stored-feature TTFT <= 1.15x its prefill-only time; follow-up TTFT <= the
   prefill time of its new tokens + 10%. The first token from stored features is compared with
   the one from scratch.
2. The store's cost: bytes per page and the time of writing one page's features (LanceDB).
3. Start-up of `ragvl search`'s embedder (ColQwen2): opening the model and embedding one query in
   a fresh process, step by step: every graph opened with graph optimizations at load (the first
   release, emulated), lazy sessions, onnxruntime's saved optimized graphs, weights left
   memory-mapped (warm page cache).
4. `ragvl search` end to end and `ragvl ask` up to its prefill, each a new process, before (LanceDB
   opened for every search, weights prepacked; emulated) and now (the search snapshot, mapped
   weights), cold (page cache emptied first, where the kernel allows) and warm. Target (issue
   10): `ragvl search` <= 3 s warm.

5. With `--weights` (and nothing else): one copy of the weights. Per model (the answerer in each
   of --dtypes, the embedder) and layout of its onnxruntime-optimized copies: none (optimized at
   load), before (each copy with all its weights: what converters wrote before) and now (the
   copies read the plain graphs' weights): the folder's size and the time a fresh process takes
   to open every graph, cold (the folder's files dropped from the page cache) and warm.

The machine is shared: each table records the load average at start and end. Prefer the ratios.

    python bench/bench_vision_cache.py --config tiny             # seconds: checks the harness
    python bench/bench_vision_cache.py --dtypes int8 --runs 1    # the 2B shape (minutes)
    python bench/bench_vision_cache.py --weights                 # the 2B folders' sizes and opening
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "testkit"))

from bench_ask import _case_pages, answer_cases  # noqa: E402
from bench_qwen2vl import (DEFAULT_MAX_PIXELS, SHARD_BYTES, child_main, default_init_std, ensure_checkpoint,  # noqa: E402
                           ensure_converted, gb, log, proc_status_kb, resolve_spec, run_child)
from results import Run, default_results_dir  # noqa: E402

NAME = "vision_cache"     # TTFT and the store (results/vision_cache.md)
STARTUP = "startup"       # start-up (results/startup.md): its own file, so it can be rerun alone
WEIGHTS = "weights"       # one copy of the weights (results/weights.md, `--weights`)
FOLLOW_UP = "And in Q4?"


# =============================================================================================
# Child tasks
# =============================================================================================


def task_ttft(folder: str, threads: int, runs: int, cases: list[dict]) -> dict:
    import io

    import numpy as np
    from PIL import Image

    from ragvl.answer.answering import ANSWER_MAX_PIXELS
    from ragvl.answer.prompt import answer_messages
    from ragvl.store.vision_cache import Producer, VisionCache
    from ragvl.models.runtime.generation import GenerationSettings
    from ragvl.models.runtime.qwen2vl import Qwen2VL
    from ragvl.models.runtime.vlm import ImageFeatures

    t0 = time.perf_counter()
    m = Qwen2VL(folder, threads=threads).open()
    load_s = time.perf_counter() - t0
    pages = _case_pages(cases)
    one = GenerationSettings(max_new_tokens=1, ignore_eos=True)
    out: dict[str, Any] = {"load_s": round(load_s, 3), "dtype": m.manifest["dtype"], "cases": {}}
    recorded: list = []
    vision_features = m.vision_features

    def recording(pv, grids):  # keeps each page's vision output, as ColQwen2's indexing hands it over
        f = vision_features(pv, grids)
        recorded.append(ImageFeatures(f.astype(np.float16), tuple(grids[0])))
        return f

    m.vision_features = recording
    for c in cases:
        rec: dict[str, list] = {"scratch": [], "stored": [], "follow_up": []}
        for r in range(runs):
            paths = [(pages[(f, p)][0], p) for f, p in c["pages"]]
            images = [Image.open(io.BytesIO(pages[(f, p)][1])) for f, p in c["pages"]]
            messages = answer_messages(c["question"], paths)
            recorded.clear()
            a = m.generate(messages, images, one, max_pixels=ANSWER_MAX_PIXELS).consume()
            feats = list(recorded)
            b = m.generate(messages, feats, GenerationSettings(max_new_tokens=8, ignore_eos=True),
                           max_pixels=ANSWER_MAX_PIXELS).consume()
            f = m.follow_up(b.conversation, FOLLOW_UP, one).consume()
            assert f.continued
            for key, g in (("scratch", a), ("stored", b), ("follow_up", f)):
                t = g.timings
                assert t.load_s == 0, "a session opened inside a timed run"  # open() above: no row includes one
                rec[key].append({"vision_s": round(t.vision_s, 4), "prefill_s": round(t.prefill_s, 4),
                                 "ttft_s": round(t.first_token_s, 4), "prompt_tokens": g.prompt_tokens,
                                 "first_token": g.token_ids[:1]})
            rec["follow_up"][-1]["new_tokens"] = f.prompt_tokens - b.conversation.cached
            log(f"  {c['name']} run {r + 1}: scratch TTFT {a.timings.first_token_s:.2f}s "
                f"(vision {a.timings.vision_s:.2f}s), stored TTFT {b.timings.first_token_s:.2f}s "
                f"(prefill {b.timings.prefill_s:.2f}s), follow-up TTFT {f.timings.first_token_s:.3f}s")
        best = {k: min(v, key=lambda x: x["ttft_s"]) for k, v in rec.items()}
        best["same_first_token"] = best["scratch"]["first_token"] == best["stored"]["first_token"]
        out["cases"][c["name"]] = best
    # The store: one page's features written to a LanceDB vision table.
    with tempfile.TemporaryDirectory() as d:
        vs = VisionCache(d)
        t = time.perf_counter()
        vs.put([("page-1", recorded[0])], Producer(m.vision_hash, "key", ANSWER_MAX_PIXELS))
        out["store"] = {"put_one_page_s": round(time.perf_counter() - t, 4), "bytes_per_page": vs.total_bytes(),
                        "tokens_per_page": int(recorded[0].features.shape[0])}
    out["rss_gb"] = gb(proc_status_kb("VmRSS"))
    return out


def task_startup(folder: str, threads: int, mode: str) -> dict:
    """Open the embedder and embed one query; `mode`: eager (main's: every graph, optimizations at
    load), lazy (only the sessions search needs), or mapped (lazy, weights left memory-mapped:
    `prepack=False`, what the CLI's search and ask use)."""
    t0 = time.perf_counter()
    from ragvl.models.runtime.colqwen2 import ColQwen2
    from ragvl.models.runtime.session import create_session

    t_import = time.perf_counter() - t0
    m = ColQwen2(folder, threads=threads, prepack=mode != "mapped")
    if mode == "eager":
        for g in ("vision", "embed", "encoder"):  # main's ColQwen2.__init__, plain graphs, optimizing
            m._sessions[g] = create_session(m.folder / m.manifest["graphs"][g], m.device, threads, optimize=True)
    t1 = time.perf_counter()
    m.embed_queries([QUERY])
    t2 = time.perf_counter()
    return {"mode": mode, "import_s": round(t_import, 3), "open_and_query_s": round(t2 - t0, 3),
            "query_s": round(t2 - t1, 3), "opened": m.opened, "private_gb": gb(proc_status_kb("RssAnon"))}


def task_open(folder: str, threads: int, kind: str) -> dict:
    """Open every graph of a model folder (the manifest already verified: its hashes are cached)."""
    from ragvl.models.runtime.vlm import VisionLanguageModel

    m = VisionLanguageModel(folder, kind, threads=threads)
    t0 = time.perf_counter()
    m.open()
    return {"open_s": round(time.perf_counter() - t0, 3), "graphs": m.loaded,
            "rss_gb": gb(proc_status_kb("VmRSS"))}


TASKS = {"ttft": task_ttft, "startup": task_startup, "open": task_open}

QUERY = "What was the revenue in 2023?"


def synthetic_index(db: Path, folder: Path, pages: int = 20) -> Path:
    """A small index recorded as built by the embedder `folder`, with random vectors (what
    `ragvl search` reads; nothing is embedded), so that a search measures start-up, not the index."""
    import hashlib

    import numpy as np

    from ragvl.store.schema import K_EMBEDDER
    from ragvl.store.page_store import PageRow, PageStore
    from ragvl.models.runtime.colqwen2 import ColQwen2

    m = ColQwen2(folder)                                   # opens no session
    if (db / "pages.lance").exists():
        if PageStore(db).embedder == m.id:
            return db
        shutil.rmtree(db)                                  # the embedder was converted again
    store = PageStore(db, create=True)
    store.write_meta(**{K_EMBEDDER: {"id": m.id, "folder": str(folder.resolve()), "max_pixels": m.max_pixels}})
    rng = np.random.default_rng(0)
    rows = []
    for p in range(pages):
        v = rng.standard_normal((750, 128)).astype(np.float32)
        rows.append(PageRow(p + 1, 1, 1, b"", (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)))
    store.put_document("synthetic.pdf", hashlib.sha256(b"synthetic").hexdigest(), rows, m.id)
    return db


def _drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only; False where the kernel does not allow it)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# A new process, as a user starts it: `ragvl search` as before this change (the search snapshot
# unused, so LanceDB is opened; the embedder's weights prepacked at load), or as it is now.
_SEARCH = """
import runpy, sys
if sys.argv[1] == "before":
    import ragvl.api as api
    api.read_snapshot = lambda db: None
    init = api.Index.__init__
    api.Index.__init__ = lambda self, *a, **k: init(self, *a, **{**k, "quick_start": False})
sys.argv = ["ragvl", "search", *sys.argv[2:]]
runpy.run_module("ragvl.cli", run_name="__main__")
"""

# `ragvl ask` up to its prefill in a new process, as Index.ask starts: retrieval done (the full
# path, which ask takes to read the page images) and the answer model's prompt sessions open;
# before: one after the other, the embedder's weights prepacked; now: the sessions open while
# the pages are retrieved, the embedder's weights mapped.
_ASK_START = """
import sys
from ragvl.api import Index
from ragvl.retrieval.filters import Filters
now = sys.argv[1] == "after"
idx = Index(sys.argv[2], answerer=sys.argv[3], quick_start=now, log=lambda m: None)
if now:
    idx.answerer.open_in_background("embed", "decoder")
assert idx._rank(sys.argv[4], 3, "visual", Filters(), snapshot=False)[0]
idx.answerer.open("embed", "decoder")
"""


def _timed(args: list[str]) -> float:
    import subprocess

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return time.perf_counter() - t0


def start_end_to_end(db: Path, answerer: Path | None, runs: int = 3) -> dict:
    """`ragvl search`, and `ragvl ask` up to its prefill, before and after, each as a new process:
    cold (page cache emptied first, where allowed) and warm (best of `runs` after it)."""
    _timed([_SEARCH, "after", QUERY, "--db", str(db), "-k", "3"])   # builds the search cache
    cmds = {("search", w): [_SEARCH, w, QUERY, "--db", str(db), "-k", "3"] for w in ("before", "after")}
    if answerer is not None:
        cmds.update({("ask", w): [_ASK_START, w, str(db), str(answerer), QUERY] for w in ("before", "after")})
    out = {}
    for (cmd, when), args in cmds.items():
        log(f"  {cmd} start-up, {when}")
        cold = _timed(args) if _drop_page_cache() else None
        out[f"{cmd}_{when}"] = {"cold_s": None if cold is None else round(cold, 2),
                                "warm_s": round(min(_timed(args) for _ in range(runs)), 2)}
    return out


# =============================================================================================
# main
# =============================================================================================


# The layouts of a converted folder's onnxruntime-optimized copies (results/weights.md).
LAYOUTS = {"plain": "no optimized copies (optimized at load)",
           "full": "before: each optimized copy with all its weights",
           "shared": "now: the optimized copies read the plain graphs' weights"}


def layout_of(manifest: dict) -> str:
    """Which of LAYOUTS a manifest describes: converters that record the CPU share the weights."""
    opt = manifest.get("optimized") or {}
    return "plain" if not opt.get("graphs") else "shared" if "onnxruntime" in opt else "full"


def with_layout(folder: Path, work: Path, layout: str) -> Path:
    """`folder` with its optimized copies laid out as `layout` (LAYOUTS), valid on this machine:
    the folder itself when it already is so, else a folder in `work` of hard links to its plain
    graphs and side files, with its own optimized copies and manifest (nothing is written into
    `folder`; one built before is reused while its plain graphs are still `folder`'s)."""
    from ragvl.models.contract import optimized_status
    from ragvl.models.contract.manifest import MANIFEST, write_manifest
    from ragvl.models.contract.names import optimized_graph
    from ragvl.models.converter.optimize import PROVIDER, key, record, save_optimized

    m = json.loads((folder / MANIFEST).read_text())
    if layout_of(m) == layout and (layout == "plain" or optimized_status(m, PROVIDER)[0]):
        return folder
    out = work / f"{folder.name}-{layout}"
    data = [g + ".data" for g in m["graphs"].values()]
    if (out / MANIFEST).exists() and all((out / d).stat().st_ino == (folder / d).stat().st_ino for d in data):
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    saved = set((m.get("optimized") or {}).get("graphs", {}).values())
    for f in folder.iterdir():
        if f.is_file() and f.name != MANIFEST and not any(f.name in (o, o + ".data") for o in saved):
            os.link(f, out / f.name)
    m.pop("files")
    m["optimized"] = None
    if layout != "plain":
        for g, file in m["graphs"].items():
            log(f"  optimizing {g} ({layout})")
            save_optimized(out / file, share=layout == "shared")
        graphs = {g: optimized_graph(f) for g, f in m["graphs"].items()}
        m["optimized"] = {**record(), "graphs": graphs} if layout == "shared" else {"key": key(), "graphs": graphs}
    write_manifest(out, m)
    return out


def folder_bytes(folder: Path) -> int:
    """The bytes of a folder's files, each inode counted once."""
    seen = {}
    for f in folder.iterdir():
        if f.is_file():
            st = f.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def _evict(folder: Path) -> bool:
    """Drop `folder`'s files from the page cache (no root needed, other files stay cached); False
    where the kernel cannot (no posix_fadvise, or a tmpfs: its pages are the files)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()] \
        if Path("/proc/mounts").exists() else []
    real = str(folder.resolve())
    fs = max((m for m in mounts if real == m[1] or real.startswith(m[1].rstrip("/") + "/")),
             key=lambda m: len(m[1]), default=None)
    if fs is not None and fs[2] in ("tmpfs", "ramfs"):
        return False
    os.sync()
    for f in folder.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def weights_once(models: dict[str, tuple[Path, str]], work: Path, threads: int, runs: int) -> dict:
    """Per model and layout (LAYOUTS): the folder's size and the time a fresh process takes to open
    every graph, cold (the folder's files dropped from the page cache first) and warm (best of
    `runs` after one that fills it)."""
    out: dict[str, dict] = {}
    for name, (folder, kind) in models.items():
        for layout in LAYOUTS:
            f = with_layout(folder, work, layout)
            args = {"folder": str(f), "threads": threads, "kind": kind}
            log(f"weights: {name}, {layout} ({f.name})")
            cold = run_child("open", args, work, script=__file__) if _evict(f) else None
            warm = [run_child("open", args, work, script=__file__) for _ in range(runs + 1)][1:]
            if (cold and "error" in cold) or any("error" in w for w in warm):
                out[f"{name}, {layout}"] = {"error": (cold or {}).get("error") or warm[0].get("error")}
                continue
            best = min(warm, key=lambda w: w["open_s"])
            out[f"{name}, {layout}"] = {
                "model": name, "layout": layout, "bytes": folder_bytes(f),
                "data_bytes": sum(p.stat().st_size for p in f.glob("*.data")),
                "own_opt_bytes": sum(p.stat().st_size for p in f.glob("*.opt.onnx.data")),
                "cold_open_s": None if cold is None else cold["open_s"], "warm_open_s": best["open_s"],
                "graphs": best["graphs"]}
    return out


def fmt(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def tables(res: dict) -> dict[str, str]:
    """{table name: Markdown} for the results files (Run adds when, where and how each was measured):
    "ttft" and "store" (when TTFT was measured), "startup" (when the start-up was)."""
    out = {}
    lines = [f"The {res['spec']} shape, best of --runs {res['runs']}.", "",
             "| format, answer | prompt tokens | from scratch: vision + prefill (s) | TTFT (s) | stored features: "
             "TTFT (s) | its prefill (s) | TTFT / prefill (target <= 1.15) | speed-up | same first token | "
             "follow-up: new tokens | TTFT (s) | TTFT / its prefill (target <= 1.10) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dt, e in res["ttft"].items():
        if "error" in e:
            lines.append(f"| {dt} | error: {e['error']} |" + " |" * 10)
            continue
        for name, c in e["cases"].items():
            s, st, f = c["scratch"], c["stored"], c["follow_up"]
            lines.append(
                f"| {dt}, {name} | {s['prompt_tokens']} | {s['vision_s']:.2f} + {s['prefill_s']:.2f} | "
                f"{s['ttft_s']:.2f} | {st['ttft_s']:.2f} | {st['prefill_s']:.2f} | "
                f"{st['ttft_s'] / st['prefill_s']:.3f} | {s['ttft_s'] / st['ttft_s']:.2f}x | "
                f"{'yes' if c['same_first_token'] else 'NO'} | {f['new_tokens']} | {f['ttft_s']:.3f} | "
                f"{f['ttft_s'] / f['prefill_s']:.3f} |")
    if res["ttft"]:
        out["ttft"] = "\n".join(lines)
    store = next((e["store"] for e in res["ttft"].values() if "store" in e), None)
    if store:
        out["store"] = "\n".join([
                  "| stored vision features | value |", "|---|---|",
                  f"| visual tokens per page | {store['tokens_per_page']} |",
                  f"| bytes per page (float16) | {store['bytes_per_page']:,} |",
                  f"| pages in the default 4 GiB cap | {4 * 1024 ** 3 // store['bytes_per_page']:,} |",
                  f"| writing one page's features (s) | {store['put_one_page_s']:.3f} |"])
    if res.get("startup"):
        lines = ["| `ragvl search` embedder start (fresh process, warm page cache) | sessions opened | "
                  "import (s) | open + embed one query (s) | private memory (GB) |", "|---|---|---|---|---|"]
        for label, r in res["startup"].items():
            if "error" in r:
                lines.append(f"| {label} | error | | | |")
                continue
            lines.append(f"| {label} | {', '.join(r['opened'])} | {r['import_s']:.2f} | {r['open_and_query_s']:.2f} "
                         f"| {fmt(r.get('private_gb'))} |")
        e2e = res.get("start_e2e")
        if e2e:
            lines += ["", "| a new process, 20-page index, 2B int8 models | before: cold (s) | before: warm (s) "
                      "| now: cold (s) | now: warm (s) | warm, before / now | target (warm) |",
                      "|---|---|---|---|---|---|---|"]
            for cmd, label, target in (("search", "`ragvl search` end to end", "<= 3 s"),
                                       ("ask", "`ragvl ask` until its prefill starts", "")):
                b, a = e2e.get(f"{cmd}_before"), e2e.get(f"{cmd}_after")
                if b and a:
                    lines.append(f"| {label} | {fmt(b['cold_s'])} | {b['warm_s']:.2f} | {fmt(a['cold_s'])} | "
                                 f"{a['warm_s']:.2f} | {b['warm_s'] / a['warm_s']:.2f}x | {target} |")
            lines.append("\nBefore: LanceDB opened for every search, the embedder's weights prepacked at "
                         "load, `ask` opening its answer model after retrieval; now: a visual search "
                         "answered from the index's search snapshot (ragvl/retrieval/snapshot.py), the "
                         "embedder's weights left memory-mapped (`quick_start`), the answer model's "
                         "sessions opened while the pages are retrieved. Cold: the page cache emptied "
                         "first ('—': not allowed here). Warm: best of 3. Private memory: the process's "
                         "anonymous resident memory after the query (RssAnon); mapped weights are "
                         "shared page cache instead.")
        out["startup"] = "\n".join(lines)
    if res.get("weights"):
        lines = [f"The {res['spec']} shape: each model folder as converted, with its onnxruntime-optimized copies "
                 "laid out three ways.", "",
                 "| model, optimized copies | folder (MB) | of it, the copies' own data (MB) | cold: open every "
                 "graph (s) | warm (s) | graphs loaded |", "|---|---|---|---|---|---|"]
        for label, r in res["weights"].items():
            if "error" in r:
                lines.append(f"| {label} | error: {r['error']} | | | | |")
                continue
            saved = [g for g, c in r["graphs"].items() if c["optimized"]]
            loaded = f"{', '.join(saved)}: saved copies" if saved else "plain, optimized at load"
            lines.append(f"| {r['model']}, {LAYOUTS[r['layout']]} | {r['bytes'] / 1e6:,.1f} | "
                         f"{r['own_opt_bytes'] / 1e6:,.1f} | {fmt(r['cold_open_s'])} | {r['warm_open_s']:.2f} | "
                         f"{loaded} |")
        lines.append("\nA fresh process opens every graph of the folder (`VisionLanguageModel.open()`, weights "
                     "prepacked), after the manifest's hashes are verified (cached). Cold: the folder's files "
                     f"dropped from the page cache first (posix_fadvise; '—': not possible here); warm: best of "
                     f"{res.get('weights_runs', 3)} after one run that fills it. Folder: every file once (hard "
                     "links share bytes).")
        out["weights"] = "\n".join(lines)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="2b", choices=("2b", "tiny"))
    p.add_argument("--dtypes", default="int8,fp32", help="answer model weight formats, comma-separated")
    p.add_argument("--runs", type=int, default=1, help="answers per case (the best is kept)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--work", type=Path, default=HERE / "out", help="cache folder, shared with bench_qwen2vl.py")
    p.add_argument("--embedder", type=Path, default=None,
                   help="a converted ColQwen2 folder for the start-up rows (default: bench_colqwen2.py's int8 "
                        "conversion in --work, when there)")
    p.add_argument("--skip-ttft", action="store_true", help="only the start-up rows (results/startup.md)")
    p.add_argument("--weights", action="store_true", help="only the one-copy-of-the-weights rows "
                   "(results/weights.md): folder sizes and session open times per layout of the optimized copies")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-args", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.child_args), args.child_out, tasks=TASKS)
        return 0
    run = Run(Path(__file__).name, NAME, argv, threads=args.threads)
    spec_d = resolve_spec(args.config, None, default_init_std(args.config, None))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt, _ = ensure_checkpoint(work, spec_d, DEFAULT_MAX_PIXELS, 0, SHARD_BYTES)
    cases = answer_cases()
    res: dict[str, Any] = {"spec": spec_d["name"], "runs": args.runs, "ttft": {}, "startup": {}}
    emb = args.embedder or work / f"ckpt-colqwen2-{ckpt.name[len('ckpt-'):]}-ragvl-int8"
    if args.weights:
        weights_run = Run(Path(__file__).name, WEIGHTS, argv, threads=args.threads)
        models = {f"answerer {dt}": (ensure_converted(work, ckpt, dt, False)[0], "qwen2-vl")
                  for dt in [d.strip() for d in args.dtypes.split(",") if d.strip()]}
        if (emb / "ragvl.json").exists():
            models["embedder int8"] = (emb, "colqwen2")
        res["weights_runs"] = max(args.runs, 3)
        res["weights"] = weights_once(models, work, args.threads, res["weights_runs"])
        weights_run.add("once", tables(res)["weights"])
        weights_run.save({k: v for k, v in res.items() if k in ("spec", "weights", "weights_runs")},
                         default_results_dir(args.config, work))
        return 0
    if not args.skip_ttft:
        for dt in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
            folder, _ = ensure_converted(work, ckpt, dt, False)
            log(f"TTFT {dt} (load average {os.getloadavg()[0]:.2f})")
            res["ttft"][dt] = run_child("ttft", {"folder": str(folder), "threads": args.threads, "runs": args.runs,
                                                 "cases": cases}, work, script=__file__)
    start_run = Run(Path(__file__).name, STARTUP, argv, threads=args.threads)
    if (emb / "ragvl.json").exists():
        plain, opt = with_layout(emb, work, "plain"), with_layout(emb, work, "shared")
        for label, folder, mode in (("before: every graph, optimized at load", plain, "eager"),
                                    ("lazy sessions, optimized at load", plain, "lazy"),
                                    ("lazy sessions, saved optimized graphs", opt, "lazy"),
                                    ("... and weights memory-mapped (`prepack=False`: search, ask)", opt,
                                     "mapped")):
            log(f"start-up: {label}")
            run_child("startup", {"folder": str(folder), "threads": args.threads, "mode": mode}, work,
                      script=__file__)  # warms the page cache for this variant
            res["startup"][label] = run_child("startup", {"folder": str(folder), "threads": args.threads,
                                                          "mode": mode}, work, script=__file__)
        log("start-up: ragvl search and ask end to end")
        answerer = work / f"{ckpt.name}-ragvl-int8"
        res["start_e2e"] = start_end_to_end(synthetic_index(work / f"{opt.name}-search-db", opt),
                                            answerer if (answerer / "ragvl.json").exists() else None)
    else:
        log(f"start-up rows skipped: no embedder at {emb}")
    out = default_results_dir(args.config, work)
    for r, names, raw in ((run, ("ttft", "store"), ("spec", "runs", "ttft")),
                          (start_run, ("startup",), ("spec", "startup", "start_e2e"))):
        made = {t: md for t, md in tables(res).items() if t in names}
        if made:
            for table, md in made.items():
                r.add(table, md)
            r.save({k: v for k, v in res.items() if k in raw}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
