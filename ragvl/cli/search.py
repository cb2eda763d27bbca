"""`ragvl search`: the pages that best match a query."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._common import DB, DEVICE, EMBEDDER, GLOBS, IN_PATHS, WHERE, db_or_default, display_path, guarded, log


def search(
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="How many pages."),
    db: Optional[Path] = DB,
    embedder: Optional[Path] = EMBEDDER,
    in_paths: List[Path] = IN_PATHS,
    globs: List[str] = GLOBS,
    where: List[str] = WHERE,
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {rank, path, page, score}."),
) -> None:
    """Find the pages that best match QUERY (ColQwen2 late interaction)."""
    from ..api import Index

    with guarded(db_or_default(db)):
        hits = Index(db, embedder=embedder, device=device, log=log).search(query, k, in_paths=in_paths, globs=globs,
                                                                            where=where)
    if as_json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
        return
    for h in hits:
        print(f"{h.rank:>3}  {h.score:8.3f}  {display_path(h.path)}  page {h.page}")
