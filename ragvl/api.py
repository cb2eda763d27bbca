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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .answer.answering import ANSWER_MAX_PIXELS, Answer, answer_question
from .errors import RagvlError
from .index.indexer import IndexSummary, index_paths
from .index.search import Hit, PageSearch
from .index.objstore import is_uri, normalize_db, writer_lock
from .index.store import PageStore, default_db
from .models.runtime.colqwen2 import ColQwen2
from .models.runtime.generation import GenerationSettings
from .models.contract.manifest import KIND_EMBEDDER, KIND_ANSWERER
from .models.runtime.qwen2vl import Qwen2VL
from .models.contract.registry import resolve_model
from .pdf import DEFAULT_DPI

if TYPE_CHECKING:
    from .distributed.options import RayOptions


class Index:
    """A page index folder plus the models that build and read it, loaded when first needed.

    `embedder` / `answerer` are converted model folders (or names installed in the model home);
    by default the installed defaults (`ragvl models pull`). `device` is "cpu" or "cuda".
    """

    def __init__(self, db: str | Path | None = None, embedder: str | Path | None = None,
                 answerer: str | Path | None = None, device: str | None = None,
                 log: Callable[[str], None] | None = None):
        self.db = normalize_db(db) if db is not None else default_db()  # a Path, or an s3:// URI string
        self._embedder_arg, self._answerer_arg = embedder, answerer
        self.device = device
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._embedder: ColQwen2 | None = None
        self._answerer: Qwen2VL | None = None
        self._search: PageSearch | None = None

    # -- models ---------------------------------------------------------------------------
    @property
    def embedder(self) -> ColQwen2:
        if self._embedder is None:
            folder = resolve_model(KIND_EMBEDDER, self._embedder_arg)
            self.log(f"embedder: {folder}")
            self._embedder = ColQwen2(folder, device=self.device)
        return self._embedder

    @property
    def answerer(self) -> Qwen2VL:
        if self._answerer is None:
            folder = resolve_model(KIND_ANSWERER, self._answerer_arg)
            self.log(f"answerer: {folder}")
            self._answerer = Qwen2VL(folder, device=self.device)
        return self._answerer

    # -- the three jobs -------------------------------------------------------------------
    def index(self, paths: Iterable[str | Path], dpi: int = DEFAULT_DPI, progress: bool = True,
              cluster: "RayOptions | None" = None) -> IndexSummary:
        """Bring the index up to date with the PDFs under `paths` (files or folders).

        `cluster` (ragvl.distributed.RayOptions) embeds on a Ray cluster instead of this process.
        """
        from .pdf import find_pdfs

        paths = list(paths)
        find_pdfs(paths)  # a missing path fails before the model loads
        if cluster is not None:
            from .distributed.driver import index_on_ray

            folder = resolve_model(KIND_EMBEDDER, self._embedder_arg)  # workers load it; the driver does not
            summary = index_on_ray(paths, self.db, folder, cluster, dpi=dpi, log=self.log, progress=progress)
            self._search = None
            return summary
        embedder = self.embedder  # a missing model fails before the index folder is created
        if is_uri(self.db):  # local folders: the lock is index_paths' own (issue 8)
            with writer_lock(self.db, log=self.log):
                summary = index_paths(paths, PageStore(self.db, create=True), embedder, dpi=dpi, log=self.log,
                                      progress=progress)
        else:
            store = PageStore(self.db, create=True)
            summary = index_paths(paths, store, embedder, dpi=dpi, log=self.log, progress=progress)
        self._search = None
        return summary

    def _store(self) -> PageStore:
        store = PageStore(self.db)
        if store.count() == 0:
            raise RagvlError(f"{self.db}: the index is empty; add PDFs with `ragvl index PATH`")
        return store

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The k pages that best match `query`, best first, with exact MaxSim scores."""
        store = self._store()
        if self._search is None or self._search.version != store.version:
            store.check_embedder(self.embedder.id)
            self._search = PageSearch(store)
        if k > len(self._search):
            self.log(f"note: -k {k} is more than the {len(self._search)} pages in the index; returning all")
        q = self.embedder.embed_queries([query])[0]
        return self._search.search(q, k)

    def ask(self, question: str, k: int = 3, settings: GenerationSettings | None = None,
            max_pixels: int = ANSWER_MAX_PIXELS) -> Answer:
        """Retrieve the top-k pages and answer over their images; iterate the result to stream."""
        t0 = time.perf_counter()
        hits = self.search(question, k)
        store = self._search.store
        return answer_question(self.answerer, store, question, hits, settings or self.answerer.defaults, max_pixels,
                      retrieval_s=time.perf_counter() - t0)
