"""The search snapshot: a local index's newest search view, recorded with the table versions it
was built from, so that a new process ranks pages without opening LanceDB (importing lancedb
alone costs ~3 s of every `ragvl search`).

Correct:

* Lance writes one new manifest file (``<table>.lance/_versions/*.manifest``) per commit and
  never rewrites one; a table deleted and recreated gets new files. So the fingerprint of both
  tables' manifests (names, inodes, sizes, mtimes) changes with every write, migration,
  compaction, cleanup or recreation of the index, and an unchanged fingerprint means an
  unchanged index.
* A snapshot is recorded only when the fingerprint taken before the store was opened equals the
  one taken after the view was built (no commit landed in between) and the newest manifest is
  the version the view was built from.
* A reader that finds no snapshot, another fingerprint, another format, or a view or segment
  gone (cache cleanup) gets None and takes the full path, which records a new snapshot.

The snapshot answers a visual search without filters; text and hybrid search, filters and
everything that reads pages open the store as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..fsutil import atomic_write
from .cache import FORMAT as CACHE_FORMAT, UNREADABLE, View, load_view, local_cache_root
from ..store import FORMAT_VERSION, K_FORMAT, META_TABLE, PAGES, StoreInfo

if TYPE_CHECKING:
    from ..store import PageStore

FILE = "snapshot.json"
FORMAT = 1
_V2_BASE = (1 << 64) - 1   # lance's V2 manifest naming: file stem = u64::MAX - version

__all__ = ["Snapshot", "fingerprint", "read_snapshot", "record_snapshot"]


@dataclass
class Snapshot(StoreInfo):
    """A local index as its snapshot describes it: metadata, version, and the search view."""

    name: str
    root: Path
    meta: dict
    version: int
    fingerprint: str
    view: View


def fingerprint(db: Path) -> str | None:
    """A digest of every version manifest of the index's tables; None when a table is missing
    or its layout is not the one this module knows (then no snapshot is used)."""
    h = hashlib.sha256()
    for table in (PAGES, META_TABLE):
        try:
            entries = [e for e in os.scandir(db / f"{table}.lance" / "_versions") if e.name.endswith(".manifest")]
            if not entries:
                return None
            for e in sorted(entries, key=lambda e: e.name):
                st = e.stat()
                h.update(f"{table}/{e.name}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            return None
    return h.hexdigest()


def newest_version(db: Path, table: str = PAGES) -> int | None:
    """The newest version among a table's manifest files (either of lance's naming schemes)."""
    try:
        stems = [e.name[:-len(".manifest")] for e in os.scandir(db / f"{table}.lance" / "_versions")
                 if e.name.endswith(".manifest")]
        numbers = [int(s) for s in stems]
    except (OSError, ValueError):
        return None
    if not numbers:
        return None
    return max(_V2_BASE - n if n > (1 << 63) else n for n in numbers)


def record_snapshot(store: "PageStore", view: View, before: str | None) -> bool:
    """Record `view` (built from `store`'s pinned version) as the index's snapshot, when the
    index did not change since the fingerprint `before` was taken. Returns whether it did; a
    snapshot that cannot be written is only a lost speed-up."""
    db = store.path
    if (store.remote or before is None or view.path is None or fingerprint(db) != before
            or newest_version(db) != store.version or view.version != store.version):
        return False
    root = local_cache_root(db)
    try:
        rel = view.path.relative_to(root).as_posix()
        atomic_write(root / FILE, json.dumps({"format": FORMAT, "index_format": FORMAT_VERSION,
                                              "cache_format": CACHE_FORMAT, "fingerprint": before,
                                              "version": store.version, "view": rel, "meta": store.meta}))
    except (OSError, ValueError, TypeError):
        return False
    return True


def read_snapshot(db: Path) -> Snapshot | None:
    """The snapshot of the local index `db` if it is still exact (module docstring), else None."""
    now = fingerprint(db)
    if now is None:
        return None
    try:
        root = local_cache_root(db)
        rec = json.loads((root / FILE).read_text())
        if (rec.get("format"), rec.get("index_format"), rec.get("cache_format"), rec.get("fingerprint")) != \
                (FORMAT, FORMAT_VERSION, CACHE_FORMAT, now) or rec["meta"].get(K_FORMAT) != FORMAT_VERSION:
            return None
        view = load_view(root, root / rec["view"])
    except (*UNREADABLE, TypeError, AttributeError):
        return None
    if view.version != rec["version"] or view.n_rows == 0:
        return None  # an empty index: the full path says so
    return Snapshot(str(db), db.resolve().parent, rec["meta"], int(rec["version"]), now, view)
