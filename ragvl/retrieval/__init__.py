"""Finding pages: MaxSim over the stored multi-vectors, the text layer's full-text index, their
fusion, and similarity maps. The layers above (answer, api, server) import it from here.

- `PageSearch` (page_search.py): one search over a store version, in the three modes; `Hit`.
- `maxsim/`: the MaxSim engine (exact kernels, the centroid first stage, the reference scorer).
- `cache` / `segments` / `cache_cleanup`: the search cache, a view per table version.
- `snapshot`: the newest view recorded so a new process searches without opening LanceDB.
- `filters`, `fulltext`, `fusion`, `explain`.
"""

from .cache import cache_root
from .cache_cleanup import GRACE_S, cleanup
from .explain import SimilarityMap, explain_page
from .filters import Filters, allowed_keys
from .fulltext import ensure_text_index
from .page_search import MODES, Hit, PageSearch
from .snapshot import Snapshot, fingerprint, read_snapshot, record_snapshot

__all__ = ["PageSearch", "Hit", "MODES", "Filters", "allowed_keys", "SimilarityMap", "explain_page", "Snapshot",
           "fingerprint", "read_snapshot", "record_snapshot", "cache_root", "cleanup", "GRACE_S", "ensure_text_index"]
