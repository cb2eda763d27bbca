"""`ragvl rm`: remove documents from the index."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import DB, display_path, log


def rm(paths: List[Path] = typer.Argument(..., help="Indexed files, or folders (every document under them)."),
       db: Optional[str] = DB,
       no_wait: bool = typer.Option(False, "--no-wait", help="Fail at once if another writer holds the index "
                                    "(default: wait for it).")) -> None:
    """Remove documents from the index in one commit (a path not in the index: exit 1, nothing removed)."""
    from ..api import Index

    removed = Index(db, log=log, wait=not no_wait).remove(paths)
    for p in removed:
        log(f"removed {display_path(p)}")
    log(f"{len(removed)} documents removed")
