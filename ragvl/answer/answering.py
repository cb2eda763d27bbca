"""Answers over retrieved pages: Qwen2-VL reads the page images and streams, citing the pages."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from PIL import Image

from ..retrieval import Hit
from ..store import PageStore, Producer, VisionCache
from ..models.runtime import Generation, GenerationSettings, Qwen2VL, image_config_key
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
    retrieval_s: float = 0.0  # opening sessions excluded: that is in load_s
    load_s: float = 0.0  # opening the embedder's sessions during retrieval (the answer model's: in its Timings)
    vision_reason: str | None = None  # why some pages were encoded rather than taken from the index
    follow_up_of: "Answer | None" = None  # the answer this one followed up on, when it did

    @property
    def conversation(self):
        """The kept conversation (KV cache included) once the answer is complete, for a follow-up."""
        return self.generation.conversation

    @property
    def continued(self) -> bool:
        """True when this follow-up extended the previous answer's prompt instead of starting anew."""
        return self.generation.continued

    @property
    def vision(self) -> dict:
        """{"reused": pages whose stored features were spliced in, "computed": pages encoded, "reason"}."""
        return {**self.generation.vision, "reason": self.vision_reason}

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
                "vision": self.vision, "follow_up": None if self.follow_up_of is None else
                {"continued": self.continued, "previous_question": self.follow_up_of.question},
                "timings": {"retrieval_s": round(self.retrieval_s, 4), **g["timings"],
                            "load_s": round(self.load_s + self.generation.timings.load_s, 4)},
                "graphs": g["graphs"]}


def low_score_notes(hits: Sequence[Hit]) -> list[str]:
    """Flag retrieved pages that score far below the best one."""
    if not hits:
        return []
    if hits[0].mode != "visual":  # BM25 and fused (RRF) scores are not MaxSim: no common scale
        return []
    best = hits[0].score
    return [f"[{h.rank}] {h.path} page {h.page} scores {h.score:.2f}, far below the best page ({best:.2f}); "
            f"it may not be relevant" for h in hits[1:] if best > 0 and h.score < LOW_SCORE_RATIO * best]


def page_inputs(model: Qwen2VL, store: PageStore, hits: Sequence[Hit], max_pixels: int,
                vision: VisionCache | None) -> tuple[list, str | None]:
    """Per hit, its stored vision features where valid for `model` at `max_pixels`, else its image;
    and why some pages have no usable features (None when all do)."""
    found, reason = {}, "the vision cache was not used for this answer"
    if vision is not None:
        producer = Producer(model.vision_hash, image_config_key(model.image_config_for(max_pixels)), max_pixels)
        lookup = vision.lookup([h.id for h in hits], producer)
        found, reason = lookup.found, lookup.reason
    inputs = [found[h.id] if h.id in found else Image.open(io.BytesIO(store.page_image(h.path, h.page)))
              for h in hits]
    return inputs, reason if len(found) < len(hits) else None


def answer_question(model: Qwen2VL, store: PageStore, question: str, hits: Sequence[Hit],
           settings: GenerationSettings | None = None, max_pixels: int = ANSWER_MAX_PIXELS,
           retrieval_s: float = 0.0, vision: VisionCache | None = None, load_s: float = 0.0) -> Answer:
    """Start answering `question` over the pages of `hits` (streams when iterated).

    `retrieval_s` and `load_s`: the retrieval's time and the sessions it opened (Answer.load_s).

    With `vision`, pages whose stored vision features match the answer model's vision graph and
    preprocessing are spliced in as they are; the others are encoded from their images.
    """
    t0 = time.perf_counter()
    inputs, reason = page_inputs(model, store, hits, max_pixels, vision)
    messages = answer_messages(question, [(h.path, h.page) for h in hits])
    gen = model.generate(messages, inputs, settings, max_pixels=max_pixels)
    return Answer(question, list(hits), gen, low_score_notes(hits), retrieval_s + time.perf_counter() - t0,
                  load_s=load_s, vision_reason=reason)


def follow_up_question(model: Qwen2VL, previous: Answer, question: str, hits: Sequence[Hit],
                       settings: GenerationSettings | None = None, retrieval_s: float = 0.0,
                       load_s: float = 0.0) -> Answer | None:
    """Continue `previous` with `question` when `hits` are the pages it was answered over (the KV
    cache is extended with the new turn only); None when the pages differ or it is not finished."""
    conv = previous.conversation
    if conv is None or {h.id for h in hits} != {h.id for h in previous.sources}:
        return None
    t0 = time.perf_counter()
    gen = model.follow_up(conv, question, settings)
    # The prompt labels its pages as the first answer did: keep those sources and their numbers.
    return Answer(question, list(previous.sources), gen, [], retrieval_s + time.perf_counter() - t0,
                  load_s=load_s, follow_up_of=previous)
