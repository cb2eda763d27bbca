"""Indexing on a Ray cluster: the one index run in this process, its pages embedded by actors.

Nothing here is imported unless `--workers` / `--ray-address` (or `Index.index(cluster=...)`)
asks for it, so the base install never needs Ray (`pip install "ragvl[ray]"`).
"""

from .driver import RayEmbedding
from .options import RayOptions

__all__ = ["RayOptions", "RayEmbedding"]
