"""The page index: LanceDB tables `pages` and `meta` in one database folder (see schema.py).

Crash safety comes from LanceDB's commits: each write below is one commit (one new table
version); a document's new generation is written in batches that readers do not see, then made
the searched one by a single commit (`switch`). A process killed at any moment leaves the last
committed version intact, and the next run resumes from the batches already committed.

Paths: a document under the folder that contains the index folder (the usual `.ragvl/` beside
the documents) is stored relative to that folder, anything else absolutely; so moving a project
folder together with its `.ragvl/` keeps every path valid with no re-embedding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import RagvlError
from .schema import (DIM, FORMAT_VERSION, K_FORMAT, LEGACY_META_FILE, META_SCHEMA, META_TABLE,
                     METADATA_FIELDS, PAGE_ROWS, PAGES, PENDING, SCHEMA, SEARCHABLE, generation, page_id, row_key,
                     sql_quote)
from .info import StoreInfo

__all__ = ["PageStore", "PageRow", "DocFields", "Document", "vectors_array", "vectors_from_column", "page_id",
           "default_db", "DEFAULT_DB", "FORMAT_VERSION", "SEARCHABLE"]

DEFAULT_DB = ".ragvl"
_DOC_COLUMNS = ["doc_path", "doc_sha256", "generation", "page", "n_pages", "file_size", "file_mtime_ns", "dpi", "embedder",
                "explicit", "indexed_at", "skip_reason", *METADATA_FIELDS]
TABLE_ID_KEY = b"ragvl.table_id"  # schema metadata: a uuid minted when the table is created


def default_db() -> Path | str:
    """RAGVL_DB, else .ragvl: a local folder (Path), or an object-storage URI (str)."""
    from .objstore import normalize_db

    return normalize_db(os.environ.get("RAGVL_DB", DEFAULT_DB))


@dataclass
class PageRow:
    """One page ready to store: an embedded page, or a skipped one (skip_reason, no vectors)."""

    page: int
    width: int = 0
    height: int = 0
    image_png: bytes = b""
    vectors: np.ndarray | None = None  # (n, 128)
    text: str | None = None
    skip_reason: str | None = None


@dataclass
class DocFields:
    """What every page row of one document generation repeats."""

    sha256: str
    n_pages: int
    embedder: str
    dpi: int
    file_size: int | None = None
    file_mtime_ns: int | None = None
    explicit: bool = False
    metadata: dict = field(default_factory=dict)  # title, author, subject, created, modified

    @property
    def generation(self) -> str:
        return generation(self.sha256, self.dpi, self.embedder)


@dataclass
class Document:
    """One indexed document as `ragvl ls` shows it: its live generation, and pending ones."""

    path: str  # as stored
    sha256: str | None = None  # live generation; None: only pending rows so far
    n_pages: int = 0  # the document's page count
    pages: int = 0  # live rows
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (page, reason) of the live generation
    file_size: int | None = None
    file_mtime_ns: int | None = None
    dpi: int | None = None
    embedders: set = field(default_factory=set)
    explicit: bool = False
    indexed_at: str | None = None
    metadata: dict = field(default_factory=dict)
    generation: str | None = None  # of the live rows
    pending: dict = field(default_factory=dict)  # {generation: set(pages)} of rows not yet switched live

    def as_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "pages": self.pages, "n_pages": self.n_pages,
                "skipped": [{"page": p, "reason": r} for p, r in self.skipped], "indexed_at": self.indexed_at,
                "dpi": self.dpi, "embedder": sorted(self.embedders), **self.metadata}


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


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PageStore(StoreInfo):
    """The index in database folder `db`, or at an object-storage URI (`s3://bucket/path`).
    `create=True` makes a new one if none is there. `name` is what messages call either kind.

    Opening an index of an older format migrates it in place (ragvl.store.migrate), under the
    writer lock; `migrate=False` refuses instead (for callers that already hold the lock).
    Its metadata reads (embedder, dpi, check_embedder, resolve) are StoreInfo's.
    """

    def __init__(self, db: str | Path, create: bool = False, *, migrate: bool = True):
        import lancedb

        from .objstore import connect, is_uri, new_index_id

        self.remote = is_uri(db)
        if self.remote:  # object storage: no folder, paths stored as given, metadata in the meta table
            self.path, self.root, self.name = None, None, str(db).rstrip("/")
        else:
            self.path = Path(db)
            self.name = str(self.path)
            self.root = self.path.resolve().parent  # documents under it are stored relative to it
            if not self.path.is_dir() and not create:
                raise RagvlError(f"{self.name}: no ragvl index here (build one with `ragvl index PATH`)")
        try:
            self._db = connect(self.name) if self.remote else lancedb.connect(str(self.path))
            tables = set(self._db.list_tables().tables)
        except (OSError, ValueError, RuntimeError) as e:
            raise RagvlError(f"{self.name}: cannot open the index ({e})") from None
        if not self.remote and (self.path / LEGACY_META_FILE).exists():  # format 1 (or a migration that was cut short)
            if not migrate:
                raise RagvlError(f"{self.name}: index of format 1; open it once to migrate it")
            from .migrate import migrate_to_current

            migrate_to_current(self)
            tables = set(self._db.list_tables().tables)
        if META_TABLE not in tables or PAGES not in tables:
            if not create:
                raise RagvlError(f"{self.name}: no ragvl index here (build one with `ragvl index PATH`)")
            import uuid

            # The table's identity travels with it: a table deleted and recreated gets a new one
            # (its version numbers restart), so caches keyed by (identity, version) never collide.
            schema = SCHEMA.with_metadata({TABLE_ID_KEY: uuid.uuid4().hex.encode()})
            self.table = self._db.create_table(PAGES, schema=schema, exist_ok=True)
            # then meta created WITH its format row in one commit: meta's presence means an index
            # and the index id (keys a remote index's search cache) minted here, by the writer
            first = pa.Table.from_pydict({"key": [K_FORMAT, "index_id"],
                                          "value": [json.dumps(FORMAT_VERSION), json.dumps(new_index_id())]},
                                         schema=META_SCHEMA)
            self._meta = self._db.create_table(META_TABLE, data=first, schema=META_SCHEMA, exist_ok=True)
            self.meta = self._read_meta()
        else:
            self.table = self._db.open_table(PAGES)
            self._meta = self._db.open_table(META_TABLE)
            self.meta = self._read_meta()
        fmt = self.meta.get(K_FORMAT)
        if fmt != FORMAT_VERSION:
            raise RagvlError(f"{self.name}: index format {fmt}, this ragvl reads format {FORMAT_VERSION} "
                             "(upgrade ragvl, or rebuild the index with `ragvl index` into a new --db)")
        if create and "index_id" not in self.meta:  # an index made before ids were minted at creation
            self.write_meta(index_id=new_index_id())  # `create`: only writers open with it, under the lock

    @property
    def cache_dir(self) -> Path:
        """Where the search cache of a remote index lives: under the cache home, keyed by its URI
        and index id (a local index keeps its cache in its own folder, see cache.cache_root)."""
        from .objstore import cache_dir

        return cache_dir(self.name, self.meta.get("index_id") or self.table_id)  # a reader never writes one

    # -- metadata ---------------------------------------------------------------------------
    def _read_meta(self) -> dict:
        rows = self._meta.to_arrow().to_pylist()
        try:
            return {r["key"]: json.loads(r["value"]) for r in rows}
        except ValueError as e:
            raise RagvlError(f"{self.name}: unreadable index metadata ({e})") from None

    def write_meta(self, **fields) -> None:
        """Set meta keys in one commit."""
        if not fields:
            return
        t = pa.Table.from_pydict({"key": list(fields), "value": [json.dumps(v) for v in fields.values()]},
                                 schema=META_SCHEMA)
        self._meta.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(t)
        self.meta = {**self.meta, **fields}

    # -- paths ------------------------------------------------------------------------------
    def stored_path(self, path: str | os.PathLike) -> str:
        """How `path` is stored: relative (posix) to the index folder's parent if under it."""
        if self.remote:  # relative to an index on object storage means nothing: as given (absolute)
            return str(Path(os.path.abspath(os.path.expanduser(os.fspath(path)))))
        p = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            pass
        try:  # the file's real location may be under the root though the path given is not
            return p.resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return str(p)

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
        t = self._db.open_table(PAGES)
        t.checkout(int(version))
        return t

    def has_column(self, name: str) -> bool:
        return name in self.table.schema.names


    def pin(self) -> "PageStore":
        """Read this store at its current version from now on (a reader's consistent snapshot)."""
        self.table.checkout(self.table.version)
        return self

    def pending_generations(self, table=None) -> set[str]:
        """Generations with a pending marker: written in part, not searched yet (in `table`, a
        handle pinned to some version, else this store's)."""
        t = (table or self.table).search().select(["generation"]).where(f"page = 0 AND skip_reason = '{PENDING}'")
        return set(t.limit(None).to_arrow()["generation"].to_pylist())

    def searchable_in(self, table) -> str:
        """The searchable-pages predicate for `table`, a handle pinned to some version (at_version)."""
        return self._hiding(SEARCHABLE, table)

    def _hiding(self, base: str, table=None) -> str:
        pending = self.pending_generations(table)
        if not pending:
            return base
        return f"{base} AND generation NOT IN ({', '.join(sql_quote(g) for g in sorted(pending))})"

    @property
    def visible(self) -> str:
        """Predicate of the pages readers see: complete generations only (skipped pages included)."""
        return self._hiding(PAGE_ROWS)

    @property
    def searchable(self) -> str:
        """Predicate of the pages a search may rank: visible and embedded."""
        return self._hiding(SEARCHABLE)

    def count(self, where: str | None = "searchable") -> int:
        """Rows matching `where` (default: searchable pages; None: every row)."""
        where = self.searchable if where == "searchable" else where
        return int(self.table.count_rows(where)) if where else int(self.table.count_rows())

    def scan(self, columns: list[str], where: str | None = "searchable") -> pa.Table:
        """Selected columns of the rows matching `where` (default: searchable pages; None: every row)."""
        where = self.searchable if where == "searchable" else where
        q = self.table.search().select(columns)
        if where:
            q = q.where(where)
        return q.limit(None).to_arrow()

    def documents(self) -> dict[str, Document]:
        """{stored path: Document} of every document with rows (complete or pending), one column scan."""
        t = self.scan(_DOC_COLUMNS, where=None).to_pydict()
        pending = {g for g, p, r in zip(t["generation"], t["page"], t["skip_reason"]) if p == 0 and r == PENDING}
        out: dict[str, Document] = {}
        for i, path in enumerate(t["doc_path"]):
            d = out.setdefault(path, Document(path))
            sha, page, gen = t["doc_sha256"][i], t["page"][i], t["generation"][i]
            if gen in pending:
                pages = d.pending.setdefault(gen, set())
                if page > 0:
                    pages.add(page)
                continue
            d.sha256, d.generation, d.pages = sha, gen, d.pages + 1
            d.n_pages = t["n_pages"][i] or 0
            d.file_size, d.file_mtime_ns, d.dpi = t["file_size"][i], t["file_mtime_ns"][i], t["dpi"][i]
            d.explicit, d.indexed_at = bool(t["explicit"][i]), t["indexed_at"][i]
            d.embedders.add(t["embedder"][i])
            d.metadata = {k: t[k][i] for k in METADATA_FIELDS}
            if t["skip_reason"][i] is not None:
                d.skipped.append((page, t["skip_reason"][i]))
        for d in out.values():
            d.skipped.sort()
            if d.sha256 and not d.n_pages:  # format-1 rows: documents were whole
                d.n_pages = d.pages
        return out

    def page_image(self, doc_path: str, page: int) -> bytes:
        """The stored PNG of a live page; `doc_path` as stored or as a file path."""
        stored = doc_path if doc_path and not Path(doc_path).is_absolute() else self.stored_path(doc_path)
        t = self.scan(["image_png"], where=f"{self.visible} AND doc_path = {sql_quote(stored)} AND page = {int(page)}")
        if t.num_rows == 0 or not t["image_png"][0].as_py():
            raise RagvlError(f"{self.name}: no page {page} of {doc_path} in the index")
        return t["image_png"][0].as_py()

    def generation_rows(self, doc_path: str, gen: str) -> list[PageRow]:
        """The page rows of generation `gen` of stored path `doc_path` (images, vectors, text and
        skips), for writing the same pages under another path."""
        t = self.scan(["page", "width", "height", "image_png", "vectors", "text", "skip_reason"],
                      where=f"{PAGE_ROWS} AND doc_path = {sql_quote(doc_path)} AND generation = {sql_quote(gen)}")
        flat, offsets = vectors_from_column(t["vectors"])
        d = t.drop(["vectors"]).to_pydict()
        rows = []
        for i in np.argsort(d["page"], kind="stable").tolist():
            skip = d["skip_reason"][i]
            rows.append(PageRow(d["page"][i], d["width"][i] or 0, d["height"][i] or 0, d["image_png"][i] or b"",
                                None if skip else flat[offsets[i]:offsets[i + 1]], d["text"][i], skip))
        return rows

    # -- writes: each one commit ------------------------------------------------------------
    def rows_table(self, doc_path: str, doc: DocFields, pages: list[PageRow]) -> pa.Table:
        """Arrow rows for some pages of one document generation."""
        n = len(pages)
        vecs = [p.vectors if p.vectors is not None else np.zeros((0, DIM), np.float16) for p in pages]
        when = now_iso()
        gen = doc.generation
        cols = {
            "key": [row_key(doc_path, gen, p.page) for p in pages],
            "page_id": [page_id(doc.sha256, p.page) for p in pages],
            "doc_path": [doc_path] * n, "doc_sha256": [doc.sha256] * n, "generation": [gen] * n,
            "page": [p.page for p in pages], "n_pages": [doc.n_pages] * n,
            "width": [p.width for p in pages], "height": [p.height for p in pages],
            "image_png": [p.image_png for p in pages], "n_vectors": [len(v) for v in vecs],
            "vectors": vectors_array(vecs), "embedder": [doc.embedder] * n, "dpi": [doc.dpi] * n,
            "text": [p.text for p in pages], "skip_reason": [p.skip_reason for p in pages],
            **{k: [doc.metadata.get(k)] * n for k in METADATA_FIELDS},
            "file_size": [doc.file_size] * n, "file_mtime_ns": [doc.file_mtime_ns] * n,
            "explicit": [doc.explicit] * n, "indexed_at": [when] * n,
        }
        return pa.Table.from_pydict(cols, schema=SCHEMA)

    def add_pages(self, doc_path: str, doc: DocFields, pages: list[PageRow], *, start_pending: bool = False) -> None:
        """Append one batch of a generation's pages in one commit.

        `start_pending`: the batch opens a generation written in several batches: its pending
        marker goes in the same commit, so none of its rows is searched until `switch`.
        Without it (and without an earlier marker) the rows are searchable at once.
        """
        if start_pending:
            pages = [PageRow(0, skip_reason=PENDING), *pages]
        if pages:
            self.table.add(self.rows_table(doc_path, doc, pages))

    def switch(self, doc_path: str, gen: str) -> None:
        """Make generation `gen` the searched version of `doc_path`: ONE commit (a delete).

        It deletes every other generation of the path and `gen`'s pending marker together.
        """
        self.table.delete(f"doc_path = {sql_quote(doc_path)} AND (generation != {sql_quote(gen)} OR page = 0)")

    def put_document(self, doc_path: str, sha256: str, pages: list[PageRow], embedder_id: str) -> None:
        """Write a whole document at once as its searched version (what tests and tools that hold
        every page use): a new path in one commit, a replaced one as a batch then the switch."""
        fields = DocFields(sha256, max((p.page for p in pages), default=0), embedder_id, int(self.dpi or 0))
        fresh = self.table.count_rows(f"doc_path = {sql_quote(doc_path)}") == 0
        self.add_pages(doc_path, fields, pages, start_pending=not fresh)
        if not fresh:
            self.switch(doc_path, fields.generation)

    def touch(self, doc_path: str, file_size: int, file_mtime_ns: int, explicit: bool) -> None:
        """Record a new size/mtime for an unchanged document (its hash was checked)."""
        self.table.update(where=f"doc_path = {sql_quote(doc_path)} AND page > 0",
                          values={"file_size": file_size, "file_mtime_ns": file_mtime_ns, "explicit": explicit})

    def remove_documents(self, doc_paths: list[str]) -> None:
        """Delete every row of the given stored paths in a single commit."""
        if doc_paths:
            self.table.delete("doc_path IN (" + ", ".join(sql_quote(p) for p in doc_paths) + ")")

    def size_on_disk(self) -> int:
        """Bytes under the index folder (0 for an index on object storage: not listed from here)."""
        if self.remote:
            return 0
        total = 0
        for dirpath, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total
