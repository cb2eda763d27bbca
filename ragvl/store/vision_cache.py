"""Stored vision features: each indexed page's vision tower output, kept for the answer model.

ColQwen2 runs the same vision tower as Qwen2-VL on the same page at the same resolution; keeping
its output lets `ragvl ask` splice it into the prompt instead of encoding the page again.

A separate LanceDB table `vision` in the index database, one row per (page, vision graph,
preprocessing):
- `page_id`: `store.page_id(doc_sha256, page)`, so it survives re-indexing, and a changed
  document gets new ids (its old rows are pruned at the next `ragvl index`);
- `vision_hash`: the hash of the vision graph files that computed it (VisionLanguageModel.vision_hash);
- `preprocess`: the image preprocessing key (vlm.image_config_key) and `max_pixels`, for people;
- `grid` (t, h, w) and `features`: (n_tokens, H) float16, little-endian, as raw bytes;
- `used`: the last time (Unix seconds) it was written or read for an answer.

The table is bounded: after each write the least recently used rows go until the total is under
the cap (`max_bytes`, recorded in the index metadata as `vision_cache`), so pages that get asked
about stay. An index without the table (older, or `--no-vision-cache`) simply has no features.
float16 keeps 11 significant bits: the features' relative rounding error is at most 2^-11.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from ..models.runtime import ImageFeatures
from .schema import VISION_TABLE, sql_quote

DEFAULT_MAX_BYTES = 4 * 1024 ** 3  # 4 GiB: ~1,800 pages at the 2B shape (2.36 MB = 2.25 MiB a page)

SCHEMA = pa.schema([
    pa.field("key", pa.string()),  # page_id|vision_hash|preprocess: the merge key
    pa.field("page_id", pa.string()),
    pa.field("vision_hash", pa.string()),
    pa.field("preprocess", pa.string()),
    pa.field("max_pixels", pa.int64()),
    pa.field("grid", pa.list_(pa.int32(), 3)),
    pa.field("n_tokens", pa.int32()),
    pa.field("hidden", pa.int32()),
    pa.field("features", pa.large_binary()),  # (n_tokens, hidden) float16 little-endian
    pa.field("bytes", pa.int64()),
    pa.field("used", pa.float64()),
])


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN (" + ", ".join(sql_quote(v) for v in values) + ")"


@dataclass(frozen=True)
class Producer:
    """Who computed features: the vision graph's hash and the preprocessing key, max_pixels."""

    vision_hash: str
    preprocess: str
    max_pixels: int


@dataclass
class Lookup:
    """The features found for some pages, and why the others were not."""

    found: dict[str, ImageFeatures]
    reason: str | None  # None when every page was found


