"""Saving a PageMatrix (and its first stage) to a cache directory and memory-mapping it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...fsutil import atomic_write, atomic_write_with

FORMAT_VERSION = 1

__all__ = ["save_matrix", "load_matrix", "save_npy", "FORMAT_VERSION"]

def save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write_with(path, lambda f: np.save(f, np.asarray(arr), allow_pickle=False))


def save_matrix(matrix, path: str | Path) -> Path:
    """Write `matrix` (and its first stage, if built) into directory `path`.

    Files: ``vectors.npy`` (N, D), ``offsets.npy`` (n_pages + 1,), the stage's
    ``centroids.npy`` / ``inv_offsets.npy`` / ``inv_pages.npy``, then ``meta.json`` last.
    Every file goes through tmp + fsync + rename, so a reader never sees a torn file; the
    meta records the shapes, and :func:`load_matrix` refuses files that disagree with it (e.g.
    a crash between two renames) instead of returning a mixed index.
    """
    from .stage import CentroidStage

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    v = matrix.vectors
    in_place = isinstance(v, np.memmap) and v.filename and Path(v.filename).resolve() == (path / "vectors.npy").resolve()
    if in_place:                                            # filled in place (a big segment): just flush
        if v.mode != "r":
            v.flush()
    else:
        save_npy(path / "vectors.npy", v)
    save_npy(path / "offsets.npy", matrix.offsets)
    meta = {"format": FORMAT_VERSION, "dtype": matrix.dtype.name, "dim": matrix.dim,
            "n_pages": matrix.n_pages, "n_vectors": matrix.n_vectors, "stage": None}
    if matrix.stage is not None:
        meta["stage"] = matrix.stage._save(path)
    else:
        for name in CentroidStage.FILES:
            (path / name).unlink(missing_ok=True)
    atomic_write(path / "meta.json", json.dumps(meta, indent=1))
    return path


def load_matrix(path: str | Path, mmap: bool = True, *, threads: int | None = None):
    """Open a directory written by :func:`save_matrix` as a PageMatrix; `mmap` maps the vectors
    read-only (pages are read from disk on demand and shared through the page cache)."""
    from .matrix import PageMatrix
    from .stage import CentroidStage

    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a page matrix cache ({e})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: cache format {meta.get('format')}, expected {FORMAT_VERSION}")
    vectors = np.load(path / "vectors.npy", mmap_mode="r" if mmap else None)
    offsets = np.load(path / "offsets.npy")
    if (vectors.shape != (meta["n_vectors"], meta["dim"]) or vectors.dtype.name != meta["dtype"]
            or offsets.shape != (meta["n_pages"] + 1,)):
        raise ValueError(f"{path}: files disagree with meta.json (interrupted save?); rebuild the cache")
    stage = CentroidStage._load(path, meta["stage"], meta["n_pages"]) if meta.get("stage") else None
    return PageMatrix(vectors, offsets, threads=threads, stage=stage)
