"""The index's on-disk format, version 2: the `pages` table, the `meta` table, reserved names.

`pages`: one row per (document path, generation, page). The generation names what made the
rows: the document's sha256, the dpi and the embedder (`generation()`), so a new version of a
file, or the same file re-rendered or re-embedded, writes its rows beside the old ones.

A generation written in several batches starts with a *pending marker*: a row with page 0
(`skip_reason = 'pending'`), committed with its first batch. Readers hide every row of a
generation that has a marker (`PageStore.searchable`), so they never see a half-written
document. The switch is ONE commit that deletes the old generation's rows and the marker
together; a delete writes only deletion vectors, so the switch costs no memory or rewrite,
whatever the document's size (an update of a flag would rewrite every image and vector). A
run killed in the middle leaves its committed batches and the marker; the next run resumes.

Document-level fields (size, mtime, metadata, page count) are repeated on each page row: the
table stays the only thing a reader needs, and `ls`/filters read them with one column scan.

A page that could not be rendered is kept as a row with `skip_reason` set and no vectors, so
`ragvl status` can name it and a later run knows the document was indexed as far as it could.

`meta`: (key, JSON value) rows; the index's self-description, living in the same LanceDB
database as the pages so that an index on object storage describes itself.
Keys: META_KEYS below.

`vision`: the stored vision features (ragvl.store.vision_cache), one row per page id and vision
tower; its size cap is the `vision_cache` meta key.

A similarity map needs: which embedding rows are image tokens and the merged patch grid. Both
follow from the stored image size (width, height) and the embedder's max_pixels (meta
`embedder.max_pixels`) through the embedder's smart_resize and the document prompt.
"""

from __future__ import annotations

import pyarrow as pa

from ..models.contract import VECTOR_DIM as DIM

FORMAT_VERSION = 2
PAGES = "pages"
META_TABLE = "meta"
VISION_TABLE = "vision"  # the stored vision features (vision_cache.py), keyed by page id
LEGACY_META_FILE = "ragvl-index.json"  # format 1 kept its metadata here
LOCK_FILE = "writer.lock"

# meta keys
K_FORMAT = "format_version"
K_EMBEDDER = "embedder"  # {"id", "folder", "max_pixels"}
K_DPI = "dpi"
K_VISION_CACHE = "vision_cache"  # {"max_bytes": ...}: the vision table's size cap
META_KEYS = (K_FORMAT, K_EMBEDDER, K_DPI, K_VISION_CACHE)

PENDING = "pending"  # skip_reason of a generation's pending marker (page 0)
# Rows that are pages (not markers), and pages that were embedded. Readers also exclude the
# generations that have a pending marker: PageStore.visible / PageStore.searchable.
PAGE_ROWS = "page > 0"
SEARCHABLE = "page > 0 AND skip_reason IS NULL"

METADATA_FIELDS = ("title", "author", "subject", "created", "modified")

SCHEMA = pa.schema([
    pa.field("key", pa.string()),  # "{doc_path}#{generation}#{page}": unique
    pa.field("page_id", pa.string()),  # store.page_id(): "{doc_sha256[:16]}-{page}", stable
    pa.field("doc_path", pa.string()),  # relative to the index folder's parent when under it
    pa.field("doc_sha256", pa.string()),
    pa.field("generation", pa.string()),  # generation(): sha256, dpi and embedder of these rows
    pa.field("page", pa.int32()),  # 1-based; 0: a pending marker
    pa.field("n_pages", pa.int32()),  # the document's page count
    pa.field("width", pa.int32()),  # stored image size: what was embedded and what a map is drawn on
    pa.field("height", pa.int32()),
    pa.field("image_png", pa.binary()),
    pa.field("n_vectors", pa.int32()),
    pa.field("vectors", pa.list_(pa.list_(pa.float16(), DIM))),
    pa.field("embedder", pa.string()),  # the embedder id that made `vectors`
    pa.field("dpi", pa.int32()),
    pa.field("text", pa.string()),  # the page's text layer (None: none extracted)
    pa.field("skip_reason", pa.string()),  # None: embedded; else why the page was skipped
    pa.field("title", pa.string()),
    pa.field("author", pa.string()),
    pa.field("subject", pa.string()),
    pa.field("created", pa.string()),  # ISO 8601 from the PDF's CreationDate, else None
    pa.field("modified", pa.string()),
    pa.field("file_size", pa.int64()),  # for the size+mtime check before hashing
    pa.field("file_mtime_ns", pa.int64()),
    pa.field("explicit", pa.bool_()),  # indexed by naming the file (not found in a folder)
    pa.field("indexed_at", pa.string()),  # ISO 8601 UTC
])

META_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.string())])

# Format 1 -> 2: the columns added, with the SQL that fills them on existing rows.
ADDED_IN_2 = {
    "page_id": "CAST(NULL AS STRING)", "generation": "CAST(NULL AS STRING)", "n_pages": "CAST(NULL AS INT)",
    "dpi": "CAST(NULL AS INT)", "text": "CAST(NULL AS STRING)", "skip_reason": "CAST(NULL AS STRING)",
    "title": "CAST(NULL AS STRING)", "author": "CAST(NULL AS STRING)", "subject": "CAST(NULL AS STRING)",
    "created": "CAST(NULL AS STRING)", "modified": "CAST(NULL AS STRING)",
    "file_size": "CAST(NULL AS BIGINT)", "file_mtime_ns": "CAST(NULL AS BIGINT)", "explicit": "false",
    "indexed_at": "CAST(NULL AS STRING)",
}


def generation(sha256: str, dpi: int, embedder_id: str) -> str:
    """What made a document's rows: "{sha256[:16]}-d{dpi}-e{sha256(embedder id)[:8]}"."""
    import hashlib

    return f"{sha256[:16]}-d{dpi}-e{hashlib.sha256(embedder_id.encode()).hexdigest()[:8]}"


def row_key(doc_path: str, gen: str, page: int) -> str:
    return f"{doc_path}#{gen}#{page}"


def page_id(doc_sha256: str, page: int) -> str:
    """A page's stable id: its document's content hash and its page number.

    It survives re-indexing, compaction and moving the folder, so a link to a page stays valid
    while the document's bytes do not change.
    """
    return f"{doc_sha256[:16]}-{page}"


def sql_quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
