"""Text-layer search: LanceDB's full-text (BM25) index over the pages' `text` column.

The index is built by the writer, at the end of every index run (:func:`ensure_text_index`);
LanceDB also searches rows added since, without the index, so a stale index only costs speed.
A search never builds it: readers never write. Pages without a text layer (scans) have a null
`text` and simply never match: no OCR here.
"""

from __future__ import annotations

from ..errors import RagvlError
from ..store import PageStore

TEXT_COLUMN = "text"

__all__ = ["text_ranking", "ensure_text_index", "has_text_index", "TEXT_COLUMN"]


def has_text_index(table) -> bool:
    """Whether `table` (a LanceDB table) has a full-text index on the text column."""
    return any(i.index_type == "FTS" and TEXT_COLUMN in i.columns for i in table.list_indices())


def ensure_text_index(store: PageStore, *, rebuild: bool = False) -> bool:
    """Create (or with `rebuild`, replace) the full-text index over `text`; False when the table
    has no text column or no rows. One commit."""
    from lancedb.index import FTS

    if not store.has_column(TEXT_COLUMN) or store.count() == 0:
        return False
    if rebuild or not has_text_index(store.table):
        store.table.create_index(TEXT_COLUMN, config=FTS(), replace=True)
    return True


def text_ranking(store: PageStore, table, query: str, limit: int | None) -> list[tuple[str, int, float]]:
    """BM25 ranking of `query` over the text layer of `table` (a handle pinned to the version
    being searched): ``[(doc_path, page, score)]`` best first, at most `limit` (None: all)."""
    if not store.has_column(TEXT_COLUMN):
        raise RagvlError(f"{store.name}: this index has no text layer (it was built before ragvl stored one); "
                         "re-index with `ragvl index --reembed`, or search with --mode visual")
    if not has_text_index(table):
        if store.count() == 0:
            return []
        raise RagvlError(f"{store.name}: no full-text index yet (the index was written by an older ragvl); "
                         "run `ragvl index` on it once to build one, or search with --mode visual")
    if not query.strip():
        return []
    r = (table.search(query, query_type="fts").select(["doc_path", "page", "_score"])
         .limit(limit).to_arrow())
    return list(zip(r["doc_path"].to_pylist(), r["page"].to_pylist(), r["_score"].to_pylist()))
