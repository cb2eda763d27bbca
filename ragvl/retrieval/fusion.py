"""Reciprocal rank fusion of the visual and text rankings (``--mode hybrid``).

``score(d) = sum over rankings r that contain d of 1 / (RRF_K + rank_r(d))`` (ranks 1-based).

Why RRF: MaxSim sums (~10-30) and BM25 scores (unbounded, query-dependent) live on scales that
cannot be compared or normalised reliably per query, while ranks can; RRF needs no training
data, which ragvl does not have for the user's documents. Why k = 60: the constant of Cormack,
Clarke & Buettcher (SIGIR 2009), which they found robust across collections; a large k flattens
the head of each list, so a page ranked well by BOTH signals beats one ranked first by only
one - the behaviour wanted when the text layer is missing or noisy on some pages (scans,
charts). Each ranking contributes its top `depth` hits (default 50: beyond that 1/(60+r)
barely moves a sum).
"""

from __future__ import annotations

from typing import Hashable, Sequence

RRF_K = 60
DEPTH = 50

__all__ = ["rrf", "RRF_K", "DEPTH"]


def rrf(rankings: dict[str, Sequence[Hashable]], *, k: int = RRF_K) -> list[tuple[Hashable, float, dict[str, int]]]:
    """Fuse named rankings (best first): ``[(item, fused score, {ranking name: 1-based rank})]``
    best first; ties keep the order in which items were first seen (rankings in dict order)."""
    score: dict[Hashable, float] = {}
    ranks: dict[Hashable, dict[str, int]] = {}
    for name, items in rankings.items():
        for r, item in enumerate(items, start=1):
            if name in ranks.get(item, {}):
                continue                                        # an item counts once per ranking
            score[item] = score.get(item, 0.0) + 1.0 / (k + r)
            ranks.setdefault(item, {})[name] = r
    order = sorted(score, key=lambda it: -score[it])            # stable: first-seen order on ties
    return [(it, score[it], ranks[it]) for it in order]
