"""`ragvl ask`: retrieve pages and answer over their images, citing them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ._common import (ANSWERER, DB, DEVICE, EMBEDDER, GLOBS, IN_PATHS, MODE, WHERE, GenerationFlags, also_note,
                      display_path, generation_options, log, timings_line)


@generation_options
def ask(
    question: str = typer.Argument(..., help="Your question about the indexed PDFs."),
    k: int = typer.Option(3, "-k", "--top-k", min=1, help="How many retrieved pages the answer reads."),
    db: Optional[str] = DB,
    embedder: Optional[Path] = EMBEDDER,
    answerer: Optional[Path] = ANSWERER,
    gen: GenerationFlags = GenerationFlags(),  # the sampling flags: see generation_options
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="Each page image's resolution for the "
                                             "answer, in pixels (default 602112: 768 visual tokens)."),
    in_paths: List[Path] = IN_PATHS,
    globs: List[str] = GLOBS,
    where: List[str] = WHERE,
    device: Optional[str] = DEVICE,
    mode: str = MODE,
    no_vision_cache: bool = typer.Option(False, "--no-vision-cache", help="Encode every page again instead of "
                                         "using the vision features stored at indexing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answer, sources, timings."),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Then read follow-up questions from "
                                     "stdin, one a line, until an empty line; a follow-up over the same pages "
                                     "continues the conversation without prefilling them again."),
) -> None:
    """Answer a question from the indexed PDFs: retrieve pages, let Qwen2-VL read them, cite them."""
    from ..answer import ANSWER_MAX_PIXELS
    from ..api import Index

    idx = Index(db, embedder=embedder, answerer=answerer, device=device, log=log, quick_start=True)
    idx.answerer  # fail on a missing answer model before any retrieval work
    settings = gen.settings(idx.answerer.defaults)

    def ask_one(q, prev):
        return idx.ask(q, k, settings, max_pixels or ANSWER_MAX_PIXELS, vision_cache=not no_vision_cache,
                       follow_up=prev, mode=mode, in_paths=in_paths, globs=globs, where=where)

    result = ask_one(question, None)
    _emit(result, as_json)
    while interactive:  # follow-ups in this process, so the conversation's KV cache is kept
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline().strip()
        if not line:
            break
        result = ask_one(line, result)
        _emit(result, as_json)


def _emit(result, as_json: bool) -> None:
    """Stream one answer and its sources to stdout (or print it as one JSON line); stats to stderr."""
    if as_json:
        result.consume()
        print(json.dumps(result.as_dict(), ensure_ascii=False), flush=True)
        return
    for piece in result:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n\nSources:\n")
    for h in result.sources:
        sys.stdout.write(f"  [{h.rank}] {display_path(h.path)}, page {h.page} (score {h.score:.2f}){also_note(h)}\n")
    sys.stdout.flush()
    for note in result.notes:
        log(f"note: {note}")
    if result.follow_up_of is not None and result.continued:
        log("follow-up: continued the conversation over the same pages (their prefill was kept)")
    v = result.vision
    log(f"vision: {v['reused']} page(s) from the index, {v['computed']} encoded"
        + (f" ({v['reason']})" if v["reason"] else ""))
    d = result.as_dict()
    t = d["timings"]  # the wall time to the first token: retrieval + opening sessions + the answer's part
    log(f"retrieval {t['retrieval_s']:.2f}s, first token {t['retrieval_s'] + t['load_s'] + t['first_token_s']:.2f}s; "
        + timings_line(d))
