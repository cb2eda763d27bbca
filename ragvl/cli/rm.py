"""`ragvl rm`: remove documents from the index."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import DB, display_path, guarded, log


def rm(paths: List[Path] = typer.Argument(..., help="Indexed files, or folders (every document under them)."),
       db: Optional[str] = DB) -> None:
    """Remove documents from the index in one commit (a path not in the index: exit 1, nothing removed)."""
    from ..api import Index

    idx = Index(db, log=log)
    with guarded(idx.db):
        removed = idx.remove(paths)
    for p in removed:
        log(f"removed {display_path(p)}")
    log(f"{len(removed)} documents removed")
