"""`ragvl index`: bring the page index up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import RagvlError
from ._common import DB, DEVICE, EMBEDDER, fail, log


def index(
    paths: List[Path] = typer.Argument(..., help="PDF files or folders (searched recursively for *.pdf)."),
    db: Optional[Path] = DB,
    embedder: Optional[Path] = EMBEDDER,
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Rasterization DPI (default 120)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    no_vision_cache: bool = typer.Option(False, "--no-vision-cache", help="Do not keep the pages' vision "
                                         "features for `ragvl ask` (about 2.4 MB a page at the 2B shape)."),
    vision_cache_gb: Optional[float] = typer.Option(None, "--vision-cache-gb", min=0, help="Cap on the stored "
                                                    "vision features, in GB, recorded in the index (default 4; "
                                                    "least recently used pages go first)."),
) -> None:
    """Index PDFs: rasterize every page, embed it with ColQwen2, store it in LanceDB (incrementally)."""
    from ..api import Index
    from ..pdf import DEFAULT_DPI

    idx = Index(db, embedder=embedder, device=device, log=log)
    try:
        cap = None if vision_cache_gb is None else int(vision_cache_gb * 1024 ** 3)
        summary = idx.index(paths, dpi=dpi or DEFAULT_DPI, progress=not quiet, vision_cache=not no_vision_cache,
                            vision_cache_bytes=cap)
    except RagvlError as e:
        fail(str(e))
        return
    if as_json:
        print(json.dumps({**summary.as_dict(), "db": str(idx.db)}, ensure_ascii=False))
    log(summary.line())
    if summary.failed:
        raise typer.Exit(1)
