"""In-place migration of older index formats to schema.FORMAT_VERSION, without re-embedding.

Format 1 (ragvl <= the first release): a `pages` table with key "{absolute path}#{page}", no
generation state, and the index metadata in `ragvl-index.json` beside the table.
Format 2: see schema.py. Migration 1 -> 2, under the writer lock, each step idempotent so a
migration killed half-way is simply run again by the next open:
1. add the new columns with defaults (no pending markers: format 1 only had complete documents);
2. rewrite document paths as format 2 stores them (relative to the index folder's parent
   when under it), and recompute the keys and page ids; fill n_pages and dpi;
3. write the `meta` table (format_version last), then remove `ragvl-index.json`.
Vectors, images and the embedder id are untouched: nothing is re-embedded.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from ..errors import RagvlError
from .lock import writer_lock
from .schema import (ADDED_IN_2, FORMAT_VERSION, K_DPI, K_EMBEDDER, K_FORMAT, LEGACY_META_FILE, META_SCHEMA,
                     META_TABLE, PAGES, generation, sql_quote)


def migrate_to_current(store) -> None:
    """Migrate the PageStore `store` (being opened, so not imported here) from format 1 to the
    current format (see module docstring)."""
    legacy = store.path / LEGACY_META_FILE
    try:
        with writer_lock(store.path):
            if not legacy.exists():  # another process migrated it while we waited
                return
            old = json.loads(legacy.read_text())
            if old.get("format_version") != 1:
                raise RagvlError(f"{legacy}: unknown index format {old.get('format_version')}")
            _migrate_1_to_2(store, old)
            legacy.unlink()
    except RagvlError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise RagvlError(f"{store.name}: cannot migrate the index from format 1 to {FORMAT_VERSION} ({e}); "
                         "it is still readable by the previous ragvl, and the next open retries") from None


def _migrate_1_to_2(store, old: dict) -> None:
    db = store._db
    dpi = int(old.get("dpi") or 120)
    if PAGES in set(db.list_tables().tables):
        table = db.open_table(PAGES)
        missing = {k: v for k, v in ADDED_IN_2.items() if k not in table.schema.names}
        if missing:
            table.add_columns(missing)
        paths = table.search().select(["doc_path"]).limit(None).to_arrow()["doc_path"].to_pylist()
        counts = Counter(paths)
        for path in counts:
            new = store.stored_path(path)
            if new != path:
                table.update(where=f"doc_path = {sql_quote(path)}", values={"doc_path": new})
        by_count: dict[int, list[str]] = {}
        for path, n in counts.items():
            by_count.setdefault(n, []).append(store.stored_path(path))
        for n, docs in by_count.items():
            table.update(where="doc_path IN (" + ", ".join(map(sql_quote, docs)) + ")", values={"n_pages": n})
        # generation(): sha256[:16], dpi and the embedder's hash (one embedder per format-1 index)
        emb_hash = generation("0" * 16, dpi, old.get("embedder") or "").rsplit("-e", 1)[1]
        gen = f"concat(substr(doc_sha256, 1, 16), '-d{dpi}-e{emb_hash}')"
        table.update(where="true", values_sql={
            "generation": gen,
            "key": f"concat(doc_path, '#', {gen}, '#', CAST(page AS STRING))",
            "page_id": "concat(substr(doc_sha256, 1, 16), '-', CAST(page AS STRING))",
            "dpi": str(dpi),
        })
    emb = old.get("embedder")
    m = re.search(r"-px(\d+)", emb or "")
    meta = db.create_table(META_TABLE, schema=META_SCHEMA, exist_ok=True)
    import pyarrow as pa

    fields = {K_EMBEDDER: {"id": emb, "folder": None, "max_pixels": int(m.group(1)) if m else None} if emb else None,
              K_DPI: dpi}
    rows = pa.Table.from_pydict({"key": list(fields), "value": [json.dumps(v) for v in fields.values()]},
                                schema=META_SCHEMA)
    meta.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(rows)
    done = pa.Table.from_pydict({"key": [K_FORMAT], "value": [json.dumps(FORMAT_VERSION)]}, schema=META_SCHEMA)
    meta.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(done)
