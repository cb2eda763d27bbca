"""`ragvl index`: bring the page index up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._common import DB, DEVICE, EMBEDDER, db_or_default, fail, guarded, log


def index(
    paths: List[Path] = typer.Argument(None, help="PDF files or folders (searched recursively for *.pdf)."),
    db: Optional[Path] = DB,
    embedder: Optional[Path] = EMBEDDER,
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Rasterization DPI [default: the index's, else 120]; "
                                      "another value re-renders the documents indexed now."),
    prune: bool = typer.Option(False, "--prune", help="Also remove indexed documents whose files are gone."),
    reembed: bool = typer.Option(False, "--reembed", help="Re-embed every document the current embedder did not "
                                 "embed (after a converter change gave the embedder a new id)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Fail at once if another writer holds the index "
                                 "(default: wait for it)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index PDFs: rasterize every page, embed it with ColQwen2, store it in LanceDB (incrementally).

    Exit 1 when a file or a page could not be indexed (each is named); the rest is indexed.
    """
    from ..api import Index

    if not paths and not (prune or reembed):
        fail("give PDF files or folders to index (or --prune / --reembed alone)", 2)
    idx = Index(db, embedder=embedder, device=device, log=log, wait=not no_wait)
    with guarded(db_or_default(db)):
        summary = idx.index(paths or [], dpi=dpi, progress=not quiet, prune=prune, reembed=reembed)
    if as_json:
        print(json.dumps({**summary.as_dict(), "db": str(idx.db)}, ensure_ascii=False))
    log(summary.line())
    if not summary.ok:
        raise typer.Exit(1)
