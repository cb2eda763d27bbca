"""The Python API: one object to index PDFs, search pages, ask questions and manage the index.

    from ragvl import Index
    idx = Index(".ragvl")                      # the index folder; models: the installed defaults
    idx.index(["docs/"])                       # incremental
    for hit in idx.search("revenue by region", k=5, in_paths=["docs/2024"]):
        print(hit.rank, hit.path, hit.page, hit.score)
    for piece in idx.ask("What does figure 3 show?", k=3):   # streams
        print(piece, end="")
    idx.documents(); idx.remove(["docs/old.pdf"]); idx.status()

The command line is a thin layer over this class. Every write takes the index's writer lock
(ragvl.index.lock.writer_lock). The index remembers its embedder: without `embedder=` the
recorded one is used (ragvl.index.embedder_ref).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from .answer.answering import ANSWER_MAX_PIXELS, Answer, answer_question
from .errors import RagvlError
from .index.filters import Filters
from .index.indexer import IndexSummary, index_paths
from .index.lock import writer_lock
from .index.schema import FORMAT_VERSION, K_EMBEDDER
from .index.search import Hit, PageSearch
from .index.store import Document, PageStore, default_db
from .models.contract.manifest import KIND_ANSWERER, KIND_EMBEDDER
from .models.contract.registry import resolve_model
from .models.runtime.colqwen2 import MAX_PIXELS, ColQwen2
from .models.runtime.generation import GenerationSettings
from .models.runtime.qwen2vl import Qwen2VL


class Index:
    """A page index folder plus the models that build and read it, loaded when first needed.

    `embedder` / `answerer` are converted model folders (or names installed in the model home);
    by default the index's recorded embedder, else the installed defaults (`ragvl models pull`).
    `device` is "cpu" or "cuda". `wait`: a writer waits for another writer (else fails at once).
    """

    def __init__(self, db: str | Path | None = None, embedder: str | Path | None = None,
                 answerer: str | Path | None = None, device: str | None = None,
                 log: Callable[[str], None] | None = None, wait: bool = True):
        self.db = Path(db) if db is not None else default_db()
        self._embedder_arg, self._answerer_arg = embedder, answerer
        self.device, self.wait = device, wait
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._embedder: ColQwen2 | None = None
        self._answerer: Qwen2VL | None = None
        self._search: PageSearch | None = None

    # -- models ---------------------------------------------------------------------------
    def _load_embedder(self, store: PageStore | None, *, reembed: bool = False) -> ColQwen2:
        if self._embedder is None:
            explicit = self._embedder_arg or os.environ.get("RAGVL_EMBEDDER")
            record = (store.meta.get(K_EMBEDDER) or {}) if store is not None else {}
            max_pixels = record.get("max_pixels") or MAX_PIXELS
            if explicit:
                folder = resolve_model(KIND_EMBEDDER, explicit, "--embedder")
            elif record.get("id"):
                from .index.embedder_ref import find_recorded

                folder = find_recorded(self.db, record, allow_changed=reembed)
            else:
                folder = resolve_model(KIND_EMBEDDER, None)
            self.log(f"embedder: {folder}")
            self._embedder = ColQwen2(folder, device=self.device, max_pixels=max_pixels)
        return self._embedder

    @property
    def embedder(self) -> ColQwen2:
        """The embedder: explicit, else the one the index recorded, else the installed default."""
        return self._load_embedder(self._open() if _is_index(self.db) else None)

    @property
    def answerer(self) -> Qwen2VL:
        if self._answerer is None:
            folder = resolve_model(KIND_ANSWERER, self._answerer_arg)
            self.log(f"answerer: {folder}")
            self._answerer = Qwen2VL(folder, device=self.device)
        return self._answerer

    # -- writes ---------------------------------------------------------------------------
    def index(self, paths: Iterable[str | Path], dpi: int | None = None, progress: bool = True, *,
              prune: bool = False, reembed: bool = False) -> IndexSummary:
        """Bring the index up to date with the PDFs under `paths` (files or folders).

        `dpi`: default the index's recorded dpi (120 for a new index); another value re-renders
        the documents indexed now. `prune`: also remove documents whose files are gone.
        `reembed`: re-embed every document not embedded by the current embedder.
        """
        from .pdf import find_pdfs

        paths = list(paths)
        find_pdfs(paths)  # a missing path fails before the model loads
        existing = self._open() if _is_index(self.db) else None
        embedder = self._load_embedder(existing, reembed=reembed)  # a missing model: before any folder is made
        with writer_lock(self.db, wait=self.wait, log=self.log):
            store = PageStore(self.db, create=True)
            summary = index_paths(paths, store, embedder, dpi=dpi, prune=prune, reembed=reembed, log=self.log,
                                  progress=progress)
        self._search = None
        return summary

    def remove(self, paths: Iterable[str | Path]) -> list[str]:
        """Remove documents (files, or every document under a folder) in one commit.

        A path that matches nothing in the index is an error naming it, and nothing is removed.
        Returns the absolute paths removed.
        """
        paths = list(paths)
        with writer_lock(self.db, wait=self.wait, log=self.log):
            store = self._open()
            docs = store.documents()
            chosen: dict[str, None] = {}
            for raw in paths:
                p = Path(os.path.abspath(os.path.expanduser(os.fspath(raw))))
                hits = [d for d in docs if store.resolve(d) == p or _under(store.resolve(d), p)
                        or d == os.fspath(raw)]
                if not hits:
                    raise RagvlError(f"{raw}: not in the index {self.db}; nothing removed")
                chosen.update(dict.fromkeys(hits))
            store.remove_documents(list(chosen))
        self._search = None
        return [str(store.resolve(d)) for d in chosen]

    # -- reads ----------------------------------------------------------------------------
    def _open(self) -> PageStore:
        return PageStore(self.db)

    def _store(self) -> PageStore:
        store = self._open().pin()  # one version for every read of this search: a consistent snapshot
        if store.count() == 0:
            raise RagvlError(f"{self.db}: the index is empty; add PDFs with `ragvl index PATH`")
        return store

    def documents(self) -> list[Document]:
        """Every indexed document (live generation), sorted by path."""
        return sorted((d for d in self._open().documents().values() if d.sha256), key=lambda d: d.path)

    def status(self) -> dict:
        """What `ragvl status` shows: sizes, the embedder, and what needs attention."""
        from .index.embedder_ref import folder_id

        store = self._open().pin()
        docs = store.documents()
        record = store.meta.get(K_EMBEDDER) or {}
        now = folder_id(record.get("folder"), record.get("max_pixels"))
        stale = sorted(d.path for d in docs.values() if d.sha256 and d.embedders - {record.get("id")})
        reasons = []
        if now is not None and now != record.get("id"):
            reasons.append(f"the embedder at {record.get('folder')} now makes {now}, the index holds "
                           f"{record.get('id')}")
        if stale:
            reasons.append(f"{len(stale)} documents were embedded by another embedder")
        return {
            "db": str(self.db), "format_version": FORMAT_VERSION, "version": store.version,
            "documents": sum(1 for d in docs.values() if d.sha256), "pages": store.count(),
            "embedder": {"id": record.get("id"), "folder": record.get("folder"),
                         "max_pixels": record.get("max_pixels"), "found": now == record.get("id")},
            "dpi": store.dpi, "size_bytes": store.size_on_disk(),
            "incomplete": sorted(str(store.resolve(d.path)) for d in docs.values() if d.pending),
            "skipped_pages": [{"path": str(store.resolve(d.path)), "page": p, "reason": r}
                              for d in sorted(docs.values(), key=lambda d: d.path) for p, r in d.skipped],
            "missing": sorted(str(store.resolve(d.path)) for d in docs.values()
                              if d.sha256 and not store.resolve(d.path).exists()),
            "needs_reembed": bool(reasons), "reembed_reasons": reasons,
        }

    def search(self, query: str, k: int = 5, *, in_paths: Iterable | None = None, globs: Iterable | str | None = None,
               where: Iterable | str | None = None) -> list[Hit]:
        """The k pages that best match `query`, best first, with exact MaxSim scores.

        Filters (ragvl.index.filters): `in_paths` files/folders, `globs` patterns on document
        paths, `where` conditions on PDF metadata ("author=Alice", "created>=2024").
        """
        filters = Filters.of(in_paths, globs, where)
        store = self._store()
        embedder = self._load_embedder(store)
        if self._search is None or self._search.version != store.version:
            store.check_embedder(embedder.id)
            self._search = PageSearch(store)
        allowed = store.allowed_keys(filters)
        n = len(self._search) if allowed is None else len(allowed)
        if k > n:
            self.log(f"note: -k {k} is more than the {n} pages {'matching the filters' if filters else 'in the index'}"
                     "; returning all")
        q = embedder.embed_queries([query])[0]
        return self._search.search(q, k, allowed)

    def ask(self, question: str, k: int = 3, settings: GenerationSettings | None = None,
            max_pixels: int = ANSWER_MAX_PIXELS, *, in_paths: Iterable | None = None,
            globs: Iterable | str | None = None, where: Iterable | str | None = None) -> Answer:
        """Retrieve the top-k pages (filters as `search`) and answer over their images; iterate to stream."""
        t0 = time.perf_counter()
        hits = self.search(question, k, in_paths=in_paths, globs=globs, where=where)
        if not hits:
            raise RagvlError(f"{self.db}: no page matches the filters")
        store = self._search.store
        return answer_question(self.answerer, store, question, hits, settings or self.answerer.defaults, max_pixels,
                               retrieval_s=time.perf_counter() - t0)


def _is_index(db: Path) -> bool:
    """Whether `db` holds an index (of any format), as opposed to nothing or a bare lock file."""
    from .index.schema import LEGACY_META_FILE, META_TABLE

    return (db / f"{META_TABLE}.lance").exists() or (db / LEGACY_META_FILE).exists()


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False
