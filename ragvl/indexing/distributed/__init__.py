"""Indexing on a Ray cluster: a driver that plans and commits, and actors that render and embed.

Nothing here is imported unless `--workers` / `--ray-address` (or `Index.index(cluster=...)`)
asks for it, so the base install never needs Ray (`pip install "ragvl[ray]"`).
"""

from .driver import index_on_ray
from .options import RayOptions

__all__ = ["RayOptions", "index_on_ray"]
