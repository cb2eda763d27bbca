"""`ragvl search`: late-interaction (MaxSim) search over the page index.

The page vectors are read from LanceDB once per table version into one contiguous float16
matrix, cached next to the table (`cache/v{version}/`) and memory-mapped by later searches, so a
query never re-reads the table. Large indexes get the centroid first stage; the scores returned
are always exact MaxSim sums, the numbers colpali-engine's score_multi_vector gives.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write
from .maxsim import EXACT_BELOW, PageMatrix
from .store import PageStore, page_id, vectors_from_column

CACHE = "cache"


@dataclass(frozen=True)
class Hit:
    """One retrieved page: 1-based rank and page number, and the MaxSim score."""

    rank: int
    path: str  # absolute path of the document
    page: int
    score: float
    id: str = ""  # the page's stable id (store.page_id): survives re-indexing and compaction

    def as_dict(self) -> dict:
        return asdict(self)


class PageSearch:
    """Search over one version of a PageStore; build it again after the index changes."""

    def __init__(self, store: PageStore):
        self.store = store
        self.version = store.version
        root = store.path / CACHE
        cache = root / f"v{self.version}"
        try:
            self.matrix = PageMatrix.load(cache)
            self.labels = [tuple(x) for x in json.loads((cache / "labels.json").read_text())]
            if len(self.labels) != self.matrix.n_pages or any(len(x) != 3 for x in self.labels[:1]):
                raise ValueError("labels and matrix disagree")
        except (OSError, ValueError):
            self.matrix, self.labels = self._build(cache)
            for old in (root.iterdir() if root.is_dir() else ()):  # caches of older versions are never read again
                if old.name != cache.name:
                    shutil.rmtree(old, ignore_errors=True)

    def _build(self, cache: Path) -> tuple[PageMatrix, list[tuple[str, int]]]:
        t = self.store.scan(["doc_path", "doc_sha256", "page", "vectors"])
        flat, offsets = vectors_from_column(t["vectors"])
        labels = list(zip(t["doc_path"].to_pylist(), t["page"].to_pylist(), t["doc_sha256"].to_pylist()))
        matrix = PageMatrix(flat, offsets)
        if matrix.n_pages >= EXACT_BELOW:
            matrix.build_first_stage()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write(cache / "labels.json", json.dumps(labels))
            matrix.save(cache)  # meta.json last: a torn cache is rebuilt, never read
        except OSError:  # a full disk or a read-only index: search from memory, cache nothing
            shutil.rmtree(cache, ignore_errors=True)
            return matrix, labels
        return PageMatrix.load(cache), labels

    def __len__(self) -> int:
        return self.matrix.n_pages

    def search(self, query: np.ndarray, k: int = 5, allowed: set[tuple[str, int]] | None = None) -> list[Hit]:
        """The top-k pages for one query's multi-vector (nq, 128), best first.

        `allowed` (store.allowed_keys(filters)): only these (stored path, page) are ranked, and
        exactly: the filter applies before ranking, so min(k, allowed pages) hits come back.
        """
        q = np.asarray(query, np.float32)
        if allowed is None:
            idx, scores = self.matrix.search(q, k)
        else:
            sel = np.array([i for i, (p, n, _) in enumerate(self.labels) if (p, n) in allowed], np.int64)
            s = self.matrix.score_pages(q, sel)
            order = np.lexsort((sel, -s))[:k]  # best first, ties by page index
            idx, scores = sel[order], s[order]
        out = []
        for r, (i, s) in enumerate(zip(idx, scores)):
            path, page, sha = self.labels[i]
            out.append(Hit(r + 1, str(self.store.resolve(path)), int(page), float(s), page_id(sha, int(page))))
        return out
