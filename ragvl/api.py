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
(ragvl.store.writer_lock). The index remembers its embedder: without `embedder=` the
recorded one is used (ragvl.store.embedder_ref).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from .answer import ANSWER_MAX_PIXELS, Answer, answer_question, follow_up_question
from .errors import RagvlError
from .retrieval import MODES, Filters, Hit, PageSearch, allowed_keys, fingerprint, read_snapshot, record_snapshot
from .store import (DEFAULT_MAX_BYTES, Document, FORMAT_VERSION, K_EMBEDDER, PageStore, StoreInfo, K_VISION_CACHE,
                    VisionCache, default_db, find_recorded, folder_id, is_uri, normalize_db,
                    writer_lock)
from .models.contract import KIND_ANSWERER, KIND_EMBEDDER, resolve_model
from .models.runtime import ColQwen2, GenerationSettings, MAX_PIXELS, Qwen2VL
from .progress import Progress

if TYPE_CHECKING:
    from .indexing.distributed import RayOptions
    from .retrieval import SimilarityMap
    from .indexing import IndexSummary


class Index:
    """A page index (a folder, or an `s3://` URI) plus the models that build and read it, loaded
    when first needed.

    `embedder` / `answerer` are converted model folders (or names installed in the model home);
    by default the index's recorded embedder, else the installed defaults (`ragvl models pull`).
    `device` is "cpu" or "cuda"; `threads` onnxruntime's threads per session (default:
    RAGVL_THREADS, else every CPU). `wait`: a writer waits for another writer (else fails at once).
    `quick_start`: for a process that embeds a query or two (the CLI's `search` and `ask`): the
    embedder's weights stay memory-mapped instead of being repacked at load; it opens 1-2 s sooner
    with ~1.2 GB less private memory (2B int8, 2 cores), each query embeds ~0.2 s slower.

    A visual search without filters on a local index is answered from the index's search snapshot
    while it is exact (ragvl.retrieval.snapshot), without opening LanceDB.
    """

    def __init__(self, db: str | Path | None = None, embedder: str | Path | None = None,
                 answerer: str | Path | None = None, device: str | None = None,
                 log: Callable[[str], None] | None = None, wait: bool = True, threads: int | None = None,
                 *, quick_start: bool = False):
        self.db = normalize_db(db) if db is not None else default_db()  # a Path, or an s3:// URI string
        self._embedder_arg, self._answerer_arg = embedder, answerer
        self.device, self.wait, self.threads, self.quick_start = device, wait, threads, quick_start
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._embedder: ColQwen2 | None = None
        self._answerer: Qwen2VL | None = None
        self._search: PageSearch | None = None
        self._snapshot_search: PageSearch | None = None  # over a Snapshot (visual search without LanceDB)
        self._search_lock = threading.Lock()  # servers search from many threads: build the view once

    # -- models ---------------------------------------------------------------------------
    def _embedder_folder(self, store: StoreInfo | None, *, reembed: bool = False) -> tuple[Path, int]:
        """The embedder's folder and max_pixels: explicit, else the index's record, else the default."""
        explicit = self._embedder_arg or os.environ.get("RAGVL_EMBEDDER")
        record = (store.meta.get(K_EMBEDDER) or {}) if store is not None else {}
        max_pixels = record.get("max_pixels") or MAX_PIXELS
        if explicit:
            folder = resolve_model(KIND_EMBEDDER, explicit, "--embedder")
        elif record.get("id"):
            folder = find_recorded(self.db, record, allow_changed=reembed)
        else:
            folder = resolve_model(KIND_EMBEDDER, None)
        return Path(folder), int(max_pixels)

    def _load_embedder(self, store: StoreInfo | None, *, reembed: bool = False) -> ColQwen2:
        if self._embedder is None:
            folder, max_pixels = self._embedder_folder(store, reembed=reembed)
            self.log(f"embedder: {folder}")
            self._embedder = ColQwen2(folder, device=self.device, max_pixels=max_pixels, threads=self.threads,
                                      prepack=not self.quick_start)
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
            self._answerer = Qwen2VL(folder, device=self.device, threads=self.threads)
        return self._answerer

    # -- writes ---------------------------------------------------------------------------
    def writer_lock(self):
        """The index's one-writer lock, local or on object storage (every writer takes it: the CLI,
        the API, the server's jobs, a run with Ray workers); `wait=False` fails at once."""
        return writer_lock(self.db, wait=self.wait, log=self.log)

    def index(self, paths: Iterable[str | Path], dpi: int | None = None, progress: bool = True, *,
              prune: bool = False, reembed: bool = False, on_progress: Callable[[Progress], None] | None = None,
              cluster: "RayOptions | None" = None, vision_cache: bool = True,
              vision_cache_bytes: int | None = None) -> IndexSummary:
        """Bring the index up to date with the PDFs and image files under `paths` (files or folders).

        `dpi`: default the index's recorded dpi (120 for a new index); another value re-renders
        the documents indexed now. `prune`: also remove documents whose files are gone.
        `reembed`: re-embed every document not embedded by the current embedder.
        `on_progress(p)` is called after every page with the Progress (done, total, rate(), note).
        `cluster` (ragvl.indexing.distributed.RayOptions) embeds on a Ray cluster instead of this process.
        `vision_cache`: keep each page's vision features for `ask` (store/vision_cache.py), within
        `vision_cache_bytes` (default: the index's recorded cap, else 4 GiB; recorded in the index).
        """
        # Imported here: PyMuPDF costs ~1 s of every `ragvl search` / `ask` start otherwise.
        from .indexing import index_paths
        from .ingest import find_documents

        paths = list(paths)
        find_documents(paths)  # a missing path fails before the model loads
        existing = self._open() if _is_index(self.db) else None
        if cluster is not None:  # the same run, its pages embedded by Ray actors (started only if needed)
            from .indexing.distributed import RayEmbedding

            folder, max_pixels = self._embedder_folder(existing, reembed=reembed)
            embedder = RayEmbedding(folder, cluster, max_pixels=max_pixels, log=self.log)
        else:
            embedder = self._load_embedder(existing, reembed=reembed)  # a missing model: before any folder is made
        try:
            with self.writer_lock() as held:
                store = PageStore(self.db, create=True)
                cap = _vision_cap(store, vision_cache_bytes)
                if store.meta.get(K_VISION_CACHE, {}).get("max_bytes") != cap:
                    store.write_meta(**{K_VISION_CACHE: {"max_bytes": cap}})
                vision = VisionCache(self.db, max_bytes=cap if vision_cache else 0)
                summary = index_paths(paths, store, embedder, dpi=dpi, prune=prune, reembed=reembed, log=self.log,
                                      progress=progress, on_progress=on_progress, vision=vision, check=held.check)
        finally:
            if cluster is not None:
                embedder.close()
        self._search = None
        return summary

    def remove(self, paths: Iterable[str | Path]) -> list[str]:
        """Remove documents (files, or every document under a folder) in one commit.

        A path that matches nothing in the index is an error naming it, and nothing is removed.
        Returns the absolute paths removed.
        """
        paths = list(paths)
        with self.writer_lock():
            store = self._open()
            docs = store.documents()
            chosen: dict[str, None] = {}
            for raw in paths:
                p = Path(os.path.abspath(os.path.expanduser(os.fspath(raw))))
                hits = [d for d in docs if store.resolve(d) == p or store.resolve(d).is_relative_to(p)
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

    def listing(self) -> list[dict]:
        """What `ragvl ls --json` lists: every indexed document as a dict, its path absolute."""
        store = self._open()
        return [{**d.as_dict(), "path": str(store.resolve(d.path))} for d in self.documents()]

    def size_on_disk(self) -> int:
        """Bytes the index takes on this machine's disk (0 for none yet, or one on object storage)."""
        return self._open().size_on_disk() if _is_index(self.db) else 0

    def status(self) -> dict:
        """What `ragvl status` shows: sizes, the embedder, and what needs attention."""
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

    def searcher(self) -> PageSearch:
        """The search over the index's current version (cached until the index changes)."""
        before = None if is_uri(self.db) else fingerprint(self.db)  # taken before the store opens
        store = self._store()
        with self._search_lock:
            if self._search is None or self._search.version != store.version:
                self._search = PageSearch(store, log=self.log)
                record_snapshot(store, self._search.view, before)
            return self._search

    def _snapshot_searcher(self) -> PageSearch | None:
        """A visual search over the index's exact search snapshot (no LanceDB), or None."""
        if is_uri(self.db):
            return None
        with self._search_lock:
            s = self._snapshot_search
            if s is None or s.store.fingerprint != fingerprint(self.db):
                snap = read_snapshot(self.db)
                s = self._snapshot_search = None if snap is None else PageSearch(snap, view=snap.view)
            return s

    def search(self, query: str, k: int = 5, *, mode: str = "visual", in_paths: Iterable | None = None,
               globs: Iterable | str | None = None, where: Iterable | str | None = None) -> list[Hit]:
        """The k pages that best match `query`, best first.

        `mode`: "visual" (the model's MaxSim ranking, exact scores), "text" (BM25 over the
        pages' text layer) or "hybrid" (reciprocal rank fusion of both); each Hit says which
        mode ranked it and its rank in each ranking. Filters (ragvl.retrieval.filters), applied
        before ranking: `in_paths` files/folders, `globs` patterns on document paths, `where`
        conditions on PDF metadata ("author=Alice", "created>=2024").
        """
        return self._rank(query, k, mode, Filters.of(in_paths, globs, where), snapshot=True)[0]

    def _rank(self, query: str, k: int, mode: str, filters: Filters, *,
              snapshot: bool) -> tuple[list[Hit], PageSearch, float]:
        """search(), the searcher that ranked (its store: a PageStore unless `snapshot`), and the
        seconds spent opening the embedder's sessions (0.0 once open: VisionLanguageModel.ensure_open)."""
        if mode not in MODES:
            raise RagvlError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
        searcher = None
        if snapshot and mode == "visual" and not filters:
            searcher = self._snapshot_searcher()
        searcher = searcher or self.searcher()
        store = searcher.store
        q, load_s = None, 0.0
        if mode != "text":  # the model's ranking: the index's vectors must be this embedder's
            embedder = self._load_embedder(store)
            store.check_embedder(embedder.id)
            load_s = embedder.ensure_open("embed", "encoder")  # what a query runs: no vision tower
            q = embedder.embed_queries([query])[0]
        allowed = _allowed_mask(searcher, allowed_keys(store, filters)) if filters else None
        n = searcher.distinct_pages(allowed)
        if k > n:
            self.log(f"note: -k {k} is more than the {n} pages {'matching the filters' if filters else 'in the index'}"
                     "; returning all")
        hits = searcher.search(q, k, allowed=allowed, mode=mode, text=query)
        # stored paths are relative to the index's parent folder: give them whole
        return [replace(h, path=str(store.resolve(h.path)), also=tuple(str(store.resolve(a)) for a in h.also))
                for h in hits], searcher, load_s

    def ask(self, question: str, k: int = 3, settings: GenerationSettings | None = None,
            max_pixels: int = ANSWER_MAX_PIXELS, *, mode: str = "visual", in_paths: Iterable | None = None,
            globs: Iterable | str | None = None, where: Iterable | str | None = None, vision_cache: bool = True,
            follow_up: Answer | None = None) -> Answer:
        """Retrieve the top-k pages (`mode` and filters as :meth:`search`) and answer over their
        images; iterate the result to stream.

        Pages whose vision features were stored at indexing by an identical vision tower are not
        encoded again (`vision_cache=False` encodes every page); `Answer.vision` says what happened.
        `follow_up`: a previous, complete answer. When the question retrieves the same pages, the
        conversation goes on from its KV cache (`Answer.continued`); otherwise a new prompt starts
        over the new pages, and a note says so.

        Timings (`Answer.as_dict()["timings"]`): `load_s` is the time spent opening sessions, the
        embedder's during retrieval and the answer model's before its vision and prefill;
        `retrieval_s` and the answer's stages exclude it.
        """
        t0 = time.perf_counter()
        # The answer model's prompt graphs load (seconds) while the pages are retrieved; what is
        # left of that when the prefill starts is waited for into the answer's load_s.
        self.answerer.open_in_background("embed", "decoder")
        # the full path: the answer reads the pages' images from the same pinned store
        hits, searcher, load_s = self._rank(question, k, mode, Filters.of(in_paths, globs, where), snapshot=False)
        if not hits:
            raise RagvlError(f"{self.db}: no page matches the filters")
        store = searcher.store
        settings = settings or self.answerer.defaults
        if follow_up is not None:
            if follow_up.conversation is None:
                raise RagvlError("follow_up: the previous answer is not complete (consume it first)")
            cont = follow_up_question(self.answerer, follow_up, question, hits, settings,
                                      retrieval_s=time.perf_counter() - t0 - load_s, load_s=load_s)
            if cont is not None:
                return cont
        vision = VisionCache(self.db) if vision_cache else None
        answer = answer_question(self.answerer, store, question, hits, settings, max_pixels,
                                 retrieval_s=time.perf_counter() - t0 - load_s, vision=vision, load_s=load_s)
        if follow_up is not None:
            answer.follow_up_of = follow_up
            answer.notes.insert(0, "this follow-up retrieved other pages than the previous answer: "
                                   "started a new prompt over them (the earlier turns are not in it)")
        return answer

    # -- pages and maps (the web page, HTTP API and MCP server use these) ----------------------
    def page_image(self, page_id: str) -> bytes:
        """The stored PNG of the page `page_id` (Hit.id)."""
        from .store import page_row

        return page_row(self._store(), page_id, ["image_png"])["image_png"]

    def explain(self, query: str, page_ids: Iterable[str]) -> list["SimilarityMap"]:
        """Similarity maps of `query` on the given pages (Hit.id): `.grid` is the array, `.image()` the PIL picture."""
        from .retrieval import explain_page

        store = self._store()
        embedder = self._load_embedder(store)
        store.check_embedder(embedder.id)
        q = embedder.embed_queries([query])[0]
        ids = embedder.query_ids(query)
        return [explain_page(store, embedder, q, ids, pid) for pid in page_ids]


def _is_index(db: Path | str) -> bool:
    """Whether `db` holds an index (of any format), as opposed to nothing or a bare lock file."""
    from .store import LEGACY_META_FILE, META_TABLE

    if is_uri(db):  # object storage: opening it tells
        try:
            PageStore(db)
            return True
        except RagvlError:
            return False
    return (db / f"{META_TABLE}.lance").exists() or (db / LEGACY_META_FILE).exists()


def _allowed_mask(searcher: PageSearch, allowed: set[tuple[str, int]] | None) -> np.ndarray | None:
    """The filter's allowed (stored path, page) pairs as one bool per row of the searcher's view."""
    if allowed is None:
        return None
    rows = searcher.rows()
    return np.array([(p, int(n)) in allowed for p, n in zip(rows["doc_path"].to_pylist(), rows["page"].to_pylist())],
                    dtype=bool)


def _vision_cap(store: PageStore, requested: int | None) -> int:
    """The vision feature cap in bytes: as requested, else as recorded in the index, else the default."""
    if requested is not None:
        if requested < 0:
            raise RagvlError(f"vision cache size {requested}: must be >= 0 bytes")
        return int(requested)
    return int(store.meta.get(K_VISION_CACHE, {}).get("max_bytes", DEFAULT_MAX_BYTES))
