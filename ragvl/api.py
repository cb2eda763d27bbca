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
from typing import Callable, Iterable

from .answer.answering import ANSWER_MAX_PIXELS, Answer, answer_question, follow_up_question
from .errors import RagvlError
from .index.indexer import IndexSummary, index_paths
from .index.search import Hit, PageSearch
from .index.store import PageStore, default_db
from .index.vision_store import DEFAULT_MAX_BYTES, META_KEY as VISION_META, VisionStore
from .models.runtime.colqwen2 import ColQwen2
from .models.runtime.generation import GenerationSettings
from .models.contract.manifest import KIND_EMBEDDER, KIND_ANSWERER
from .models.runtime.qwen2vl import Qwen2VL
from .models.contract.registry import resolve_model
from .pdf import DEFAULT_DPI


class Index:
    """A page index folder plus the models that build and read it, loaded when first needed.

    `embedder` / `answerer` are converted model folders (or names installed in the model home);
    by default the installed defaults (`ragvl models pull`). `device` is "cpu" or "cuda".
    """

    def __init__(self, db: str | Path | None = None, embedder: str | Path | None = None,
                 answerer: str | Path | None = None, device: str | None = None,
                 log: Callable[[str], None] | None = None):
        self.db = Path(db) if db is not None else default_db()
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
    def index(self, paths: Iterable[str | Path], dpi: int = DEFAULT_DPI, progress: bool = True, *,
              vision_cache: bool = True, vision_cache_bytes: int | None = None) -> IndexSummary:
        """Bring the index up to date with the PDFs under `paths` (files or folders).

        `vision_cache`: keep each page's vision features for `ask` (vision_store.py), within
        `vision_cache_bytes` (default: the index's recorded cap, else 4 GiB; recorded in the index).
        """
        from .pdf import find_pdfs

        paths = list(paths)
        find_pdfs(paths)  # a missing path fails before the model loads
        embedder = self.embedder  # a missing model fails before the index folder is created
        store = PageStore(self.db, create=True)
        cap = _vision_cap(store, vision_cache_bytes)
        if store.meta.get(VISION_META, {}).get("max_bytes") != cap:
            store.write_meta(**{VISION_META: {"max_bytes": cap}})
        vision = VisionStore(self.db, max_bytes=cap if vision_cache else 0)
        summary = index_paths(paths, store, embedder, dpi=dpi, log=self.log, progress=progress, vision=vision)
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
            max_pixels: int = ANSWER_MAX_PIXELS, *, vision_cache: bool = True,
            follow_up: Answer | None = None) -> Answer:
        """Retrieve the top-k pages and answer over their images; iterate the result to stream.

        Pages whose vision features were stored at indexing by an identical vision tower are not
        encoded again (`vision_cache=False` encodes every page); `Answer.vision` says what happened.
        `follow_up`: a previous, complete answer. When the question retrieves the same pages, the
        conversation goes on from its KV cache (`Answer.continued`); otherwise a new prompt starts
        over the new pages, and a note says so.
        """
        t0 = time.perf_counter()
        hits = self.search(question, k)
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


def _vision_cap(store: PageStore, requested: int | None) -> int:
    """The vision feature cap in bytes: as requested, else as recorded in the index, else the default."""
    if requested is not None:
        if requested < 0:
            raise RagvlError(f"vision cache size {requested}: must be >= 0 bytes")
        return int(requested)
    return int(store.meta.get(VISION_META, {}).get("max_bytes", DEFAULT_MAX_BYTES))
