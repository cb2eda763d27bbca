"""`ragvl mcp`: the index as a Model Context Protocol server on stdio, for assistants."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import ANSWERER, DB, DEVICE, EMBEDDER, GenerationFlags, generation_options, log
from .serve import model_options


@generation_options
def mcp(
    db: Optional[str] = DB,
    embedder: Optional[Path] = EMBEDDER,
    answerer: Optional[Path] = ANSWERER,
    gen: GenerationFlags = GenerationFlags(),  # the sampling flags: see generation_options
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="Page resolution for answers (as ask)."),
    device: Optional[str] = DEVICE,
) -> None:
    """Serve the index to assistants over MCP (stdio): search, get_page, list_documents, ask."""
    from ..server import run_stdio
    from ..server import Service

    opts = model_options(db, embedder, answerer, device, gen, max_pixels)
    run_stdio(Service(opts, log=log))
