"""Benchmark of page search on synthetic ColQwen2-like multi-vectors (synthetic: see below).

    python bench/bench_search.py                       # scale 3k/10k/30k + incremental at 10k (~20-30 min, 2 cores)
    python bench/bench_search.py --pages 1000,3000 --inc-pages 2000 --queries 20   # quick

Three parts, each written into bench/results/search.md (Markdown) and search.json:

* scale: per size, the cache segment (float16 vectors on disk + centroid first stage) is built,
  then a separate search process memory-maps it and runs the queries through PageSearch.visual
  (the search users run, over a one-segment view): first stage + exact
  rescoring p50/p95, recall@5 against exact MaxSim, and that process's peak RSS (the vectors
  are NOT loaded: only the candidates' pages are read); exact search p50 for reference; build
  time and disk. Then an extrapolation to 100,000 pages from the measured growth (a power law
  fitted to the two largest sizes) where 100,000 was not run.
* incremental: a real LanceDB index of --inc-pages pages (written straight through the table,
  no model), its search cache built once, then one 20-page document added: what the next
  search pays for the cache (target < 1 s), and the top-5 equal to a full rebuild's.
* filters: search restricted to one document (20 pages) and to 10% of the documents: latency
  and whether the results equal exact MaxSim over the allowed pages.

The synthetic data (:func:`make_corpus`, :func:`make_queries`) is meant to behave like
ColQwen2's, which matters for the first stage's recall (the exact path does not care):

* all vectors share a common direction (ColQwen2 embeddings are not centred);
* 25-55% of a page's tokens are "background" (margins, blank patches): a few shared centres
  plus small noise, nearly identical on every page;
* the rest are "content": each page draws 1-4 topics (Zipf-popular, so some topics are on many
  pages), a vocabulary of 10-40 words of those topics, and each token is one of its words
  plus a low-rank "layout/context" offset (a shared 16-d subspace) plus isotropic noise;
* a query (20-30 tokens) is ~65% noisy copies of content tokens of one target page (a
  paraphrase: noise ~0.6 of a unit vector's norm) and ~35% generic tokens near the background
  (the query prefix / augmentation tokens, which match every page about equally).

Exact scores then rank the target first, then pages that share its topics/words (a dense band
of near-ties), then the rest - the regime where recall@5 of an approximate stage is hard.
tests/test_maxsim.py imports these generators, so tests and bench use the same data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ragvl.retrieval.maxsim import PageMatrix  # noqa: E402
from ragvl.retrieval.page_search import CANDIDATES  # noqa: E402 (what the search users run rescores)

DIM = 128


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_corpus(n_pages: int, *, seed: int = 0, dim: int = DIM, len_range=(600, 900),
                iso: float = 0.035, layout: float = 0.25, n_topics: int | None = None, out_path=None):
    """Synthetic pages: ``(X (N, dim) unit rows, offsets (n_pages + 1,) int64, meta)``.

    Page ``i`` is ``X[offsets[i]:offsets[i + 1]]``, background tokens first. Deterministic in
    `seed`. Generated in blocks of rows, so 10,000 pages take a few seconds. X is float32 in
    memory, or with `out_path` a float16 ``.npy`` memory map written there (large corpora).
    """
    rng = np.random.default_rng(seed)
    n_topics = n_topics or max(16, n_pages // 20)
    n_words, n_bg = 64, 8
    common = _unit(rng.standard_normal(dim))
    topics = _unit(rng.standard_normal((n_topics, dim)) + 0.8 * common)               # (T, dim)
    words = _unit(topics[:, None, :] + 0.7 * _unit(rng.standard_normal((n_topics, n_words, dim))))
    background = _unit(0.6 * rng.standard_normal((n_bg, dim)) + 1.2 * common)        # (n_bg, dim)
    table = np.concatenate([words.reshape(-1, dim), background])                      # token sources
    lay_basis = _unit(rng.standard_normal((16, dim)))                                 # (16, dim)
    topic_p = 1.0 / np.arange(1, n_topics + 1) ** 0.7
    topic_p /= topic_p.sum()

    lens = rng.integers(len_range[0], len_range[1] + 1, size=n_pages)
    offsets = np.zeros(n_pages + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    src = np.empty(offsets[-1], dtype=np.int32)          # row of `table` each token is drawn from
    is_bg = np.empty(offsets[-1], dtype=bool)
    for i in range(n_pages):                             # cheap per-page choices (indices only)
        n = int(lens[i])
        nb = int(n * rng.uniform(0.25, 0.55))
        tps = rng.choice(n_topics, size=int(rng.integers(1, 5)), replace=False, p=topic_p)
        nw = int(rng.integers(10, 40))
        vocab = rng.choice(tps, size=nw) * n_words + rng.integers(0, n_words, size=nw)
        a = offsets[i]
        src[a:a + nb] = len(words.reshape(-1, dim)) + rng.integers(0, n_bg, size=nb)
        src[a + nb:a + n] = vocab[rng.integers(0, nw, size=n - nb)]
        is_bg[a:a + nb] = True
        is_bg[a + nb:a + n] = False

    if out_path is None:
        X = np.empty((offsets[-1], dim), dtype=np.float32)
    else:
        X = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float16, shape=(int(offsets[-1]), dim))
    block = 1 << 18
    for r0 in range(0, len(X), block):                   # heavy part, vectorised per block
        r1 = min(r0 + block, len(X))
        x = table[src[r0:r1]]                                                        # (b, dim)
        bg = is_bg[r0:r1, None]
        ctx = (rng.standard_normal((r1 - r0, 16), dtype=np.float32) @ lay_basis) * (layout / 4)
        x += np.where(bg, 0.0, ctx)                      # layout/context only on content tokens
        x += rng.standard_normal((r1 - r0, dim), dtype=np.float32) * np.where(bg, 0.5 * iso, iso)
        X[r0:r1] = _unit(x)
    return X, offsets, {"background": background, "is_background": is_bg}


def make_queries(X: np.ndarray, offsets: np.ndarray, meta: dict, n_queries: int, *, seed: int = 1,
                 n_tokens=(20, 30), noise: float = 0.06):
    """Queries ``list of (nq, dim) float32`` and their target pages ``(n_queries,)``."""
    rng = np.random.default_rng(seed)
    dim = X.shape[1]
    generic = _unit(meta["background"][:4] + 0.6 * _unit(rng.standard_normal((4, dim))))
    is_bg = meta["is_background"]
    queries, targets = [], []
    for _ in range(n_queries):
        t = int(rng.integers(len(offsets) - 1))
        a, b = int(offsets[t]), int(offsets[t + 1])
        content_rows = a + np.flatnonzero(~is_bg[a:b])
        n = int(rng.integers(n_tokens[0], n_tokens[1] + 1))
        ng = int(round(n * 0.35))
        rows = X[rng.choice(content_rows, size=n - ng)]
        content = rows + noise * rng.standard_normal(rows.shape)
        gen = generic[rng.integers(0, 4, size=ng)] + 0.03 * rng.standard_normal((ng, dim))
        queries.append(_unit(np.concatenate([gen, content])))
        targets.append(t)
    return queries, np.array(targets)


# --------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pct(ms) -> dict:
    ms = np.asarray(ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "n": int(len(ms))}


def _recall(got, truth, k: int = 5) -> float:
    return float(np.mean([len(set(list(g)[:k]) & set(list(t)[:k])) / k for g, t in zip(got, truth)]))


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# The search process of the scale part: maps the segment and runs the queries through the search
# users run (PageSearch.visual over a one-segment view of it, as the search cache makes), reports
# its own RSS.
SEARCH_CHILD = r"""
import json, sys, time
import numpy as np
from ragvl.retrieval.cache import View
from ragvl.retrieval.maxsim import PageMatrix
from ragvl.retrieval.page_search import PageSearch
from ragvl.retrieval.segments import Segment
seg, qfile, k, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
z = np.load(qfile)
qs = [z[f"q{i}"] for i in range(len(z.files))]
m = PageMatrix.load(seg, mmap=True)
n = m.n_pages
view = View(0, [Segment("bench", m, np.arange(n).astype(str), {})], np.array([0, n]), np.ones(n, bool),
            np.arange(n), np.full(n, "doc"), np.full(n, "sha"), np.arange(1, n + 1, dtype=np.int32), {})
