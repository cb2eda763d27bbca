"""Where an index run's pages are embedded: in this process, or on Ray actors (distributed/).

The run (run.py) renders every page in ragvl.ingest's worker process, in order, and hands the
rendered pages to an embedding; the embedding gives back, in the same order, each page with its
multi-vector and (when asked) its vision features. Rendering, page skips, commits and accounting
are the run's alone, so a run is the same whoever embeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from ..models.runtime import ImageFeatures
from .source import SourcePage

__all__ = ["PageEmbedder", "PageEmbedding", "LocalEmbedding", "Embedded", "as_embedding", "embedder_meta"]

# A page, its vectors ((n, 128) float16; None for a skipped page) and its vision features (or None).
Embedded = tuple[SourcePage, Optional[np.ndarray], Optional[ImageFeatures]]


class PageEmbedder(Protocol):
    """What a local embedding needs from a model (ragvl.models.runtime.ColQwen2)."""

    id: str
    vision_hash: str
    image_key: str
    max_pixels: int

    def embed_images(self, images: Sequence[Image.Image], *, vision_out: list | None = None) -> list[np.ndarray]: ...


class PageEmbedding(Protocol):
    """An embedder as a run uses it: who it is (`meta`), and a stream of pages through it."""

    meta: dict  # {"id", "folder", "max_pixels"}: what the index records

    def start(self) -> None:
        """Get ready to embed (load the model, start workers); before `vision_hash` and `embed_pages`."""

    @property
    def vision_hash(self) -> str: ...

    @property
    def image_key(self) -> str: ...

    def embed_pages(self, pages: Iterable[SourcePage], *, vision: bool) -> Iterator[Embedded]:
        """Each page, in order, with its vectors (None for a skipped page) and, with `vision`,
        its vision features."""

    def close(self) -> None: ...


def embedder_meta(embedder) -> dict:
    """What an index records of an embedder: {"id", "folder", "max_pixels"}."""
    folder = getattr(embedder, "folder", None)
    return {"id": embedder.id, "folder": str(Path(folder).resolve()) if folder else None,
            "max_pixels": getattr(embedder, "max_pixels", None)}


class LocalEmbedding:
    """Pages embedded one at a time by a model loaded in this process."""

    def __init__(self, embedder: PageEmbedder):
        self.embedder = embedder
        self.meta = embedder_meta(embedder)

    def start(self) -> None:
        pass

    @property
    def vision_hash(self) -> str:
        return self.embedder.vision_hash

    @property
    def image_key(self) -> str:
        return self.embedder.image_key

    def embed_pages(self, pages: Iterable[SourcePage], *, vision: bool) -> Iterator[Embedded]:
        for page in pages:
            if page.skip_reason is not None:
                yield page, None, None
                continue
            feats: list = []
            image = page.image  # the stored pixels, decoded: embedded exactly as stored
            vectors = (self.embedder.embed_images([image], vision_out=feats) if vision
                       else self.embedder.embed_images([image]))[0]
            yield page, vectors.astype(np.float16), feats[0] if feats else None

    def close(self) -> None:
        pass


def as_embedding(embedder) -> PageEmbedding:
    """`embedder` as a PageEmbedding: a model is wrapped to embed in this process."""
    return embedder if hasattr(embedder, "embed_pages") else LocalEmbedding(embedder)