class VisionCache:
    """The `vision` table of the index database `db`, a folder or an object-storage URI (absent
    until first written)."""

    def __init__(self, db: str | Path, max_bytes: int = DEFAULT_MAX_BYTES):
        import lancedb

        from .objstore import connect, is_uri

        self.max_bytes = int(max_bytes)
        self._db = connect(str(db)) if is_uri(db) else lancedb.connect(str(Path(db)))
        try:
            self.table = self._db.open_table(VISION_TABLE)
        except (ValueError, FileNotFoundError):
            self.table = None

    # -- writes -----------------------------------------------------------------------------
    def put(self, items: Sequence[tuple[str, ImageFeatures]], producer: Producer) -> None:
        """Store features for pages [(page_id, features)], replacing what is stored under the same
        keys, then evict down to the cap."""
        if self.max_bytes <= 0:
            return
        if not items:
            self.evict()  # the cap may have shrunk
            return
        items = list(dict(items).items())  # one row per page: identical copies bring the same page twice
        blobs = [np.ascontiguousarray(f.features, dtype="<f2").tobytes() for _, f in items]
        now = time.time()
        rows = pa.Table.from_pydict({
            "key": [f"{pid}|{producer.vision_hash}|{producer.preprocess}" for pid, _ in items],
            "page_id": [pid for pid, _ in items],
            "vision_hash": [producer.vision_hash] * len(items),
            "preprocess": [producer.preprocess] * len(items),
            "max_pixels": [producer.max_pixels] * len(items),
            "grid": [list(map(int, f.grid)) for _, f in items],
            "n_tokens": [int(f.features.shape[0]) for _, f in items],
            "hidden": [int(f.features.shape[1]) for _, f in items],
            "features": blobs,
            "bytes": [len(b) for b in blobs],
            "used": [now] * len(items),
        }, schema=SCHEMA)
        if self.table is None:
            self.table = self._db.create_table(VISION_TABLE, schema=SCHEMA, exist_ok=True)
        # Replace, not merge: a merge refuses a key that matches two rows, and an index written
        # before duplicates were prevented can hold some; this clears them. Two commits, and
        # the worst a cut between them does is drop these pages' features (a cache).
        self.table.delete(_in("key", rows["key"].to_pylist()))
        self.table.add(rows)
        self.evict()

    def evict(self) -> int:
        """Delete the least recently used rows until the table fits the cap; returns rows deleted."""
        if self.table is None:
            return 0
        t = self.table.search().select(["key", "bytes", "used"]).limit(None).to_arrow()
        if t.num_rows == 0:
            return 0
        order = np.argsort(-np.asarray(t["used"].to_numpy(), np.float64), kind="stable")  # newest first
        total = np.cumsum(np.asarray(t["bytes"].to_numpy(), np.int64)[order])
        drop = order[total > self.max_bytes]
        if len(drop):
            keys = t["key"].to_pylist()
            self.table.delete(_in("key", [keys[i] for i in drop]))
        return len(drop)

    def prune(self, page_ids: set[str]) -> None:
        """Delete the features of pages no longer in the index (changed or removed documents)."""
        if self.table is None:
            return
        stored = set(self.table.search().select(["page_id"]).limit(None).to_arrow()["page_id"].to_pylist())
        gone = sorted(stored - page_ids)
        if gone:
            self.table.delete(_in("page_id", gone))

    def touch(self, keys: Sequence[str]) -> None:
        """Mark rows as just used, so eviction keeps them."""
        if self.table is not None and keys:
            try:
                self.table.update(where=_in("key", keys), values={"used": time.time()})
            except Exception:  # noqa: BLE001 - best effort: an index on a read-only disk still answers
                pass

    # -- reads ------------------------------------------------------------------------------
    def total_bytes(self) -> int:
        if self.table is None:
            return 0
        t = self.table.search().select(["bytes"]).limit(None).to_arrow()
        return int(np.sum(t["bytes"].to_numpy())) if t.num_rows else 0

    def lookup(self, page_ids: Sequence[str], producer: Producer, touch: bool = True) -> Lookup:
        """The stored features valid for `producer` among `page_ids`, and a reason for the rest."""
        if not page_ids:
            return Lookup({}, None)
        if self.table is None:
            return Lookup({}, "the index holds no vision features (indexed with --no-vision-cache, "
                              "or before the cache existed)")
        t = (self.table.search().where(_in("page_id", list(dict.fromkeys(page_ids))))
             .select(["key", "page_id", "vision_hash", "preprocess", "max_pixels", "grid", "n_tokens", "hidden",
                      "features"]).limit(None).to_arrow())
        found: dict[str, ImageFeatures] = {}
        keys, other_tower, other_pre = [], set(), set()
        for row in t.to_pylist():
            if row["vision_hash"] != producer.vision_hash:
                other_tower.add(row["vision_hash"])
            elif row["preprocess"] != producer.preprocess:
                other_pre.add(row["max_pixels"])
            else:
                feats = np.frombuffer(row["features"], dtype="<f2").reshape(row["n_tokens"], row["hidden"])
                found[row["page_id"]] = ImageFeatures(feats, tuple(row["grid"]))
                keys.append(row["key"])
        if touch:
            self.touch(keys)
        missing = [p for p in page_ids if p not in found]
        if not missing:
            return Lookup(found, None)
        n = len(set(missing))
        if other_tower:
            why = (f"the stored features of {n} page(s) come from another vision graph "
                   f"({', '.join(sorted(h[:12] for h in other_tower))}) than the answer model's "
                   f"({producer.vision_hash[:12]})")
        elif other_pre:
            why = (f"the stored features of {n} page(s) were made with other preprocessing "
                   f"(max_pixels {', '.join(map(str, sorted(other_pre)))}) than the answer's "
                   f"(max_pixels {producer.max_pixels})")
        else:
            why = f"no stored features for {n} page(s) (evicted by the cache cap, or indexed with --no-vision-cache)"
        return Lookup(found, why)