search = PageSearch(None, view=view)
for q in qs[:warm]:
    search.visual(q, k)
ts, out = [], []
for q in qs:
    t0 = time.perf_counter()
    hits = search.visual(q, k)
    ts.append((time.perf_counter() - t0) * 1e3)
    out.append([row for row, _ in hits])
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the (big) parent's RSS at fork.
st = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("VmHWM", "RssAnon", "RssFile"))}
print(json.dumps({"ms": ts, "top": out, "maxrss_kb": st["VmHWM"], "anon_kb": st["RssAnon"], "file_kb": st["RssFile"]}))
"""


def run_scale(n_pages: int, args, work: Path) -> dict:
    res: dict = {"n_pages": n_pages}
    t0 = time.perf_counter()
    seg = work / f"seg_{n_pages}"
    seg.mkdir(parents=True, exist_ok=True)
    X, offsets, meta = make_corpus(n_pages, seed=args.seed, out_path=seg / "vectors.npy")
    queries, targets = make_queries(X, offsets, meta, args.queries, seed=args.seed + 1)
    res["n_vectors"] = int(len(X))
    res["gen_s"] = time.perf_counter() - t0
    _log(f"[scale {n_pages}] generated {len(X):,} vectors in {res['gen_s']:.0f}s")
    X.flush()
    m = PageMatrix(np.load(seg / "vectors.npy", mmap_mode="r"), offsets)
    del X
    t0 = time.perf_counter()
    m.build_first_stage(n_centroids=args.centroids or None, seed=args.seed)
    res["build_stage_s"] = time.perf_counter() - t0
    res["n_centroids"] = m.stage.n_centroids
    m.save(seg)                                          # vectors stay where they are (in place)
    res["disk_bytes"] = _du(seg)
    res["stage_bytes"] = int(m.stage.nbytes)
    _log(f"[scale {n_pages}] first stage K={m.stage.n_centroids} in {res['build_stage_s']:.0f}s")

    ex_ms, exact = [], []
    for q in queries[:args.exact_queries]:
        t0 = time.perf_counter()
        exact.append(m.exact(q, 5)[0].tolist())
        ex_ms.append((time.perf_counter() - t0) * 1e3)
    res["exact"] = _pct(ex_ms[1:] or ex_ms)
    # The physical limit: exact MaxSim is at least one (query tokens x 128) @ (128 x vectors)
    # MatMul; at the machine's measured MatMul rate (main) that takes this long.
    nq = float(np.mean([len(q) for q in queries[:args.exact_queries]]))
    res["exact"]["gflop"] = 2 * nq * DIM * res["n_vectors"] / 1e9
    res["hit1_target"] = float(np.mean([e[0] == t for e, t in zip(exact, targets)]))
    _log(f"[scale {n_pages}] exact p50 {res['exact']['p50_ms']:.0f} ms")
    del m

    qfile = work / "queries.npz"
    np.savez(qfile, **{f"q{i}": q for i, q in enumerate(queries)})
    r = subprocess.run([sys.executable, "-c", SEARCH_CHILD, str(seg), str(qfile), "5", str(args.warmup)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    child = json.loads(r.stdout)
    res["staged"] = _pct(child["ms"])
    res["staged"]["recall5"] = _recall(child["top"][:len(exact)], exact)
    res["search_rss_mb"] = child["maxrss_kb"] / 1024     # peak, including the mapped vector pages it read
    res["search_anon_mb"] = child["anon_kb"] / 1024      # its own memory (heap): what must fit in RAM
    res["search_file_mb"] = child["file_kb"] / 1024      # mapped file pages (page cache: shared, evictable)
    _log(f"[scale {n_pages}] staged p50 {res['staged']['p50_ms']:.1f} ms, recall@5 {res['staged']['recall5']:.3f}, "
         f"search RSS {res['search_rss_mb']:.0f} MB")
    return res


def _bulk_index(db: Path, n_pages: int, args, doc_pages: int = 20):
    """A real LanceDB index of synthetic documents of `doc_pages` pages (no images, no model),
    written with the store's own row builder, 100 documents (2000 pages) a commit."""
    import pyarrow as pa

    from ragvl.store.page_store import DocFields, PageRow, PageStore

    store = PageStore(db, create=True)
    store.write_meta(embedder="synthetic")
    X, offsets, meta = make_corpus(n_pages, seed=args.seed)
    queries, _ = make_queries(X, offsets, meta, args.queries, seed=args.seed + 1)
    n_docs = n_pages // doc_pages
    for d0 in range(0, n_docs, 100):
        batch = []
        for d in range(d0, min(d0 + 100, n_docs)):
            fields = DocFields(hashlib.sha256(f"doc{d}".encode()).hexdigest(), doc_pages, "synthetic", 0)
            pages = [PageRow(p + 1, 1, 1, b"", X[offsets[i]:offsets[i + 1]])
                     for p, i in enumerate(range(d * doc_pages, (d + 1) * doc_pages))]
            batch.append(store.rows_table(f"doc{d}.pdf", fields, pages))
        store.table.add(pa.concat_tables(batch))
    return store, X, offsets, queries


