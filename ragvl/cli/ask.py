"""`ragvl ask`: retrieve pages and answer over their images, citing them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ._common import (ANSWERER, DB, DEVICE, EMBEDDER, GLOBS, GREEDY, IN_PATHS, WHERE, db_or_default, guarded, MAX_NEW_TOKENS, REPETITION_PENALTY, SEED,
                      TEMPERATURE, TOP_K_SAMPLING, TOP_P, display_path, generation_settings, log,
                      timings_line)


def ask(
    question: str = typer.Argument(..., help="Your question about the indexed PDFs."),
    k: int = typer.Option(3, "-k", "--top-k", min=1, help="How many retrieved pages the answer reads."),
    db: Optional[Path] = DB,
    embedder: Optional[Path] = EMBEDDER,
    answerer: Optional[Path] = ANSWERER,
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    temperature: Optional[float] = TEMPERATURE,
    top_p: Optional[float] = TOP_P,
    top_k_sampling: Optional[int] = TOP_K_SAMPLING,
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    greedy: Optional[bool] = GREEDY,
    seed: Optional[int] = SEED,
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Each page image's resolution for the "
                                             "answer, in pixels (default 602112: 768 visual tokens)."),
    in_paths: List[Path] = IN_PATHS,
    globs: List[str] = GLOBS,
    where: List[str] = WHERE,
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answer, sources, timings."),
) -> None:
    """Answer a question from the indexed PDFs: retrieve pages, let Qwen2-VL read them, cite them."""
    from ..answer.answering import ANSWER_MAX_PIXELS
    from ..api import Index

    with guarded(db_or_default(db)):
        idx = Index(db, embedder=embedder, answerer=answerer, device=device, log=log)
        idx.answerer  # fail on a missing answer model before any retrieval work
        settings = generation_settings(idx.answerer.defaults, max_new_tokens, temperature, top_p, top_k_sampling,
                                       repetition_penalty, seed, greedy)
        result = idx.ask(question, k, settings, max_pixels or ANSWER_MAX_PIXELS, in_paths=in_paths, globs=globs,
                         where=where)
        if as_json:
            result.consume()
            print(json.dumps(result.as_dict(), ensure_ascii=False))
            return
        for piece in result:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n\nSources:\n")
        for h in result.sources:
            sys.stdout.write(f"  [{h.rank}] {display_path(h.path)}, page {h.page} (score {h.score:.2f})\n")
        for note in result.notes:
            log(f"note: {note}")
        t = result.generation.timings.as_dict()
        log(f"retrieval {result.retrieval_s:.2f}s, first token {result.retrieval_s + t['first_token_s']:.2f}s; "
            + timings_line(result.generation))


