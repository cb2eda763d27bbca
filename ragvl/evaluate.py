"""`ragvl eval`: retrieval (and optionally answer) quality on the user's own questions.

The questions file is a JSON list in the format of ``sample_pdfs/questions.json``::

    [{"question": "...", "answer": "...", "file": "report.pdf", "page": 2, "keys": ["21.7"]}, ...]

`file` names the document that holds the answer (relative to the questions file's folder, or
just its name), `page` is 1-based, `keys` (optional) are the key facts an answer must contain;
without `keys`, the numbers in `answer` are the key facts. For each question: the rank of the
expected page in the top k (hit@k), then recall@1, recall@k and MRR@k (mean reciprocal rank,
0 beyond k) over all questions; with answers, whether each key fact appears in the answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import RagvlError

__all__ = ["Question", "QuestionResult", "EvalReport", "load_questions", "evaluate", "key_facts", "facts_found"]


@dataclass(frozen=True)
class Question:
    question: str
    file: str
    page: int
    answer: str = ""
    keys: tuple[str, ...] = ()


@dataclass
class QuestionResult:
    question: str
    file: str
    page: int
    rank: int | None                 # 1-based rank of the expected page in the top k, None if absent
    hits: list[dict]                 # the top k: {rank, path, page, score}
    answer: str | None = None        # with answers: the generated answer
    keys: list[str] = field(default_factory=list)
    keys_found: list[str] = field(default_factory=list)

    @property
    def hit(self) -> bool:
        return self.rank is not None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hit"] = self.hit
        if self.answer is None:
            for name in ("answer", "keys", "keys_found"):
                d.pop(name)
        return d


@dataclass
class EvalReport:
    k: int
    mode: str
    results: list[QuestionResult]
    answers: bool = False

    def _mean(self, xs) -> float:
        xs = list(xs)
        return sum(xs) / len(xs) if xs else 0.0

    @property
    def recall_at_1(self) -> float:
        return self._mean(r.rank == 1 for r in self.results)

    @property
    def recall_at_k(self) -> float:
        return self._mean(r.hit for r in self.results)

    @property
    def mrr(self) -> float:
        return self._mean(1.0 / r.rank if r.rank else 0.0 for r in self.results)

    @property
    def answers_correct(self) -> float:
        """Share of questions whose answer contains every key fact."""
        return self._mean(bool(r.keys) and len(r.keys_found) == len(r.keys) for r in self.results)

    def as_dict(self) -> dict:
        d = {"k": self.k, "mode": self.mode, "questions": len(self.results), "recall@1": self.recall_at_1,
             f"recall@{self.k}": self.recall_at_k, f"mrr@{self.k}": self.mrr,
             "results": [r.as_dict() for r in self.results]}
        if self.answers:
            d["answers_with_all_key_facts"] = self.answers_correct
        return d

    def summary(self) -> str:
        s = (f"{len(self.results)} questions, mode {self.mode}: recall@1 {self.recall_at_1:.3f}, "
             f"recall@{self.k} {self.recall_at_k:.3f}, MRR@{self.k} {self.mrr:.3f}")
        if self.answers:
            s += f"; answers with all key facts {self.answers_correct:.3f}"
        return s


def load_questions(path: str | Path) -> list[Question]:
    """Read and validate a questions file; RagvlError naming the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RagvlError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise RagvlError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise RagvlError(f"{path}: expected a non-empty JSON list of questions")
    out = []
    for i, q in enumerate(data, start=1):
        if not isinstance(q, dict):
            raise RagvlError(f"{path}: question {i}: expected an object")
        missing = [f for f in ("question", "file", "page") if f not in q]
        if missing:
            raise RagvlError(f"{path}: question {i}: missing {', '.join(missing)}")
        if not isinstance(q["page"], int) or isinstance(q["page"], bool) or q["page"] < 1:
            raise RagvlError(f"{path}: question {i}: page must be a whole number >= 1 (1-based)")
        keys = q.get("keys") or []
        if not isinstance(keys, list) or not all(isinstance(x, str) for x in keys):
            raise RagvlError(f"{path}: question {i}: keys must be a list of strings")
        out.append(Question(str(q["question"]), str(q["file"]), int(q["page"]), str(q.get("answer", "")),
                            tuple(keys)))
    return out


def key_facts(q: Question) -> list[str]:
    """The facts an answer must contain: `keys`, else the numbers in the expected answer."""
    if q.keys:
        return list(q.keys)
    return re.findall(r"\d+(?:[.,]\d+)*", q.answer)


def _norm(s: str) -> str:
    # Case, spacing and thousands separators vary between correct answers ("1,250" vs "1250").
    s = s.casefold()
    s = re.sub(r"(?<=\d),(?=\d{3})", "", s)
    return re.sub(r"\s+", " ", s)


def facts_found(answer: str, keys: list[str]) -> list[str]:
    """The keys that appear in `answer` (case- and spacing-insensitive)."""
    a = _norm(answer)
    return [k for k in keys if _norm(k) in a]


def _same_document(hit_path: str, expected: str, base: Path) -> bool:
    e = Path(expected)
    h = Path(hit_path)
    if e.is_absolute() or (base / e).exists():
        target = (e if e.is_absolute() else base / e).resolve()
        try:
            if h.resolve() == target:
                return True
        except OSError:
            pass
    n = len(e.parts)
    return h.parts[-n:] == e.parts                     # stored relative, or indexed from elsewhere


def evaluate(index, questions: list[Question], *, k: int = 5, mode: str = "visual", answers: bool = False,
             answer_k: int = 3, settings=None, base: Path = Path("."),
             progress: Callable[[int, QuestionResult], None] | None = None) -> EvalReport:
    """Search (and with `answers`, ask) every question on `index` (a ragvl.api.Index)."""
    results = []
    for i, q in enumerate(questions, start=1):
        hits = index.search(q.question, k, mode=mode)
        rank = next((h.rank for h in hits if h.page == q.page and _same_document(h.path, q.file, base)), None)
        r = QuestionResult(q.question, q.file, q.page, rank,
                           [{"rank": h.rank, "path": h.path, "page": h.page, "score": h.score} for h in hits])
        if answers:
            ans = index.ask(q.question, answer_k, settings, mode=mode)
            ans.consume()
            r.answer = ans.text
            r.keys = key_facts(q)
            r.keys_found = facts_found(ans.text, r.keys)
        results.append(r)
        if progress:
            progress(i, r)
    return EvalReport(k, mode, results, answers)