def run_incremental(n_pages: int, args, work: Path) -> dict:
    from ragvl.retrieval.cache import open_view
    from ragvl.retrieval.page_search import PageSearch
    from ragvl.store.page_store import PageRow

    res: dict = {"n_pages": n_pages}
    t0 = time.perf_counter()
    store, X, offsets, queries = _bulk_index(work / "inc_db", n_pages, args)
    res["write_s"] = time.perf_counter() - t0
    _log(f"[incremental {n_pages}] LanceDB written in {res['write_s']:.0f}s")
    t0 = time.perf_counter()
    v0 = open_view(store)
    res["full_build_s"] = time.perf_counter() - t0
    _log(f"[incremental {n_pages}] full cache build {res['full_build_s']:.0f}s")

    rng = np.random.default_rng(args.seed + 7)
    new_pages = [PageRow(p + 1, 1, 1, b"", X[offsets[i]:offsets[i + 1]].astype(np.float32))
                 for p, i in enumerate(rng.choice(n_pages, size=20, replace=False))]
    store.put_document("added.pdf", hashlib.sha256(b"added").hexdigest(), new_pages, "synthetic")
    t0 = time.perf_counter()
    inc = PageSearch(store)                              # what the next search pays for the cache
    res["add_20_pages_s"] = time.perf_counter() - t0
    res["add_built"] = {k: v for k, v in inc.view.built.items() if k != "seconds"}
    _log(f"[incremental {n_pages}] +20 pages: {res['add_20_pages_s']:.2f}s ({res['add_built']})")
    t0 = time.perf_counter()
    fresh = PageSearch(store, cache_root=work / "fresh_cache")
    res["rebuild_s"] = time.perf_counter() - t0
    same = [[(h.path, h.page) for h in inc.search(q, 5)] == [(h.path, h.page) for h in fresh.search(q, 5)]
            for q in queries]
    res["same_top5_as_rebuild"] = float(np.mean(same))
    # Exhaustive (every page scored): the incremental cache and a rebuild must agree exactly; the
    # staged searches can differ only where a first stage (different centroids) misses a page.
    nq = queries[:args.exact_queries]
    ex_inc = [inc.visual(q, 5, exhaustive=True) for q in nq]
    res["exhaustive_equal_to_rebuild"] = float(np.mean([a == fresh.visual(q, 5, exhaustive=True)
                                                        for a, q in zip(ex_inc, nq)]))
    truth = [[r for r, _ in e] for e in ex_inc]
    res["staged_recall5_incremental"] = _recall([[r for r, _ in inc.visual(q, 5)] for q in nq], truth)
    res["staged_recall5_rebuild"] = _recall([[r for r, _ in fresh.visual(q, 5)] for q in nq], truth)
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        inc.search(q, 5)
        ms.append((time.perf_counter() - t0) * 1e3)
    res["search"] = _pct(ms[args.warmup:])

    # Filters: one document (20 pages), and 10% of the documents.
    rows = inc.rows()
    paths = rows["doc_path"].to_pylist()
    flat, offs = None, None
    for name, allowed in (("one document", np.array([p == "doc3.pdf" for p in paths])),
                          ("10% of documents", np.array([int(p[3:-4]) % 10 == 0 if p.startswith("doc") else False
                                                         for p in paths]))):
        ms, exact_ok = [], []
        idx = np.flatnonzero(allowed)
        for q in queries[:10]:
            t0 = time.perf_counter()
            hits = inc.search(q, 5, allowed=allowed)
            ms.append((time.perf_counter() - t0) * 1e3)
            if len(idx) <= 2000:                         # check against exact MaxSim of the allowed pages
                units = inc.view.row_unit[idx]
                sc = inc._score_units(q, np.sort(units))
                exact_ok.append([h.score for h in hits] == sorted(sc.tolist(), reverse=True)[:5])
        res[f"filter {name}"] = {**_pct(ms), "allowed_pages": int(len(idx)),
                                 "equals_exact": float(np.mean(exact_ok)) if exact_ok else None}
        _log(f"[filter {name}] p50 {res[f'filter {name}']['p50_ms']:.1f} ms")
    del v0, flat, offs
    return res


