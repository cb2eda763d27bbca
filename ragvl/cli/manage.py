"""`ragvl ls`, `ragvl rm`, `ragvl status`: what the index holds, and removing from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._common import DB, db_or_default, display_path, guarded, log


def ls(db: Optional[Path] = DB,
       as_json: bool = typer.Option(False, "--json", help="Print a JSON object: documents and totals.")) -> None:
    """List the indexed documents: path, pages, sha256 (short), indexed-at time; totals."""
    from ..api import Index

    idx = Index(db, log=log)
    with guarded(idx.db):
        store = idx._open()
        docs = idx.documents()
        rows = [{**d.as_dict(), "path": str(store.resolve(d.path))} for d in docs]
    total = sum(r["pages"] for r in rows)
    if as_json:
        print(json.dumps({"documents": rows, "total_documents": len(rows), "total_pages": total},
                         ensure_ascii=False))
        return
    for r in rows:
        print(f"{r['pages']:>5}  {r['sha256'][:12]}  {r['indexed_at'] or '-':<20}  {display_path(r['path'])}")
    print(f"{len(rows)} documents, {total} pages")


def rm(paths: List[Path] = typer.Argument(..., help="Indexed files, or folders (every document under them)."),
       db: Optional[Path] = DB) -> None:
    """Remove documents from the index in one commit (a path not in the index: exit 1, nothing removed)."""
    from ..api import Index

    idx = Index(db, log=log)
    with guarded(idx.db):
        removed = idx.remove(paths)
    for p in removed:
        log(f"removed {display_path(p)}")
    log(f"{len(removed)} documents removed")


def status(db: Optional[Path] = DB,
           as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """The index at a glance: size, embedder, and what needs attention (exit 0 even then)."""
    from ..api import Index

    with guarded(db_or_default(db)):
        s = Index(db, log=log).status()
    if as_json:
        print(json.dumps(s, ensure_ascii=False))
        return
    e = s["embedder"]
    print(f"index:      {s['db']} (format {s['format_version']}, version {s['version']})")
    print(f"documents:  {s['documents']}, pages: {s['pages']}, size on disk: {s['size_bytes'] / 1e6:.1f} MB")
    print(f"embedder:   {e['id']} at {e['folder']}{'' if e['found'] else ' (not there now)'}")
    print(f"dpi:        {s['dpi']}")
    for label, key in (("incomplete", "incomplete"), ("missing", "missing")):
        for p in s[key]:
            print(f"{label}: {display_path(p)}")
    for sp in s["skipped_pages"]:
        print(f"skipped page: {display_path(sp['path'])} page {sp['page']}: {sp['reason']}")
    if s["missing"]:
        print("  (remove missing files with `ragvl index --prune` or `ragvl rm PATH`)")
    if s["incomplete"]:
        print("  (an interrupted run: `ragvl index` again resumes them)")
    for r in s["reembed_reasons"]:
        print(f"needs re-embedding: {r}; run `ragvl index --reembed`")
