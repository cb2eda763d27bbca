"""The search cache: each table version's pages as a view over immutable segments.

Correct:

* A view is keyed by the table's identity (a uuid minted when the table is created, so a table
  deleted and recreated never reuses a cache), its version and the embedder id, and is built
  from a scan pinned to that version (``table.checkout(version)``): a commit landing during
  the build is not mixed in.
* Every file is written under a unique temporary name and renamed into place (segments as a
  whole folder, a view as one file), so a reader sees a whole cache or none.
* Nothing another process may be reading is deleted: a reader cannot be seen, so cleanup is by
  age only (:data:`GRACE_S`): views older than that (except each index's newest) and segments
  no remaining view references and older than that. A reader that loses the race (its view's
  segment removed under it) rebuilds.
* The cache lives in ``<index>/cache/search/``, or, when the index folder cannot be written (a
  shared or read-only folder), under the user's cache home
  (``<cache home>/search/<hash of the index path>/``, see ragvl.fsutil.cache_home).

Incremental: a new view starts from the newest view of the same table and embedder. Pages
whose key (segments.page_key: the generation, i.e. content hash + dpi + embedder, and the page)
is already in one of its segments are reused; only the vectors of new keys are read from the table (one filtered scan) into a small delta segment,
whose first stage uses the base's centroids (no retraining); pages no row references any more
are tombstones (masked out). When deltas or tombstones pass :data:`MERGE_FRACTION` of the
base, the live pages are merged into a new base segment (stages merged too, nothing
reassigned); the centroids are retrained only when the index has grown
:data:`RETRAIN_GROWTH` times since they were trained (or first reaches ``EXACT_BELOW`` pages).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from ..fsutil import atomic_write_with, cache_home
from ..models.contract import VECTOR_DIM as DIM
from .maxsim import EXACT_BELOW, CentroidStage, PageMatrix
from .cache_cleanup import GRACE_S, cleanup
from .segments import (TMP_PREFIX, UNREADABLE, Segment, load_segment, merged_stage, page_key, relink_segment,
                       write_segment)
from ..store import PageStore, vectors_from_column

FORMAT = 2
MERGE_FRACTION = 0.2       # merge when delta pages or tombstones exceed this fraction of the base
RETRAIN_GROWTH = 2.0       # retrain the centroids when the index has grown this much since
SCAN_BATCH = 256           # rows per batch when reading vectors (bounded memory: ~50 MB)


__all__ = ["View", "open_view", "load_view", "cache_root", "local_cache_root", "GRACE_S", "UNREADABLE"]


@dataclass
class View:
    """One table version's pages: segments, which of their pages are live, and the table rows.

    Units are the segments' pages numbered in segment order; a row (a page of a document at a
    path) points at its unit. Two rows may share a unit (the same document at two paths).
    """

    version: int
    segments: list[Segment]
    unit_offsets: np.ndarray   # (n_segments + 1,) first unit of each segment
    live: np.ndarray           # (n_units,) bool: referenced by a row
    row_unit: np.ndarray       # (n_rows,) int64
    doc_path: np.ndarray       # (n_rows,) str
    doc_sha256: np.ndarray     # (n_rows,) str
    page: np.ndarray           # (n_rows,) int32
    built: dict                # what building this view did (for logs and the bench)
    path: Path | None = None   # the view file

    @property
    def n_rows(self) -> int:
        return len(self.row_unit)

    def rows(self) -> pa.Table:
        """The rows in the order `allowed` masks refer to: doc_path, doc_sha256, page."""
        return pa.table({"doc_path": self.doc_path.tolist(), "doc_sha256": self.doc_sha256.tolist(),
                         "page": pa.array(self.page, pa.int32())})


def cache_root(store: PageStore) -> Path:
    """Where this index's search cache lives: in the index folder when it can be written there,
    else under the user's cache home."""
    if getattr(store, "remote", False):
        return store.cache_dir  # a remote index: keyed by its URI and index id, under the cache home
    return local_cache_root(store.path)


def local_cache_root(db: Path) -> Path:
    """cache_root of the local index folder `db` (made if missing)."""
    local = db / "cache" / "search"
    try:
        local.mkdir(parents=True, exist_ok=True)
        probe = local / f"{TMP_PREFIX}probe-{os.getpid()}-{time.monotonic_ns()}"
        probe.mkdir()
        probe.rmdir()
        return local
    except OSError:
        digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
        root = cache_home() / "search" / digest
        root.mkdir(parents=True, exist_ok=True)
        return root


def _id_key(store: PageStore, embedder: str) -> str:
    return hashlib.sha256(f"{store.table_id}\0{embedder}".encode()).hexdigest()[:16]


def _view_path(root: Path, idkey: str, version: int) -> Path:
    return root / "views" / f"{idkey}-v{version}.npz"