def matmul_gflops(cores: int) -> float:
    """The machine's fp32 MatMul rate at an exact search's shape: one chunk (25 query tokens x 128
    @ 128 x CHUNK_VECTORS), on one thread, measured alone in onnxruntime, times the cores (exact
    search runs one such MatMul per core). The physical limit the exact figures are set beside."""
    from machine import measure_gemm

    from ragvl.retrieval.maxsim.matrix import CHUNK_VECTORS

    one = measure_gemm({"kind": "bmm", "m": 25, "k": DIM, "n": CHUNK_VECTORS, "batch": 1}, 1, reps=20)
    return one["gflops"] * cores


def run_stage_only(n_pages: int, args, pairs_per_page: int = 200) -> dict:
    """The first stage alone at `n_pages` pages, without any vectors: K = default_n_centroids of
    750 vectors a page, random centroids and random inverted lists with `pairs_per_page`
    distinct centroids per page (the lists have the right lengths, not real content). What it
    measures is the first stage's cost and memory at a size whose vectors do not fit here; the
    exact rescoring of the 128 candidates after it does not depend on the index size."""
    from ragvl.retrieval.maxsim import CentroidStage, default_n_centroids

    rng = np.random.default_rng(args.seed)
    k = default_n_centroids(n_pages * 750)
    cent = _unit(rng.standard_normal((k, DIM)))
    codes = rng.integers(0, k, size=n_pages * pairs_per_page)
    pages = np.repeat(np.arange(n_pages, dtype=np.int32), pairs_per_page)
    order = np.argsort(codes, kind="stable")
    inv_offsets = np.searchsorted(codes[order], np.arange(k + 1)).astype(np.int64)
    stage = CentroidStage(cent, inv_offsets, pages[order], n_pages)
    del codes, pages, order
    ms = []
    for i in range(args.queries + args.warmup):
        q = _unit(rng.standard_normal((25, DIM)) + 2 * cent[rng.integers(0, k)])
        t0 = time.perf_counter()
        stage.candidates(q, CANDIDATES)
        ms.append((time.perf_counter() - t0) * 1e3)
    res = {"n_pages": n_pages, "n_centroids": k, "pairs_per_page": pairs_per_page,
           "stage_mb": stage.nbytes / 2**20, **_pct(ms[args.warmup:])}
    _log(f"[stage only {n_pages}] K={k} p50 {res['p50_ms']:.1f} ms, {res['stage_mb']:.0f} MB")
    return res


