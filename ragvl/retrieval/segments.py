"""Immutable search-cache segments: the vectors of some pages, keyed by a stable page key.

A segment is a folder ``seg-<uuid>/`` holding a :class:`~ragvl.retrieval.maxsim.PageMatrix` (float16
vectors, page offsets, and a centroid first stage when the index is large enough), the key of
each page (``"<doc sha256>:<page>"``, see :func:`page_key`: stable across re-indexing, moves and
LanceDB compaction, unlike row positions) and ``segment.json``. It is written under a unique
temporary name and renamed into place in one step, and never modified afterwards, so a reader
sees a whole segment or none; several processes may read it at once. Segments are combined by
a view (:mod:`ragvl.retrieval.cache`): a big base segment, small delta segments for new pages, and
tombstones (pages of a segment that no row of the table references any more).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .maxsim import CentroidStage, PageMatrix
from ..fsutil import atomic_write, save_npy

SEG_PREFIX = "seg-"
TMP_PREFIX = ".tmp-"

UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # a missing or damaged cache file

__all__ = ["UNREADABLE", "Segment", "page_key", "write_segment", "load_segment", "merged_stage", "SEG_PREFIX", "TMP_PREFIX"]


def page_key(generation: str, page: int) -> str:
    """A page's stable cache key: its document's generation (content hash, dpi, embedder) and its
    1-based page number. Stable across compaction and re-indexing of other documents."""
    return f"{generation}:{int(page)}"


@dataclass
class Segment:
    """One immutable segment, memory-mapped."""

    id: str
    matrix: PageMatrix
    keys: np.ndarray      # (n_pages,) str: page_key of each page
    info: dict            # {"trained_pages": pages the centroids were trained on, or 0}

    @property
    def n_pages(self) -> int:
        return self.matrix.n_pages


def _fresh_dir(root: Path) -> tuple[str, Path]:
    sid = uuid.uuid4().hex
    tmp = root / f"{TMP_PREFIX}{sid}"
    tmp.mkdir(parents=True)
    return sid, tmp


def write_segment(root: Path, fill: Callable[[Path], tuple[PageMatrix, np.ndarray]], info: dict) -> str:
    """Create a segment: `fill(tmp_dir)` writes ``vectors.npy`` there (e.g. an ``open_memmap``
    filled in place, so a big segment is never held in RAM) and returns the matrix (whose
    vectors are that file, or in memory) and the page keys. Returns the new segment's id."""
    sid, tmp = _fresh_dir(root)
    try:
        matrix, keys = fill(tmp)
        if len(keys) != matrix.n_pages:
            raise ValueError(f"segment: {len(keys)} keys for {matrix.n_pages} pages")
        matrix.save(tmp)                                      # skips vectors.npy when it is already there
        save_npy(tmp / "keys.npy", np.asarray(keys, dtype=str))
        atomic_write(tmp / "segment.json", json.dumps(info))
        _fsync_dir(tmp)
        os.rename(tmp, root / f"{SEG_PREFIX}{sid}")           # the commit: a whole segment or none
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sid


def relink_segment(root: Path, seg: Segment, stage: CentroidStage | None, info: dict) -> str:
    """A new segment with `seg`'s vectors (hard-linked, not copied) and another first stage."""

    def fill(tmp: Path):
        src = root / f"{SEG_PREFIX}{seg.id}" / "vectors.npy"
        try:
            os.link(src, tmp / "vectors.npy")
        except OSError:                                       # no hard links here: copy
            shutil.copyfile(src, tmp / "vectors.npy")
        vectors = np.load(tmp / "vectors.npy", mmap_mode="r")
        return PageMatrix(vectors, seg.matrix.offsets, threads=seg.matrix.threads, stage=stage), seg.keys

    return write_segment(root, fill, info)


def load_segment(root: Path, sid: str, *, threads: int | None = None) -> Segment:
    """Open segment `sid` (vectors memory-mapped); OSError/ValueError if it is gone or damaged."""
    path = root / f"{SEG_PREFIX}{sid}"
    info = json.loads((path / "segment.json").read_text())
    matrix = PageMatrix.load(path, threads=threads)
    keys = np.load(path / "keys.npy")
    if len(keys) != matrix.n_pages:
        raise ValueError(f"{path}: keys and matrix disagree")
    return Segment(sid, matrix, keys, info)


def merged_stage(segments: Sequence[Segment], keep: Sequence[np.ndarray], n_pages: int) -> CentroidStage | None:
    """The first stage of the pages ``keep`` of each segment, concatenated in that order,
    from the segments' own stages (same centroids): no vector is reassigned. None if any
    segment with kept pages has no stage."""
    parts_c, parts_p, base, first = [], [], 0, None
    for seg, kp in zip(segments, keep):
        n_keep = int(kp.sum())
        if n_keep == 0:
            continue
        st = seg.matrix.stage
        if st is None:
            return None
        first = first or st
        remap = np.cumsum(kp) - 1 + base                      # old page -> new page (where kept)
        codes = np.repeat(np.arange(st.n_centroids, dtype=np.int64), np.diff(st.inv_offsets))
        alive = kp[st.inv_pages]
        parts_c.append(codes[alive])
        parts_p.append(remap[st.inv_pages[alive]].astype(np.int32))
        base += n_keep
    if first is None:
        return None
    codes = np.concatenate(parts_c)
    pages = np.concatenate(parts_p)
    order = np.lexsort((pages, codes))                        # by centroid, then page
    inv_offsets = np.searchsorted(codes[order], np.arange(first.n_centroids + 1)).astype(np.int64)
    return CentroidStage(first.centroids, inv_offsets, pages[order], n_pages, probe=first.probe, seed=first.seed)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
