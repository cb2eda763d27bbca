"""What an index says about itself, read from its `meta` rows: shared by the full PageStore and
the search snapshot (snapshot.py), which answers a search without opening LanceDB."""

from __future__ import annotations

from pathlib import Path

from ..errors import RagvlError
from .schema import K_DPI, K_EMBEDDER


class StoreInfo:
    """Reads of an index's metadata. Subclasses set `name` (what messages call the index),
    `root` (the folder stored document paths are relative to; None on object storage) and
    `meta` (the meta rows as {key: value})."""

    name: str
    root: Path | None
    meta: dict

    @property
    def embedder(self) -> str | None:
        """The id of the embedder this index was built with."""
        e = self.meta.get(K_EMBEDDER)
        return e.get("id") if isinstance(e, dict) else e

    @property
    def dpi(self) -> int | None:
        return self.meta.get(K_DPI)

    def check_embedder(self, embedder_id: str) -> None:
        """The vectors of one index must all come from one embedder: anything else is an error."""
        if self.embedder and self.embedder != embedder_id:
            e = self.meta.get(K_EMBEDDER) or {}
            raise RagvlError(f"{self.name}: this index was built with embedder {self.embedder} "
                             f"(at {e.get('folder')}), not {embedder_id}; pass the same --embedder, re-embed "
                             "everything with `ragvl index --reembed`, or use another --db")

    def resolve(self, stored: str) -> Path:
        """The absolute path of a stored document path."""
        p = Path(stored)
        return p if p.is_absolute() or self.root is None else self.root / p
