"""The page index: one LanceDB table in an embedded database folder.

Each row is one PDF page: the document's path and sha256, the 1-based page number, the page
image as PNG and its size, the ColQwen2 multi-vector (float16) and the embedder's id.

Crash safety comes from LanceDB's commits: every write below is a single commit (one new table
version), so a document's pages appear or are replaced all at once, and a process killed at
any moment leaves the last committed version intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import RagvlError
from ..fsutil import atomic_write
from ..models.contract.names import VECTOR_DIM as DIM

TABLE = "pages"
META = "ragvl-index.json"
FORMAT_VERSION = 1
DEFAULT_DB = ".ragvl"

SCHEMA = pa.schema([
    pa.field("key", pa.string()),  # "{doc_path}#{page}": the merge key
    pa.field("doc_path", pa.string()),
    pa.field("doc_sha256", pa.string()),
    pa.field("page", pa.int32()),  # 1-based
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("image_png", pa.binary()),
    pa.field("n_vectors", pa.int32()),
    pa.field("vectors", pa.list_(pa.list_(pa.float16(), DIM))),
    pa.field("embedder", pa.string()),
    pa.field("text", pa.string()),  # the page's text layer (PyMuPDF get_text); null: none (a scan)
])
TABLE_ID_KEY = b"ragvl.table_id"  # schema metadata: a uuid minted when the table is created


def default_db() -> Path | str:
    """RAGVL_DB, else .ragvl: a local folder (Path), or an object-storage URI (str)."""
    from .objstore import normalize_db

    return normalize_db(os.environ.get("RAGVL_DB", DEFAULT_DB))


@dataclass
class PageRow:
    """One page ready to store."""

    page: int
    width: int
    height: int
    image_png: bytes
    vectors: np.ndarray  # (n, 128)
    text: str | None = None  # the text layer; None: the page has none


def vectors_array(mats: list[np.ndarray]) -> pa.ListArray:
    """Ragged (n_i, 128) matrices as list<fixed_size_list<float16, 128>>, without Python loops."""
    flat = np.concatenate([m.astype(np.float16) for m in mats]) if mats else np.zeros((0, DIM), np.float16)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in mats])]).astype(np.int32)
    rows = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), DIM)
    return pa.ListArray.from_arrays(pa.array(offsets), rows)


def vectors_from_column(col: pa.ChunkedArray | pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of vectors_array: (all rows (N, 128) float16, row offsets (n_pages + 1,))."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], type=SCHEMA.field("vectors").type)
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = col.values.slice(offsets[0], offsets[-1] - offsets[0]) if len(col) else col.values.slice(0, 0)
    flat = np.asarray(values.flatten(), dtype=np.float16).reshape(-1, DIM)
    return flat, offsets - offsets[0]


def page_id(doc_sha256: str, page: int) -> str:
    """A page's stable id: its document's content hash and its page number.

    It survives re-indexing, compaction and moving the folder, so a link to a page stays valid
    while the document's bytes do not change.
    """
    return f"{doc_sha256[:16]}-{page}"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class PageStore:
    """The `pages` table of the database folder `db`, or of an object-storage URI (`s3://b/p`).

    A remote index keeps its metadata in a `meta` table (objstore.MetaTable) and has no `path`;
    `name` is what messages call either kind.
    """

    def __init__(self, db: str | Path, create: bool = False):
        import lancedb

        from .objstore import MetaTable, connect, is_uri, new_index_id

        self.remote = is_uri(db)
        if self.remote:
            self.path, self.name = None, str(db).rstrip("/")
            self._db = connect(self.name)
            self._meta_table = MetaTable(self._db, self.name)
            if not create and not self._meta_table.exists():
                raise RagvlError(f"{self.name}: no ragvl index here (build one with `ragvl index PATH --db {self.name}`)")
        else:
            self.path = Path(db)
            self.name = str(self.path)
            if not create and not (self.path / META).exists():
                raise RagvlError(f"{self.path}: no ragvl index here (build one with `ragvl index PATH`)")
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.path))
        try:
            self.table = self._db.open_table(TABLE)
        except (ValueError, FileNotFoundError):
            if not create:
                raise RagvlError(f"{self.name}: the index has no pages table (run `ragvl index PATH`)") from None
            import uuid

            # The table's identity travels with it: a table deleted and recreated gets a new one
            # (its version numbers restart), so caches keyed by (identity, version) never collide.
            schema = SCHEMA.with_metadata({TABLE_ID_KEY: uuid.uuid4().hex.encode()})
            self.table = self._db.create_table(TABLE, schema=schema, exist_ok=True)
        self.meta = self._read_meta()
        if self.remote and "index_id" not in self.meta:
            self.write_meta(index_id=new_index_id())

    @property
    def cache_dir(self) -> Path:
        """Where the search cache of this index lives: beside a local table, under the cache home
        (keyed by URI and index id) for a remote one."""
        if not self.remote:
            return self.path / "cache"
        from .objstore import cache_dir

        return cache_dir(self.name, self.meta["index_id"])

    # -- metadata ---------------------------------------------------------------------------
    def _read_meta(self) -> dict:
        if self.remote:
            return self._meta_table.read()
        try:
            return json.loads((self.path / META).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RagvlError(f"{self.path / META}: unreadable index metadata ({e})") from None

    def write_meta(self, **fields) -> None:
        self.meta = {"format_version": FORMAT_VERSION, **self.meta, **fields}
        if self.remote:
            self._meta_table.write(self.meta)
            return
        atomic_write(self.path / META, json.dumps(self.meta, indent=2) + "\n")

    @property
    def embedder(self) -> str | None:
        return self.meta.get("embedder")

    def check_embedder(self, embedder_id: str) -> None:
        """The vectors of one index must all come from one embedder: anything else is an error."""
        if self.embedder and self.embedder != embedder_id:
            raise RagvlError(f"{self.name}: this index was built with embedder {self.embedder}, not "
                             f"{embedder_id}; pass the same --embedder, or use another --db")

    # -- reads ------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.table.version)

    @property
    def table_id(self) -> str:
        """The table's identity: the uuid minted at creation, or, for a table created before
        ragvl recorded one, the time its oldest remaining version was written."""
        md = self.table.schema.metadata or {}
        if TABLE_ID_KEY in md:
            return md[TABLE_ID_KEY].decode()
        versions = self.table.list_versions()
        return "created-" + (str(min(v["timestamp"] for v in versions)) if versions else "?")

    def at_version(self, version: int):
        """A LanceDB table handle pinned to `version` (later commits by others are not seen)."""
        t = self._db.open_table(TABLE)
        t.checkout(int(version))
        return t

    def has_column(self, name: str) -> bool:
        return name in self.table.schema.names

    def count(self) -> int:
        return int(self.table.count_rows())

    def scan(self, columns: list[str], where: str | None = None) -> pa.Table:
        """Selected columns of every row (never the images unless asked)."""
        q = self.table.search().select(columns)
        if where:
            q = q.where(where)
        return q.limit(None).to_arrow()

    def documents(self) -> dict[str, tuple[str, int]]:
        """{doc_path: (sha256, page count)} of every indexed document."""
        t = self.scan(["doc_path", "doc_sha256"])
        out: dict[str, tuple[str, int]] = {}
        for path, sha in zip(t["doc_path"].to_pylist(), t["doc_sha256"].to_pylist()):
            _, n = out.get(path, (sha, 0))
            out[path] = (sha, n + 1)
        return out

    def page_image(self, doc_path: str, page: int) -> bytes:
        t = self.scan(["image_png"], where=f"key = {_quote(f'{doc_path}#{page}')}")
        if t.num_rows == 0:
            raise RagvlError(f"{self.name}: no page {page} of {doc_path} in the index")
        return t["image_png"][0].as_py()

    # -- writes: each one commit ------------------------------------------------------------
    def put_document(self, doc_path: str, sha256: str, pages: list[PageRow], embedder_id: str) -> None:
        """Insert or replace all pages of one document in a single commit."""
        rows = pa.Table.from_pydict({
            "key": [f"{doc_path}#{p.page}" for p in pages],
            "doc_path": [doc_path] * len(pages),
            "doc_sha256": [sha256] * len(pages),
            "page": [p.page for p in pages],
            "width": [p.width for p in pages],
            "height": [p.height for p in pages],
            "image_png": [p.image_png for p in pages],
            "n_vectors": [len(p.vectors) for p in pages],
            "vectors": vectors_array([p.vectors for p in pages]),
            "embedder": [embedder_id] * len(pages),
            "text": [p.text for p in pages],
        }, schema=SCHEMA)
        if not self.has_column("text"):  # an index made before the text layer column
            rows = rows.drop_columns(["text"])
        (self.table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(f"doc_path = {_quote(doc_path)}").execute(rows))

    def remove_documents(self, doc_paths: list[str]) -> None:
        """Delete every page of the given documents in a single commit."""
        if doc_paths:
            self.table.delete("doc_path IN (" + ", ".join(_quote(p) for p in doc_paths) + ")")
