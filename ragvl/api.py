"""The Python API: one object to index PDFs, search pages and ask questions.

    from ragvl import Index
    idx = Index(".ragvl")                      # the index folder; models: the installed defaults
    idx.index(["docs/"])                       # incremental
    for hit in idx.search("revenue by region", k=5):
        print(hit.rank, hit.path, hit.page, hit.score)
    for piece in idx.ask("What does figure 3 show?", k=3):   # streams
        print(piece, end="")

The command line is a thin layer over this class.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .answer.answering import ANSWER_MAX_PIXELS, Answer, answer_question, follow_up_question
from .errors import RagvlError
from .index.indexer import IndexSummary, index_paths
from .index.search import MODES, Hit, PageSearch
from .index.objstore import normalize_db, writer_lock
from .index.store import PageStore, default_db
from .index.vision_store import DEFAULT_MAX_BYTES, META_KEY as VISION_META, VisionStore
from .models.runtime.colqwen2 import ColQwen2
from .models.runtime.generation import GenerationSettings
from .models.contract.manifest import KIND_EMBEDDER, KIND_ANSWERER
from .models.runtime.qwen2vl import Qwen2VL
from .models.contract.registry import resolve_model
from .ingest import DEFAULT_DPI
from .progress import Progress

if TYPE_CHECKING:
    from .index.explain import SimilarityMap

if TYPE_CHECKING:
    from .distributed.options import RayOptions


class Index:
    """A page index folder plus the models that build and read it, loaded when first needed.

    `embedder` / `answerer` are converted model folders (or names installed in the model home);
    by default the installed defaults (`ragvl models pull`). `device` is "cpu" or "cuda".
    """

    def __init__(self, db: str | Path | None = None, embedder: str | Path | None = None,
                 answerer: str | Path | None = None, device: str | None = None,
                 log: Callable[[str], None] | None = None, threads: int | None = None):
        self.db = normalize_db(db) if db is not None else default_db()  # a Path, or an s3:// URI string
        self._embedder_arg, self._answerer_arg = embedder, answerer
        self.device = device
        self.threads = threads  # onnxruntime threads per session (default: RAGVL_THREADS / all CPUs)
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._embedder: ColQwen2 | None = None
        self._answerer: Qwen2VL | None = None
        self._search: PageSearch | None = None
        self._search_lock = threading.Lock()  # servers search from many threads: build the matrix once

    # -- models ---------------------------------------------------------------------------
    @property
    def embedder(self) -> ColQwen2:
        if self._embedder is None:
            folder = resolve_model(KIND_EMBEDDER, self._embedder_arg)
            self.log(f"embedder: {folder}")
            self._embedder = ColQwen2(folder, device=self.device, threads=self.threads)
        return self._embedder

    @property
    def answerer(self) -> Qwen2VL:
        if self._answerer is None:
            folder = resolve_model(KIND_ANSWERER, self._answerer_arg)
            self.log(f"answerer: {folder}")
            self._answerer = Qwen2VL(folder, device=self.device, threads=self.threads)
        return self._answerer

    # -- the three jobs -------------------------------------------------------------------
    def index(self, paths: Iterable[str | Path], dpi: int = DEFAULT_DPI, progress: bool = True, *,
              on_progress: Callable[[Progress], None] | None = None,
              cluster: "RayOptions | None" = None,
              vision_cache: bool = True, vision_cache_bytes: int | None = None) -> IndexSummary:
        """Bring the index up to date with the PDFs and image files under `paths` (files or folders).

        `on_progress(p)` is called after every page with the Progress (done, total, rate(), note).
        `cluster` (ragvl.distributed.RayOptions) embeds on a Ray cluster instead of this process.
        `vision_cache`: keep each page's vision features for `ask` (vision_store.py), within
        `vision_cache_bytes` (default: the index's recorded cap, else 4 GiB; recorded in the index).
        """
        from .ingest import find_documents

        paths = list(paths)
        find_documents(paths)  # a missing path fails before the model loads
        if cluster is not None:
            from .distributed.driver import index_on_ray

            folder = resolve_model(KIND_EMBEDDER, self._embedder_arg)  # workers load it; the driver does not
            summary = index_on_ray(paths, self.db, folder, cluster, dpi=dpi, log=self.log, progress=progress)
            self._search = None
            return summary
        embedder = self.embedder  # a missing model fails before the index folder is created
        with writer_lock(self.db, log=self.log):
            store = PageStore(self.db, create=True)
            cap = _vision_cap(store, vision_cache_bytes)
            if store.meta.get(VISION_META, {}).get("max_bytes") != cap:
                store.write_meta(**{VISION_META: {"max_bytes": cap}})
            vision = VisionStore(self.db, max_bytes=cap if vision_cache else 0)
            summary = index_paths(paths, store, embedder, dpi=dpi, log=self.log, progress=progress,
                                  on_progress=on_progress, vision=vision)
        self._search = None
        return summary

    def _store(self) -> PageStore:
        store = PageStore(self.db)
        if store.count() == 0:
            raise RagvlError(f"{self.db}: the index is empty; add PDFs with `ragvl index PATH`")
        return store

    def search(self, query: str, k: int = 5, *, mode: str = "visual", allowed=None) -> list[Hit]:
        """The k pages that best match `query`, best first.

        `mode`: "visual" (the model's MaxSim ranking, exact scores), "text" (BM25 over the
        pages' text layer) or "hybrid" (reciprocal rank fusion of both); each Hit says which
        mode ranked it and its rank in each ranking. `allowed`: a filter, one bool per row of
        ``searcher().rows()``, applied before ranking.
        """
        if mode not in MODES:
            raise RagvlError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
        searcher = self.searcher()
        if k > len(searcher):
            self.log(f"note: -k {k} is more than the {len(searcher)} pages in the index; returning all")
        q = None
        if mode != "text":  # the model's ranking: the index's vectors must be this embedder's
            searcher.store.check_embedder(self.embedder.id)
            q = self.embedder.embed_queries([query])[0]
        return searcher.search(q, k, allowed=allowed, mode=mode, text=query)

    def searcher(self) -> PageSearch:
        """The search over the index's current version (cached until the index changes)."""
        store = self._store()
        with self._search_lock:
            if self._search is None or self._search.version != store.version:
                self._search = PageSearch(store, log=self.log)
            return self._search

    def ask(self, question: str, k: int = 3, settings: GenerationSettings | None = None,
            max_pixels: int = ANSWER_MAX_PIXELS, *, mode: str = "visual", allowed=None, vision_cache: bool = True,
            follow_up: Answer | None = None) -> Answer:
        """Retrieve the top-k pages (`mode` as in :meth:`search`) and answer over their images;
        iterate the result to stream.

        Pages whose vision features were stored at indexing by an identical vision tower are not
        encoded again (`vision_cache=False` encodes every page); `Answer.vision` says what happened.
        `follow_up`: a previous, complete answer. When the question retrieves the same pages, the
        conversation goes on from its KV cache (`Answer.continued`); otherwise a new prompt starts
        over the new pages, and a note says so.
        """
        t0 = time.perf_counter()
        hits = self.search(question, k, mode=mode, allowed=allowed)
        store = self._search.store
        settings = settings or self.answerer.defaults
        if follow_up is not None:
            if follow_up.conversation is None:
                raise RagvlError("follow_up: the previous answer is not complete (consume it first)")
            cont = follow_up_question(self.answerer, follow_up, question, hits, settings,
                                      retrieval_s=time.perf_counter() - t0)
            if cont is not None:
                return cont
        vision = VisionStore(self.db) if vision_cache else None
        answer = answer_question(self.answerer, store, question, hits, settings, max_pixels,
                                 retrieval_s=time.perf_counter() - t0, vision=vision)
        if follow_up is not None:
            answer.follow_up_of = follow_up
            answer.notes.insert(0, "this follow-up retrieved other pages than the previous answer: "
                                   "started a new prompt over them (the earlier turns are not in it)")
        return answer


    # -- pages, maps and documents (the web page, HTTP API and MCP server use these) ------------
    def page_image(self, page_id: str) -> bytes:
        """The stored PNG of the page `page_id` (Hit.id)."""
        from .index.pages import page_row

        return page_row(self._store(), page_id, ["image_png"])["image_png"]

    def explain(self, query: str, page_ids: Iterable[str]) -> list["SimilarityMap"]:
        """Similarity maps of `query` on the given pages (Hit.id): `.grid` is the array, `.image()` the PIL picture."""
        from .index.explain import explain_page

        store = self._store()
        store.check_embedder(self.embedder.id)
        q = self.embedder.embed_queries([query])[0]
        ids = self.embedder.query_ids(query)
        return [explain_page(store, self.embedder, q, ids, pid) for pid in page_ids]

    def documents(self) -> list[dict]:
        """Every indexed document: path, sha256, pages. (A thin listing until `ragvl ls` lands in the API.)"""
        try:
            store = PageStore(self.db)
        except RagvlError:
            return []
        return [{"path": p, "sha256": sha, "pages": n} for p, (sha, n) in sorted(store.documents().items())]

    def remove(self, paths: Iterable[str]) -> list[str]:
        """Remove the documents indexed under exactly these paths (one commit); returns those removed.
        (A thin version through PageStore.remove_documents until `ragvl rm` lands in the API.)"""
        store = PageStore(self.db)
        known = store.documents()
        gone = [p for p in paths if p in known]
        store.remove_documents(gone)
        self._search = None
        return gone


def _vision_cap(store: PageStore, requested: int | None) -> int:
    """The vision feature cap in bytes: as requested, else as recorded in the index, else the default."""
    if requested is not None:
        if requested < 0:
            raise RagvlError(f"vision cache size {requested}: must be >= 0 bytes")
        return int(requested)
    return int(store.meta.get(VISION_META, {}).get("max_bytes", DEFAULT_MAX_BYTES))
