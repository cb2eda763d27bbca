"""Pages by their stable id (store.page_id: "{sha256[:16]}-{page}"): the only way a request names a page.

The id is checked against its exact shape before it reaches a query, so a request can never
inject a predicate or name a file.
"""

from __future__ import annotations

import re

import pyarrow as pa

from ..errors import RagvlError
from .page_store import PageStore

PAGE_ID = re.compile(r"^([0-9a-f]{16})-([1-9][0-9]{0,5})$")


def parse_page_id(page_id: str) -> tuple[str, int]:
    """(sha256 prefix, page number) of a well-formed id; RagvlError otherwise."""
    m = PAGE_ID.match(page_id or "")
    if not m:
        raise RagvlError(f"{page_id!r}: not a page id (expected 16 hex digits, '-', a page number)")
    return m.group(1), int(m.group(2))


def page_row(store: PageStore, page_id: str, columns: list[str]) -> dict:
    """The selected columns of the page `page_id`, as a dict; RagvlError if no such page."""
    prefix, page = parse_page_id(page_id)
    t: pa.Table = store.scan(list(dict.fromkeys(["doc_path", "page", *columns])),
                             where=f"page = {page} AND doc_sha256 LIKE '{prefix}%'")
    if t.num_rows == 0:
        raise RagvlError(f"{page_id}: no such page in {store.name}")
    return {c: t[c][0].as_py() for c in t.column_names}
