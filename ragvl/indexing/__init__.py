"""Building the index: plan what changed, render and embed the pages, commit each document, then
maintain the tables. One indexer whatever runs it: this process, or a Ray cluster
(`distributed/`, imported only when asked for, so the base install needs no Ray).

Imported lazily by the api: it brings PyMuPDF (~1 s), which `search` and `ask` never need.
"""

from .maintain import maintain
from .plan import IndexSummary
from .run import index_paths

__all__ = ["index_paths", "IndexSummary", "maintain"]
