"""`ragvl eval`: recall@1/@k and MRR of the index on a questions file (and, with --answers, key facts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._common import ANSWERER, DB, DEVICE, EMBEDDER, MAX_NEW_TOKENS, MODE, display_path, log


def eval_cmd(
    questions: Path = typer.Argument(..., help="A JSON list of {question, file, page[, answer, keys]} "
                                     "(the format of sample_pdfs/questions.json)."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="A question is a hit when its page is in the top k."),
    db: Optional[str] = DB,
    embedder: Optional[Path] = EMBEDDER,
    answerer: Optional[Path] = ANSWERER,
    mode: str = MODE,
    answers: bool = typer.Option(False, "--answers", help="Also run `ask` on each question and check that the "
                                 "answer contains its key facts (slow: one generation per question)."),
    answer_k: int = typer.Option(3, "--answer-k", min=1, help="Pages the answer reads (with --answers)."),
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: per-question results and totals."),
) -> None:
    """Measure retrieval quality on your own questions: hit@k per question, recall@1, recall@k, MRR."""
    from ..api import Index
    from ..evaluate import evaluate, load_questions

    qs = load_questions(questions)
    idx = Index(db, embedder=embedder, answerer=answerer, device=device, log=log)
    settings = None
    if answers:
        settings = idx.answerer.defaults.with_overrides(max_new_tokens=max_new_tokens)

    def progress(i, r):
        where = f"rank {r.rank}" if r.rank else f"not in top {k}"
        log(f"[{i}/{len(qs)}] {where}: {r.question[:70]}")

    report = evaluate(idx, qs, k=k, mode=mode, answers=answers, answer_k=answer_k, settings=settings,
                      base=questions.parent, progress=None if as_json else progress)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
        return
    for i, r in enumerate(report.results, start=1):
        rank = str(r.rank) if r.rank else "-"
        line = f"{i:>3}  {'hit ' if r.hit else 'miss'}  rank {rank:>2}  {display_path(r.file)} p{r.page}  {r.question}"
        if r.answer is not None:
            line += f"  [key facts {len(r.keys_found)}/{len(r.keys)}]"
        print(line)
    print(report.summary())