def extrapolate(sizes: list[dict], target: int = 100_000, stage_only: list[dict] | None = None) -> dict | None:
    """Estimates at `target` pages from the two largest sizes run.

    Exact search and disk grow linearly by construction (every vector is read). Build time and
    RSS: a power law fitted through the two sizes. Staged search: the measured time at the
    largest size, minus its first stage, plus the first stage measured at `target` without
    vectors (``--stage-only``), when that was run; else the fitted power law, its exponent
    clamped at 0 (on a loaded machine a smaller size can measure slower: noise, not speed-up).
    The search process's own memory likewise: the largest size's, plus the growth of the first
    stage measured at `target`. (Its mapped file pages are the candidates' pages it has read so
    far, in the page cache: they grow with the queries asked, not with what must fit in RAM.)
    """
    if len(sizes) < 2 or sizes[-1]["n_pages"] >= target:
        return None
    a, b = sizes[-2], sizes[-1]
    scale = target / b["n_pages"]

    def fit(get, *, exponent=None, floor=None):
        ya, yb = get(a), get(b)
        e = exponent if exponent is not None else np.log(yb / ya) / np.log(b["n_pages"] / a["n_pages"])
        e = max(e, floor) if floor is not None else e
        return float(yb * scale ** e), float(e)

    out = {"n_pages": target}
    for name, get, kw in (("exact_p50_ms", lambda r: r["exact"]["p50_ms"], {"exponent": 1.0}),
                          ("disk_gb", lambda r: r["disk_bytes"] / 1e9, {"exponent": 1.0}),
                          ("build_stage_s", lambda r: r["build_stage_s"], {}),
                          ("search_rss_mb", lambda r: r["search_rss_mb"], {}),
                          ("staged_p50_ms", lambda r: r["staged"]["p50_ms"], {"floor": 0.0})):
        out[name], out[name + "_exponent"] = fit(get, **kw)
    so = {r["n_pages"]: r for r in stage_only or []}
    if b["n_pages"] in so and target in so:
        out["staged_p50_ms"] = b["staged"]["p50_ms"] - so[b["n_pages"]]["p50_ms"] + so[target]["p50_ms"]
        out["staged_from_stage_only"] = True
        if "search_anon_mb" in b:
            out["search_anon_mb"] = b["search_anon_mb"] - so[b["n_pages"]]["stage_mb"] + so[target]["stage_mb"]
    return out


