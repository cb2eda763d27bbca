"""`ragvl index`: bring the page index up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import RagvlError
from ._common import DB, DEVICE, EMBEDDER, fail, log


def index(
    paths: List[Path] = typer.Argument(..., help="PDF or image files, or folders (searched recursively for PDFs and images)."),
    db: Optional[Path] = DB,
    embedder: Optional[Path] = EMBEDDER,
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Rasterization DPI (default 120)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index PDFs and images: rasterize every page, embed it with ColQwen2, store it in LanceDB (incrementally)."""
    from ..api import Index
    from ..ingest import DEFAULT_DPI

    idx = Index(db, embedder=embedder, device=device, log=log)
    try:
        summary = idx.index(paths, dpi=dpi or DEFAULT_DPI, progress=not quiet)
    except RagvlError as e:
        fail(str(e))
        return
    if as_json:
        print(json.dumps({**summary.as_dict(), "db": str(idx.db)}, ensure_ascii=False))
    log(summary.line())
    if summary.failed or summary.skipped_pages:  # exit 1 so that scripts notice what is missing
        raise typer.Exit(1)
