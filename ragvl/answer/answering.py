"""Answers over retrieved pages: Qwen2-VL reads the page images and streams, citing the pages."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from PIL import Image

from ..index.search import Hit
from ..index.store import PageStore
from ..models.runtime.generation import GenerationSettings
from ..models.runtime.qwen2vl import Generation, Qwen2VL
from .prompt import answer_messages

# Each page is shown to the answer model at up to 768 visual tokens (602112 pixels, about
# 650 x 920 for a portrait page): the resolution ColQwen2 retrieved it at, enough for chart
# labels and table cells, and it keeps a 3-page prompt near 2,400 tokens, which a CPU
# prefills in seconds where the checkpoint's own limit (16,384 tokens a page) would take minutes.
ANSWER_MAX_PIXELS = 768 * 28 * 28
# A retrieved page scoring below this fraction of the best page is flagged as probably off-topic.
LOW_SCORE_RATIO = 0.75


@dataclass
class Answer:
    """A streaming answer: iterate for text pieces; afterwards `text` holds the whole answer."""

    question: str
    sources: list[Hit]
    generation: Generation
    notes: list[str] = field(default_factory=list)
    retrieval_s: float = 0.0

    def __iter__(self) -> Iterator[str]:
        return iter(self.generation)

    @property
    def text(self) -> str:
        return self.generation.text

    def consume(self) -> "Answer":
        self.generation.consume()
        return self

    def as_dict(self) -> dict:
        g = self.generation.as_dict()
        return {"question": self.question, "answer": self.text, "sources": [h.as_dict() for h in self.sources],
                "notes": self.notes, "prompt_tokens": g["prompt_tokens"], "new_tokens": g["new_tokens"],
                "timings": {"retrieval_s": round(self.retrieval_s, 4), **g["timings"]}}


def low_score_notes(hits: Sequence[Hit]) -> list[str]:
    """Flag retrieved pages that score far below the best one."""
    if not hits:
        return []
    if hits[0].mode != "visual":  # BM25 and fused (RRF) scores are not MaxSim: no common scale
        return []
    best = hits[0].score
    return [f"[{h.rank}] {h.path} page {h.page} scores {h.score:.2f}, far below the best page ({best:.2f}); "
            f"it may not be relevant" for h in hits[1:] if best > 0 and h.score < LOW_SCORE_RATIO * best]


def answer_question(model: Qwen2VL, store: PageStore, question: str, hits: Sequence[Hit],
           settings: GenerationSettings | None = None, max_pixels: int = ANSWER_MAX_PIXELS,
           retrieval_s: float = 0.0) -> Answer:
    """Start answering `question` over the page images of `hits` (streams when iterated)."""
    t0 = time.perf_counter()
    images = [Image.open(io.BytesIO(store.page_image(h.path, h.page))) for h in hits]
    messages = answer_messages(question, [(h.path, h.page) for h in hits])
    gen = model.generate(messages, images, settings, max_pixels=max_pixels)
    return Answer(question, list(hits), gen, low_score_notes(hits), retrieval_s + time.perf_counter() - t0)
