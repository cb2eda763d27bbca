"""What the web server and the MCP server share: one Index, its models loaded once, lazily.

Every method is synchronous and thread-safe: the servers call them from worker threads, so
searches and page images keep being served while an answer generates or a job indexes.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..api import Index
from ..errors import RagvlError
from ..models.runtime import Cancellation, GenerationSettings


MAX_K = 50  # the most pages one search returns or one answer reads, over HTTP and MCP alike


def check_k(raw, default: int) -> int:
    """`raw` (None: `default`) as the k of a search or an answer: a whole number from 1 to MAX_K.

    The one check of both servers, so they refuse the same values with the same message (a
    RagvlError: HTTP answers 400, MCP a tool error).
    """
    if raw is None:
        raw = default
    try:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError
        k = int(raw)
    except (TypeError, ValueError):
        raise RagvlError(f"k must be a whole number, not {raw!r}") from None
    if not 1 <= k <= MAX_K:
        raise RagvlError(f"k must be between 1 and {MAX_K}, not {k}")
    return k


@dataclass
class ServeOptions:
    """`ragvl serve` / `ragvl mcp` options: the index, the models (as `ragvl ask`), the add-documents roots."""

    db: Path | None = None
    embedder: Path | None = None
    answerer: Path | None = None
    device: str | None = None
    roots: list[Path] = field(default_factory=lambda: [Path.cwd()])
    overrides: dict = field(default_factory=dict)  # generation overrides, as `ragvl ask` takes them
    max_pixels: int | None = None


class Service:
    """The Index behind both servers, with the locks that make sharing it across threads safe."""

    def __init__(self, opts: ServeOptions, log: Callable[[str], None] | None = None):
        self.opts = opts
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.index = Index(opts.db, embedder=opts.embedder, answerer=opts.answerer, device=opts.device, log=self.log)
        self.roots = [Path(r).expanduser().resolve() for r in opts.roots]
        self._load = threading.Lock()
        self._cancel: Cancellation | None = None
        self._settings: GenerationSettings | None = None

    # -- models, loaded once --------------------------------------------------------------
    def embedder(self):
        with self._load:
            return self.index.embedder

    def answerer(self):
        with self._load:
            model = self.index.answerer
            if self._cancel is None:
                self._cancel = Cancellation(model)
                self._settings = model.defaults.with_overrides(**self.opts.overrides)
            return model

    # -- reads ----------------------------------------------------------------------------
    def search(self, query: str, k: int) -> list[dict]:
        """The same list as `ragvl search --json`: rank, path, page, score, id."""
        if not query.strip():
            raise RagvlError("the query is empty")
        self.embedder()
        return [h.as_dict() for h in self.index.search(query, k)]

    def page_png(self, page_id: str) -> bytes:
        return self.index.page_image(page_id)

    def map_png(self, page_id: str, query: str) -> bytes:
        if not query.strip():
            raise RagvlError("the query is empty")
        self.embedder()
        return self.index.explain(query, [page_id])[0].png()

    def documents(self) -> list[dict]:
        """What `ragvl ls --json` lists; empty while there is no index yet."""
        try:
            return self.index.listing()
        except RagvlError:
            return []

    def status(self) -> dict:
        """Models in use, pages, documents, index size; `problems` says what to run when something is missing."""
        from ..models.contract import KIND_ANSWERER, KIND_EMBEDDER
        from ..models.contract import resolve_model

        out: dict = {"db": str(self.index.db), "roots": [str(r) for r in self.roots], "problems": []}
        for kind, arg, key in ((KIND_EMBEDDER, self.opts.embedder, "embedder"),
                               (KIND_ANSWERER, self.opts.answerer, "answerer")):
            try:
                out[key] = resolve_model(kind, arg, f"--{key}").name
            except RagvlError as e:
                out[key] = None
                out["problems"].append(str(e))
        docs = self.documents()
        out["documents"], out["pages"] = len(docs), sum(d["pages"] for d in docs)
        out["index_bytes"] = self.index.size_on_disk()
        if not docs:
            out["problems"].append(f"{self.index.db}: no documents indexed yet: add a file or folder below, "
                                   f"or run `ragvl index PATH`")
        return out

    # -- answers --------------------------------------------------------------------------
    def check_can_answer(self) -> None:
        """Fail now (a 4xx, not an error event later) when a model or the index is missing."""
        from ..models.contract import KIND_ANSWERER, KIND_EMBEDDER
        from ..models.contract import resolve_model

        resolve_model(KIND_EMBEDDER, self.opts.embedder, "--embedder")
        resolve_model(KIND_ANSWERER, self.opts.answerer, "--answerer")
        if not self.documents():
            raise RagvlError(f"{self.index.db}: no documents indexed yet (add some, or run `ragvl index PATH`)")

    def answer_events(self, question: str, k: int, on_start: Callable[[object], None] | None = None
                      ) -> Iterator[tuple[str, object]]:
        """("retrieved", hits) as soon as the pages are found, ("token", {"text": piece}) per piece, then ("sources",
        hits), then ("done", the `ragvl ask --json` object).

        Call one at a time (the servers queue them). `on_start(opts)` receives the RunOptions that
        `cancel(opts)` stops, prefill and vision included.
        """
        if not question.strip():
            raise RagvlError("the question is empty")
        from ..answer import ANSWER_MAX_PIXELS

        self.embedder()
        self.answerer()
        with self._cancel.running() as opts:
            if on_start:
                on_start(opts)
            answer = self.index.ask(question, k, self._settings, self.opts.max_pixels or ANSWER_MAX_PIXELS)
            yield "retrieved", [h.as_dict() for h in answer.sources]  # before the slow part: cards show early
            for piece in answer:
                yield "token", {"text": piece}
            yield "sources", [h.as_dict() for h in answer.sources]
            yield "done", answer.as_dict()

    def cancel(self, opts) -> None:
        if self._cancel is not None:
            self._cancel.cancel(opts)

    # -- documents ------------------------------------------------------------------------
    def check_under_roots(self, raw_paths: list[str]) -> list[Path]:
        """Resolve the paths given to "add documents"; each, and every document below it, must lie under a root."""
        from ..ingest import find_documents

        if not raw_paths or not all(isinstance(p, str) and p.strip() for p in raw_paths):
            raise RagvlError("'paths' must be a non-empty list of file or folder paths")
        out = []
        for raw in raw_paths:
            p = Path(os.path.expanduser(raw))
            p = (p if p.is_absolute() else self.roots[0] / p).resolve()
            if not any(p.is_relative_to(r) for r in self.roots):
                raise PermissionError(f"{raw}: outside the folders this server may read "
                                      f"({', '.join(map(str, self.roots))}; see `ragvl serve --root`)")
            for pdf in find_documents([p]):  # symlinks below a root must not lead out of it either
                if not any(pdf.resolve().is_relative_to(r) for r in self.roots):
                    raise PermissionError(f"{pdf}: a link out of the allowed folders")
            out.append(p)
        return out

    def index_paths(self, paths: list[Path], on_progress: Callable[[object], None]):
        """Index `paths` with the embedder the server searches with (one copy of the model in memory;
        its sessions run the job's pages and the searches' queries side by side). Index.index takes the
        index's writer lock, so a `ragvl index` in another process waits for this job, or it for that."""
        self.embedder()  # loaded under the lock, so a search arriving meanwhile does not load a second
        return self.index.index(paths, progress=False, on_progress=on_progress)

    def remove(self, path: str) -> list[str]:
        """Remove a document (or every document under a folder) in one commit, under the writer lock."""
        return self.index.remove([path])
