"""The index on disk: LanceDB tables, their schema and metadata, migrations, object storage and
the one writer lock. Everything above this layer (retrieval, indexing, answer, api) imports it
from here.

- `PageStore` (page_store.py): the `pages` and `meta` tables of one index folder or URI.
- `schema`: the format (version, table and key names, the page id, SQL quoting).
- `VisionCache` (vision_cache.py): each page's stored vision features, for the answer model.
- `writer_lock` (lock.py): the one writer at a time, local or on object storage.
- `migrate`: older formats brought to the current one in place, without re-embedding.
- `embedder_ref`: which embedder folder reads or extends an index.
"""

from .embedder_ref import find_recorded, folder_id
from .info import StoreInfo
from .lock import writer_lock
from .objstore import is_uri, normalize_db
from .page_ids import page_row, parse_page_id
from .page_store import DocFields, Document, PageRow, PageStore, default_db, vectors_array, vectors_from_column
from .schema import (DIM, FORMAT_VERSION, K_DPI, K_EMBEDDER, K_FORMAT, K_VISION_CACHE, LEGACY_META_FILE, META_TABLE,
                     METADATA_FIELDS, PAGES, VISION_TABLE, page_id, sql_quote)
from .vision_cache import DEFAULT_MAX_BYTES, Producer, VisionCache

__all__ = [
    "PageStore", "PageRow", "DocFields", "Document", "default_db", "vectors_array", "vectors_from_column",
    "StoreInfo", "writer_lock", "is_uri", "normalize_db", "page_row", "parse_page_id", "find_recorded", "folder_id",
    "DIM", "FORMAT_VERSION", "K_DPI", "K_EMBEDDER", "K_FORMAT", "LEGACY_META_FILE", "META_TABLE", "METADATA_FIELDS",
    "PAGES", "VISION_TABLE", "K_VISION_CACHE", "page_id", "sql_quote", "VisionCache", "Producer", "DEFAULT_MAX_BYTES",
]