def _opt(d: dict, key: str, fmt: str) -> str:
    return "-" if d.get(key) is None else format(d[key], fmt)


def _rss(r: dict) -> str:
    if "search_anon_mb" not in r:
        return f"{r['search_rss_mb']:.0f}"
    return f"{r['search_rss_mb']:.0f} ({r['search_anon_mb']:.0f} + {r['search_file_mb']:.0f})"


def _rss_extrapolated(ex: dict) -> str:
    if "search_anon_mb" not in ex:
        return f"~{ex['search_rss_mb']:.0f}"
    return f"~{ex['search_anon_mb']:.0f} own memory + the mapped pages read (page cache)"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["## Search (`bench/bench_search.py`)", "",
             f"Synthetic ColQwen2-like vectors (600-900 128-d tokens a page, float16; see the script's docstring), "
             f"not real pages. Machine: {m['cpus']} CPUs, load average {m['loadavg']:.1f} at the start "
             "(other processes share these cores: latencies are upper bounds).", "",
             "### Scale: first stage (centroids) + exact rescoring of 128 candidates from a memory-mapped segment", "",
             "| pages | vectors | first stage build s (K) | staged p50 / p95 ms | recall@5 vs exact | exact p50 ms "
             "(x its MatMul floor) | search process RSS MB: peak (own memory + mapped file pages) | segment on disk GB |",
             "|---|---|---|---|---|---|---|---|"]
    peak = m.get("matmul_gflops")
    for r in results["sizes"]:
        ex = r["exact"]
        floor = f" ({ex['p50_ms'] / (ex['gflop'] / peak * 1e3):.1f}x)" if peak and "gflop" in ex else ""
        lines.append(f"| {r['n_pages']:,} | {r['n_vectors']:,} | {r['build_stage_s']:.0f} ({r['n_centroids']}) "
                     f"| {r['staged']['p50_ms']:.1f} / {r['staged']['p95_ms']:.1f} | {r['staged']['recall5']:.3f} "
                     f"| {ex['p50_ms']:.0f}{floor} | {_rss(r)} | {r['disk_bytes'] / 1e9:.2f} |")
    ex = results.get("extrapolated")
    if ex:
        lines.append(f"| {ex['n_pages']:,} (extrapolated, not run) | ~{int(ex['n_pages'] * 750):,} "
                     f"| ~{ex['build_stage_s']:.0f} | ~{ex['staged_p50_ms']:.0f} / - | (measured above: flat in size) "
                     f"| ~{ex['exact_p50_ms']:.0f} | {_rss_extrapolated(ex)} | ~{ex['disk_gb']:.1f} |")
        staged = ("the largest size's staged time with its first stage replaced by the one measured at "
                  f"{ex['n_pages']:,} pages (below)" if ex.get("staged_from_stage_only") else
                  f"power law, exponent {ex['staged_p50_ms_exponent']:.2f} (clamped at 0)")
        memory = ("the largest size's own memory plus the first stage's growth measured at "
                  f"{ex['n_pages']:,} pages" if "search_anon_mb" in ex else
                  f"peak RSS a fitted power law (exponent {ex['search_rss_mb_exponent']:.2f})")
        lines += ["", f"Extrapolation from the two largest sizes run: exact search and disk linear in pages; "
                  f"build time a fitted power law (exponent {ex['build_stage_s_exponent']:.2f}); staged search: "
                  f"{staged}; memory: {memory}. The mapped pages are the candidate pages read so far (page "
                  "cache, shared and evictable): they grow with the queries asked, up to the segment's size."]
    if peak:
        lines += ["", f"MatMul floor: an exact search is at least a (query tokens x 128) @ (128 x vectors) MatMul; "
                  f"this machine's fp32 MatMul rate at that shape, measured alone on one core in the same run "
                  f"and multiplied by the cores, is {peak:.0f} GFLOP/s on {m['cpus']} cores. Exact search also widens the float16 vectors and takes the "
                  "per-page maxima, so it stays above that floor."]
    so = results.get("stage_only")
    if so:
        lines += ["", "### The first stage alone at sizes whose vectors were not built (no vectors: random "
                  "inverted lists of realistic length, 200 distinct centroids a page)", "",
                  "| pages | K | first stage p50 / p95 ms | first stage memory MB |", "|---|---|---|---|"]
        for r in so:
            lines.append(f"| {r['n_pages']:,} | {r['n_centroids']} | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} "
                         f"| {r['stage_mb']:.0f} |")
        lines += ["", "A staged search is this first stage plus the exact rescoring of 128 candidates, whose cost "
                  "does not grow with the index (128 pages read from the memory map)."]
    inc = results.get("incremental")
    if inc:
        lines += ["", "### Incremental update (a real LanceDB index, cache segments)", "",
                  "| pages | full cache build s | next search's cache work after adding a 20-page document s "
                  "| top-5 equal to a full rebuild's: staged / exhaustive | staged recall@5 vs exact: incremental / "
                  "rebuild | search p50 ms |", "|---|---|---|---|---|---|",
                  f"| {inc['n_pages']:,} | {inc['full_build_s']:.1f} | {inc['add_20_pages_s']:.2f} "
                  f"| {inc['same_top5_as_rebuild']:.0%} / {_opt(inc, 'exhaustive_equal_to_rebuild', '.0%')} "
                  f"| {_opt(inc, 'staged_recall5_incremental', '.3f')} / {_opt(inc, 'staged_recall5_rebuild', '.3f')} "
                  f"| {inc['search']['p50_ms']:.1f} |",
                  "", "### Filters (restricted before ranking)", "",
                  "| allowed subset | pages | p50 / p95 ms | equal to exact MaxSim over the subset |", "|---|---|---|---|"]
        for k, v in inc.items():
            if k.startswith("filter "):
                eq = "-" if v["equals_exact"] is None else f"{v['equals_exact']:.0%}"
                lines.append(f"| {k[7:]} | {v['allowed_pages']:,} | {v['p50_ms']:.1f} / {v['p95_ms']:.1f} | {eq} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The options (bench/assemble.py lists them in bench/README.md from here)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", default="3000,10000", help="comma-separated page counts (scale part)")
    ap.add_argument("--inc-pages", type=int, default=10000, help="pages of the incremental/filter index (0: skip)")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--exact-queries", type=int, default=12, help="queries scored exactly (recall reference)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--centroids", type=int, default=0, help="0: default_n_centroids (~sqrt of vectors)")
    ap.add_argument("--stage-only", default="10000,100000", help="comma-separated page counts for the vector-free first-stage "
                    "measurement (e.g. 10000,100000)")
    ap.add_argument("--resume", default=None, help="a results JSON of an earlier (possibly stopped) run: its parts "
                    "are kept, only the parts it lacks are measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "search"), help="writes OUT.md and OUT.json")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)

    results = {"machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()[0]},
               "args": dict(vars(args)), "sizes": []}
    if args.resume:
        prev = json.loads(Path(args.resume).read_text())
        results = {**prev, "resumed_with": dict(vars(args))}
    if "matmul_gflops" not in results["machine"]:
        results["machine"]["matmul_gflops"] = matmul_gflops(len(os.sched_getaffinity(0)))
    have_sizes = {r["n_pages"] for r in results["sizes"]}
    have_stage = {r["n_pages"] for r in results.get("stage_only", [])}
    t_all = time.perf_counter() - results.get("total_s", 0.0)   # resumed: count the earlier run's time too
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write():                                         # after every part: a stopped run keeps what it measured
        results["extrapolated"] = extrapolate(results["sizes"], stage_only=results.get("stage_only"))
        results["total_s"] = time.perf_counter() - t_all
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        out.with_suffix(".md").write_text("<!-- Written by bench/bench_search.py; do not edit: rerun it and "
                                          "bench/assemble.py. -->\n\n<!-- table: search.all -->\n" + markdown(results))

    with tempfile.TemporaryDirectory(prefix="bench_search_", dir=args.work) as tmp:
        work = Path(tmp)
        if args.inc_pages and "incremental" not in results:
            results["incremental"] = run_incremental(args.inc_pages, args, work)
            write()
            shutil.rmtree(work / "inc_db")
            shutil.rmtree(work / "fresh_cache", ignore_errors=True)
        for n in [int(p) for p in args.stage_only.split(",") if p and int(p) not in have_stage]:
            results.setdefault("stage_only", []).append(run_stage_only(n, args))
            write()
        for n in [int(p) for p in args.pages.split(",") if p and int(p) not in have_sizes]:
            results["sizes"].append(run_scale(n, args, work))
            write()
            shutil.rmtree(work / f"seg_{n}")             # free the disk before the next size
    write()
    print(out.with_suffix(".md").read_text())
    _log(f"{results['total_s']:.0f} s in all; {out}.md / .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