def open_view(store: PageStore, *, root: Path | None = None, version: int | None = None,
              log: Callable[[str], None] | None = None) -> View:
    """The view of `store` at `version` (default: its current one), loaded or built."""
    root = root or cache_root(store)
    version = store.version if version is None else int(version)
    idkey = _id_key(store, store.embedder or "")
    path = _view_path(root, idkey, version)
    try:
        return load_view(root, path)
    except UNREADABLE:
        pass                                                   # absent, or lost a cleanup race: build
    view = _build_view(store, root, idkey, version, log)
    try:
        cleanup(root, keep=path)
    except OSError:
        pass
    return view


# -------------------------------------------------------------------------------------------
# view files


def _save_view(path: Path, version: int, seg_ids: list[str], keep: list[np.ndarray], row_unit, doc_path, sha,
               page) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"format": FORMAT, "version": version, "segments": seg_ids})

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(meta), live=np.concatenate(keep) if keep else np.zeros(0, bool),
                 row_unit=row_unit, doc_path=np.asarray(doc_path, dtype=str), doc_sha256=np.asarray(sha, dtype=str),
                 page=np.asarray(page, dtype=np.int32))
        f.write(buf.getvalue())

    atomic_write_with(path, write)


def load_view(root: Path, path: Path, built: dict | None = None) -> View:
    """The view saved at `path` with its segments under `root`; raises one of UNREADABLE when
    the file or a segment is missing or damaged."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError("old cache format")
        arrays = {k: z[k] for k in ("live", "row_unit", "doc_path", "doc_sha256", "page")}
    segs = [load_segment(root, s) for s in meta["segments"]]
    offs = np.zeros(len(segs) + 1, dtype=np.int64)
    np.cumsum([s.n_pages for s in segs], out=offs[1:])
    if len(arrays["live"]) != offs[-1]:
        raise ValueError(f"{path}: view and segments disagree")
    return View(meta["version"], segs, offs, arrays["live"], arrays["row_unit"], arrays["doc_path"],
                arrays["doc_sha256"], arrays["page"], built or {"loaded": True}, path)


def _newest_view(root: Path, idkey: str) -> Path | None:
    best, best_v = None, -1
    for p in (root / "views").glob(f"{idkey}-v*.npz"):
        try:
            v = int(p.stem.rsplit("-v", 1)[1])
        except ValueError:
            continue
        if v > best_v:
            best, best_v = p, v
    return best


# -------------------------------------------------------------------------------------------
# building


def _build_view(store: PageStore, root: Path, idkey: str, version: int, log) -> View:
    t0 = time.perf_counter()
    built: dict = {"loaded": False}
    table = store.at_version(version)
    # Only what a search may rank: complete generations' embedded pages (not a document's new
    # version still being written in batches, nor pages stored as skipped).
    rows = (table.search().select(["doc_path", "doc_sha256", "generation", "page", "n_vectors"])
            .where(store.searchable_in(table)).limit(None).to_arrow())
    doc_path = np.asarray(rows["doc_path"].to_pylist(), dtype=str)
    sha = np.asarray(rows["doc_sha256"].to_pylist(), dtype=str)
    page = np.asarray(rows["page"].to_numpy(), dtype=np.int32)
    n_vec = np.asarray(rows["n_vectors"].to_numpy(), dtype=np.int64)
    # A unit's key is its generation (sha256, dpi and embedder) and page: the same bytes
    # re-rendered or re-embedded are new vectors, so a new key.
    keys = [page_key(g, p) for g, p in zip(rows["generation"].to_pylist(), page)]

    segs: list[Segment] = []
    base = _newest_view(root, idkey)
    if base is not None:
        try:
            segs = load_view(root, base).segments
        except UNREADABLE:
            segs = []
    known: dict[str, int] = {}                                 # key -> unit
    unit0 = 0
    for s in segs:
        for j, k in enumerate(s.keys.tolist()):
            known[k] = unit0 + j
        unit0 += s.n_pages

    missing: dict[str, int] = {}                               # new key -> its n_vectors
    for k, n in zip(keys, n_vec):
        if k not in known and k not in missing:
            missing[k] = int(n)
    built["new_pages"] = len(missing)
    if missing:
        stage_from = segs[0].matrix.stage if segs else None
        info = {"trained_pages": segs[0].info.get("trained_pages", 0) if segs else 0}
        sid = write_segment(root, lambda tmp: _read_vectors(table, missing, tmp, stage_from, info, full=not segs),
                            info)
        segs.append(load_segment(root, sid))
        for j, k in enumerate(segs[-1].keys.tolist()):
            known[k] = unit0 + j
        unit0 += segs[-1].n_pages

    row_unit = np.fromiter((known[k] for k in keys), dtype=np.int64, count=len(keys))
    live = np.zeros(unit0, dtype=bool)
    live[row_unit] = True
    segs, live, row_unit = _maybe_merge(root, segs, live, row_unit, built)
    keep = []
    o = 0
    for s in segs:
        keep.append(live[o:o + s.n_pages])
        o += s.n_pages
    path = _view_path(root, idkey, version)
    _save_view(path, version, [s.id for s in segs], keep, row_unit, doc_path, sha, page)
    built["seconds"] = time.perf_counter() - t0
    built["segments"] = len(segs)
    if log and built["seconds"] > 1:
        log(f"search cache: {len(missing)} new pages, {len(segs)} segment(s) in {built['seconds']:.1f}s")
    return load_view(root, path, built)


def _read_vectors(table, need: dict[str, int], tmp: Path, stage_from: CentroidStage | None, info: dict, *,
                  full: bool):
    """Fill ``tmp/vectors.npy`` with the vectors of the keys in `need` (in that order), streamed
    from the pinned table in bounded batches. A first stage: assigned to `stage_from`'s
    centroids, or trained when this is the first segment of a big index (recorded in `info`)."""
    order = list(need)
    slot = {k: i for i, k in enumerate(order)}
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum([need[k] for k in order], out=offsets[1:])
    vectors = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float16,
                                        shape=(int(offsets[-1]), DIM))
    q = table.search().select(["generation", "page", "vectors"])
    if not full:                                               # only the documents that have new pages
        gens = sorted({k.rsplit(":", 1)[0] for k in order})
        q = q.where("generation IN (" + ", ".join(f"'{g}'" for g in gens) + ")")
    done = np.zeros(len(order), dtype=bool)
    for batch in q.limit(None).to_batches(SCAN_BATCH):
        flat, offs = vectors_from_column(batch.column("vectors"))
        for r, (s, p) in enumerate(zip(batch.column("generation").to_pylist(), batch.column("page").to_pylist())):
            i = slot.get(page_key(s, p))
            if i is None or done[i]:
                continue
            a, b = int(offsets[i]), int(offsets[i + 1])
            if offs[r + 1] - offs[r] != b - a:
                raise ValueError(f"page {s[:12]}:{p}: n_vectors disagrees with its vectors")
            vectors[a:b] = flat[offs[r]:offs[r + 1]]
            done[i] = True
    if not done.all():
        raise ValueError("pages vanished from a pinned table version")
    vectors.flush()
    matrix = PageMatrix(np.load(tmp / "vectors.npy", mmap_mode="r"), offsets)
    if stage_from is not None:
        matrix.stage = CentroidStage.from_centroids(matrix, stage_from.centroids, probe=stage_from.probe,
                                                    seed=stage_from.seed)
    elif full and matrix.n_pages >= EXACT_BELOW:
        matrix.build_first_stage()
        info["trained_pages"] = matrix.n_pages
    return matrix, np.asarray(order, dtype=str)


def _maybe_merge(root: Path, segs: list[Segment], live: np.ndarray, row_unit: np.ndarray, built: dict):
    """Merge into one base segment when deltas/tombstones grew past MERGE_FRACTION, and
    (re)train the first stage when the index crossed EXACT_BELOW or grew RETRAIN_GROWTH times."""
    n_units, n_live = len(live), int(live.sum())
    base_pages = segs[0].n_pages if segs else 0
    delta_pages = n_units - base_pages
    dead = n_units - n_live
    trained = int(segs[0].info.get("trained_pages", 0)) if segs else 0
    has_stage = bool(segs) and segs[0].matrix.stage is not None
    retrain = (n_live >= EXACT_BELOW and (not has_stage or n_live > RETRAIN_GROWTH * max(trained, 1)))
    merge = len(segs) > 1 and (delta_pages > MERGE_FRACTION * base_pages or dead > MERGE_FRACTION * base_pages)
    merge = merge or (dead > MERGE_FRACTION * max(n_units, 1)) or (retrain and len(segs) > 1)
    if not segs or not (merge or retrain):
        return segs, live, row_unit
    keep, o = [], 0
    for s in segs:
        keep.append(live[o:o + s.n_pages])
        o += s.n_pages
    remap = np.cumsum(live) - 1                                # old unit -> new unit
    if merge:
        built["merged"] = True

        def fill(tmp: Path):
            lens = np.concatenate([s.matrix.lengths[k] for s, k in zip(segs, keep)])
            offs = np.zeros(len(lens) + 1, dtype=np.int64)
            np.cumsum(lens, out=offs[1:])
            out = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float16,
                                            shape=(int(offs[-1]), DIM))
            j = 0
            for s, k in zip(segs, keep):
                m = s.matrix
                for i in np.flatnonzero(k):                    # a memcpy per live page
                    out[offs[j]:offs[j + 1]] = m.vectors[m.offsets[i]:m.offsets[i + 1]]
                    j += 1
            out.flush()
            matrix = PageMatrix(np.load(tmp / "vectors.npy", mmap_mode="r"), offs)
            if retrain:
                matrix.build_first_stage()
            else:
                matrix.stage = merged_stage(segs, keep, matrix.n_pages)
            return matrix, np.concatenate([s.keys[k] for s, k in zip(segs, keep)])

        info = {"trained_pages": n_live if retrain else trained}
        new = load_segment(root, write_segment(root, fill, info))
    else:                                                      # one segment, all live: retrain in place
        seg = segs[0]
        stage = CentroidStage.build(seg.matrix)
        new = load_segment(root, relink_segment(root, seg, stage, {"trained_pages": n_live}))
        built["retrained"] = True
        return [new], live, row_unit
    built["retrained"] = retrain
    return [new], np.ones(new.n_pages, dtype=bool), remap[row_unit]
