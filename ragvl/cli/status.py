"""`ragvl status`: the index at a glance."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ._common import DB, display_path, log


def status(db: Optional[str] = DB,
           as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """The index at a glance: size, embedder, and what needs attention (exit 0 even then)."""
    from ..api import Index

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
