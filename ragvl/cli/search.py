"""`ragvl search`: the pages that best match a query."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import RagvlError
from ._common import (DB, DEVICE, EMBEDDER, GLOBS, IN_PATHS, MODE, WHERE, also_note, display_path, fail, hit_ranks,
                      log)


def search(
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="How many pages."),
    db: Optional[str] = DB,
    embedder: Optional[Path] = EMBEDDER,
    in_paths: List[Path] = IN_PATHS,
    globs: List[str] = GLOBS,
    where: List[str] = WHERE,
    device: Optional[str] = DEVICE,
    mode: str = MODE,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {rank, path, page, score, id, mode, "
                                 "visual_rank, text_rank}."),
    explain: Optional[Path] = typer.Option(None, "--explain", help="Write a similarity map PNG per hit "
                                           "into this folder: where on the page the query matched."),
    explain_tokens: bool = typer.Option(False, "--explain-tokens", help="With --explain: also one map per "
                                        "query token."),
) -> None:
    """Find the pages that best match QUERY (ColQwen2 late interaction)."""
    from ..api import Index

    if explain_tokens and explain is None:
        fail("--explain-tokens needs --explain DIR")
    idx = Index(db, embedder=embedder, device=device, log=log, quick_start=True)
    hits = idx.search(query, k, mode=mode, in_paths=in_paths, globs=globs, where=where)
    if explain is not None:
        write_maps(idx, query, hits, explain, explain_tokens)
    if as_json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
        return
    for h in hits:
        print(f"{h.rank:>3}  {h.score:8.3f}  {display_path(h.path)}  page {h.page}{hit_ranks(h)}{also_note(h)}")


def write_maps(idx, query: str, hits, folder: Path, tokens: bool) -> None:
    """One `{rank}-{doc}-p{page}.png` per hit (plus `...-t{i}.png` per query token), logged on stderr."""
    from ..errors import os_error_cause

    try:
        folder.mkdir(parents=True, exist_ok=True)
        for h, m in zip(hits, idx.explain(query, [h.id for h in hits])):
            m.score = h.score  # label with the number search printed
            stem = f"{h.rank:02d}-{Path(h.path).stem}-p{h.page}"
            m.image().save(folder / f"{stem}.png")
            if tokens:
                for i in range(len(m.tokens)):
                    m.token_image(i).save(folder / f"{stem}-t{i:02d}.png")
        log(f"similarity maps: {folder}")
    except OSError as e:
        raise RagvlError(f"{folder}: {os_error_cause(e)}") from None
