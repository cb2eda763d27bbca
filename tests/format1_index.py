"""Writes an index of format 1 exactly as ragvl's first index code did (commit 5376261).

The schema, key layout ("{absolute path}#{page}"), per-document merge_insert commit and the
`ragvl-index.json` metadata file are copied from that code, so migration tests open a real
format-1 LanceDB folder, not an imitation of one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from ragvl.fsutil import sha256_file
from ragvl.ingest import DEFAULT_DPI, find_pdfs, open_pdf, png_bytes
from ragvl.store.page_store import vectors_array

DIM = 128
SCHEMA_V1 = pa.schema([
    pa.field("key", pa.string()),  # "{doc_path}#{page}": the merge key
    pa.field("doc_path", pa.string()),
    pa.field("doc_sha256", pa.string()),
    pa.field("page", pa.int32()),  # 1-based
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("image_png", pa.binary()),
    pa.field("n_vectors", pa.int32()),
    pa.field("vectors", pa.list_(pa.list_(pa.float16(), DIM))),
    pa.field("embedder", pa.string()),
])


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def build_format1_index(db: Path, paths, embedder, dpi: int = DEFAULT_DPI) -> None:
    """Index `paths` into `db` as format 1 did: one merge_insert commit per document."""
    import lancedb

    db = Path(db)
    db.mkdir(parents=True, exist_ok=True)
    table = lancedb.connect(str(db)).create_table("pages", schema=SCHEMA_V1, exist_ok=True)
    (db / "ragvl-index.json").write_text(json.dumps({"format_version": 1, "embedder": embedder.id, "dpi": dpi},
                                                    indent=2) + "\n")
    for pdf in find_pdfs(paths):
        key, sha = str(pdf), sha256_file(pdf)
        pages = []
        with open_pdf(pdf) as doc:
            for i in range(doc.page_count):
                image = doc.render_page(i, dpi)
                pages.append((i + 1, image.width, image.height, png_bytes(image), embedder.embed_images([image])[0]))
        rows = pa.Table.from_pydict({
            "key": [f"{key}#{p[0]}" for p in pages],
            "doc_path": [key] * len(pages),
            "doc_sha256": [sha] * len(pages),
            "page": [p[0] for p in pages],
            "width": [p[1] for p in pages],
            "height": [p[2] for p in pages],
            "image_png": [p[3] for p in pages],
            "n_vectors": [len(p[4]) for p in pages],
            "vectors": vectors_array([p[4] for p in pages]),
            "embedder": [embedder.id] * len(pages),
        }, schema=SCHEMA_V1)
        (table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(f"doc_path = {_quote(key)}").execute(rows))
