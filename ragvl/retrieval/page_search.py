"""`ragvl search`: rank pages by the model's MaxSim (visual), the text layer (text) or both.

Visual search reads a cached view of the table version (:mod:`ragvl.retrieval.cache`: segments
memory-mapped, built incrementally), so a query never re-reads the table. Scores are always
exact MaxSim sums of the page alone; large indexes first take candidates from the centroid
first stage. Filters (`allowed`, one bool per row of :meth:`PageSearch.rows`) restrict the
search BEFORE ranking: a small allowed subset is scored exactly, and the first stage only
proposes allowed pages, so a search returns min(k, allowed pages) hits.

Identical copies of a document (the same content at several paths) share their pages (one
unit of the view each): a search ranks distinct pages and returns each once, at its first
allowed path, with the other paths holding it in `Hit.also`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from ..errors import RagvlError
from .cache import View, open_view
from .fusion import DEPTH, rrf
from .maxsim import EXACT_BELOW
from .maxsim.matrix import top_k
from ..store import PageStore, StoreInfo, page_id
from .fulltext import text_ranking

MODES = ("visual", "text", "hybrid")
CANDIDATES = 128          # pages the first stage proposes for exact rescoring

__all__ = ["Hit", "PageSearch", "MODES"]


@dataclass(frozen=True)
class Hit:
    """One retrieved page: 1-based rank and page number, and the score of the ranking mode
    (visual: MaxSim; text: BM25; hybrid: reciprocal-rank-fusion score)."""

    rank: int
    path: str  # absolute path of the document
    page: int
    score: float
    id: str = ""  # the page's stable id (store.page_id): survives re-indexing and compaction
    mode: str = "visual"  # the mode that ranked this hit
    visual_rank: int | None = None  # its rank in the visual ranking, if it is in it
    text_rank: int | None = None  # its rank in the text ranking, if it has a text match
    also: tuple[str, ...] = ()  # other paths that hold the same page (identical copies), as `path` is given

    def as_dict(self) -> dict:
        return asdict(self)


class PageSearch:
    """Search over one version of a PageStore; build it again after the index changes.

    `view`: search this view of the store's version instead of opening one; with a search
    Snapshot (snapshot.py) in place of the store, visual search only (no LanceDB is opened).
    """

    def __init__(self, store: PageStore | StoreInfo, *, cache_root: Path | None = None,
                 log: Callable[[str], None] | None = None, view: View | None = None):
        self.store = store
        self.view: View = view if view is not None else open_view(store, root=cache_root, log=log)
        self.version = self.view.version
        self._row_of: dict[tuple[str, int], int] | None = None
        self._unit_rows: dict[int, list[int]] | None = None

    def __len__(self) -> int:
        return self.view.n_rows

    def distinct_pages(self, allowed: np.ndarray | None = None) -> int:
        """How many distinct pages a search can return (identical copies count once)."""
        units = self.view.row_unit if allowed is None else self.view.row_unit[self._check_allowed(allowed)]
        return int(len(np.unique(units)))

    def rows(self) -> pa.Table:
        """This version's rows (doc_path, doc_sha256, page): the order of `allowed` masks."""
        return self.view.rows()

    # -- the modes ----------------------------------------------------------------------------
    def search(self, query: np.ndarray | None, k: int = 5, *, allowed: np.ndarray | None = None,
               mode: str = "visual", text: str | None = None) -> list[Hit]:
        """The top-k pages, best first. `query`: the query's multi-vector (nq, 128) (visual and
        hybrid); `text`: the query string (text and hybrid); `allowed`: (n_rows,) bool or None."""
        if mode not in MODES:
            raise RagvlError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
        allowed = self._check_allowed(allowed)
        if mode == "visual":
            return [self._hit(r, row, s, "visual", allowed, visual_rank=r) for r, (row, s) in
                    enumerate(self.visual(query, k, allowed=allowed), start=1)]
        if mode == "text":
            return [self._hit(r, row, s, "text", allowed, text_rank=r) for r, (row, s) in
                    enumerate(self.text(text or "", k, allowed=allowed), start=1)]
        depth = max(k, DEPTH)
        vis = [row for row, _ in self.visual(query, depth, allowed=allowed)]
        txt = [row for row, _ in self.text(text or "", depth, allowed=allowed)]
        fused = rrf({"visual": vis, "text": txt})[:k]
        return [self._hit(r, row, s, "hybrid", allowed, visual_rank=ranks.get("visual"), text_rank=ranks.get("text"))
                for r, (row, s, ranks) in enumerate(fused, start=1)]

    def visual(self, query: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               exhaustive: bool = False) -> list[tuple[int, float]]:
        """Exact-MaxSim top-k distinct pages as rows ``[(row, score)]``, best first (ties: lower
        row); a page held at several paths counts once, as its first allowed row.
        `exhaustive`: score every allowed page, never the first stage (slow; for checks)."""
        if query is None:
            raise ValueError("visual search needs the query's multi-vector")
        v = self.view
        ok = v.live.copy() if allowed is None else np.zeros(len(v.live), dtype=bool)
        if allowed is not None:
            ok[v.row_unit[allowed]] = True                    # (n_units,) units of allowed rows
        n_ok = int(ok.sum())
        if n_ok == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32)
        n_cand = max(CANDIDATES, int(k))
        staged = all(s.matrix.stage is not None for s in v.segments)
        if staged and not exhaustive and n_ok >= EXACT_BELOW and n_ok > n_cand:
            approx = np.concatenate([s.matrix.stage.approx_scores(q) for s in v.segments])   # (n_units,)
            approx[~ok] = -np.inf                             # filter before ranking
            units = np.argpartition(-approx, n_cand - 1)[:n_cand]
        else:
            units = np.flatnonzero(ok)                        # small (or filtered) set: all, exactly
        units = np.sort(units)
        scores = self._score_units(q, units)                  # (len(units),) exact, one per distinct page
        rows = np.array([self._representative(u, allowed) for u in units.tolist()], dtype=np.int64)
        idx, sc = top_k(scores, k, tiebreak=rows)
        return list(zip(rows[idx].tolist(), sc.tolist()))

    def text(self, text: str, k: int, *, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """BM25 top-k distinct pages as rows ``[(row, score)]`` from the full-text index (as
        :meth:`visual`); pages without a text layer never appear."""
        table = self.store.at_version(self.version)
        hits = text_ranking(self.store, table, text, None if allowed is not None else k)
        row_of = self._rows_by_label()
        out, seen = [], set()
        for path, page, score in hits:
            row = row_of.get((path, int(page)))
            if row is None or (allowed is not None and not allowed[row]):
                continue
            unit = int(self.view.row_unit[row])
            if unit in seen:                                  # an identical copy's page, already ranked
                continue
            seen.add(unit)
            out.append((self._representative(unit, allowed), float(score)))
            if len(out) == k:
                break
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _score_units(self, q: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Exact MaxSim of sorted `units`, segment by segment: ``(len(units),)`` float32."""
        v = self.view
        out = np.empty(len(units), dtype=np.float32)
        seg_of = np.searchsorted(v.unit_offsets, units, side="right") - 1
        for si, seg in enumerate(v.segments):
            sel = np.flatnonzero(seg_of == si)
            if len(sel) == 0:
                continue
            local = units[sel] - v.unit_offsets[si]
            if len(local) == seg.n_pages:
                out[sel] = seg.matrix.scores(q)
            else:
                out[sel] = seg.matrix.score_pages(q, local)
        return out

    def _check_allowed(self, allowed):
        if allowed is None:
            return None
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (self.view.n_rows,):
            raise ValueError(f"allowed: expected ({self.view.n_rows},) bool, one per row of rows(); got {allowed.shape}")
        return allowed

    def _rows_by_label(self) -> dict[tuple[str, int], int]:
        if self._row_of is None:
            v = self.view
            self._row_of = {(p, int(n)): i for i, (p, n) in enumerate(zip(v.doc_path.tolist(), v.page.tolist()))}
        return self._row_of

    def _rows_of_unit(self, unit: int) -> list[int]:
        """The rows (ascending) that hold distinct page `unit`: more than one for identical copies."""
        if self._unit_rows is None:
            by: dict[int, list[int]] = {}
            for row, u in enumerate(self.view.row_unit.tolist()):
                by.setdefault(u, []).append(row)
            self._unit_rows = by
        return self._unit_rows.get(unit, [])

    def _representative(self, unit: int, allowed: np.ndarray | None) -> int:
        """The row that stands for distinct page `unit` in results: its first allowed row."""
        return next(r for r in self._rows_of_unit(unit) if allowed is None or allowed[r])

    def _hit(self, rank: int, row: int, score: float, mode: str, allowed: np.ndarray | None, **ranks) -> Hit:
        v = self.view
        sha, page = str(v.doc_sha256[row]), int(v.page[row])
        also = tuple(str(v.doc_path[r]) for r in self._rows_of_unit(int(v.row_unit[row]))
                     if r != row and (allowed is None or allowed[r]))
        return Hit(rank, str(v.doc_path[row]), page, float(score), page_id(sha, page), mode, also=also, **ranks)
