"""`ragvl mcp`: the index as a Model Context Protocol server on stdio, for assistants."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import (ANSWERER, DB, DEVICE, EMBEDDER, GREEDY, MAX_NEW_TOKENS, REPETITION_PENALTY, SEED, TEMPERATURE,
                      TOP_K_SAMPLING, TOP_P, log)
from .serve import model_options


def mcp(
    db: Optional[str] = DB,
    embedder: Optional[Path] = EMBEDDER,
    answerer: Optional[Path] = ANSWERER,
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    temperature: Optional[float] = TEMPERATURE,
    top_p: Optional[float] = TOP_P,
    top_k_sampling: Optional[int] = TOP_K_SAMPLING,
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    greedy: Optional[bool] = GREEDY,
    seed: Optional[int] = SEED,
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Page resolution for answers (as ask)."),
    device: Optional[str] = DEVICE,
) -> None:
    """Serve the index to assistants over MCP (stdio): search, get_page, list_documents, ask."""
    from ..server.mcp_server import run_stdio
    from ..server.service import Service

    opts = model_options(db, embedder, answerer, device, max_new_tokens, temperature, top_p, top_k_sampling,
                         repetition_penalty, greedy, seed, max_pixels)
    run_stdio(Service(opts, log=log))
