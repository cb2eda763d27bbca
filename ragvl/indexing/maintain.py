"""Index maintenance after an index run: compact the table, drop old versions, refresh the
full-text index, trim the search cache.

LanceDB keeps every version's files until cleaned up. A reader (a search in another process)
cannot be seen, so time is the only safe rule: versions younger than `grace_s` are kept, so a
search that pinned one of them a moment ago can still read it. Compaction rewrites rows into
new files but keeps their content; the search cache keys pages by generation and page (segments.page_key),
not by row position, so it stays valid.
"""

from __future__ import annotations

from datetime import timedelta

from ..retrieval import GRACE_S, cache_root, cleanup, ensure_text_index
from ..store import PageStore

__all__ = ["maintain", "VERSION_GRACE_S"]

VERSION_GRACE_S = 600.0   # table versions younger than this are kept for readers that pinned them


def maintain(store: PageStore, *, grace_s: float = VERSION_GRACE_S, cache_grace_s: float = GRACE_S) -> dict:
    """Compact `store`'s table, delete versions older than `grace_s` seconds, (re)build the
    full-text index over the text layer, and clean the search cache. Returns what it did.

    Call it with the index's writer lock held (the indexer does, at the end of a run)."""
    done: dict = {}
    stats = store.table.optimize(cleanup_older_than=timedelta(seconds=grace_s))
    done["compacted"] = stats is not None
    done["text_index"] = ensure_text_index(store)  # optimize() above already folded new rows into it
    try:
        cleanup(cache_root(store), grace_s=cache_grace_s)
    except OSError:
        pass
    return done
