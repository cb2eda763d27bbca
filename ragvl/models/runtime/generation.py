"""Token selection: greedy, or sampled with temperature, top-k, top-p and repetition penalty.

The order and the arithmetic follow transformers' logits processors (repetition penalty, then
temperature, top-k, top-p), so the same settings mean the same thing as in `model.generate`.
Defaults come from the checkpoint's generation_config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # for parity runs: generate exactly max_new_tokens

    @property
    def greedy(self) -> bool:
        """Sampling with top_k 1 (Qwen's shipped config) can only ever pick the argmax."""
        return not self.do_sample or self.top_k == 1

    def with_overrides(self, **kw) -> "GenerationSettings":
        """Replace the settings given (None means keep); setting any sampling knob turns sampling on."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if any(k in kw for k in ("temperature", "top_k", "top_p")) or kw.get("do_sample") is True:
            kw.setdefault("do_sample", True)
            if self.top_k == 1:  # the shipped "effectively greedy" settings would undo the request
                kw.setdefault("top_k", 0)
                kw.setdefault("top_p", 1.0)
        return replace(self, **kw)


def read_generation_config(folder: str | Path) -> GenerationSettings:
    """Defaults from generation_config.json (absent file: greedy, as transformers)."""
    path = Path(folder) / "generation_config.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        d = {}
    eos = d.get("eos_token_id", [])
    eos = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    return GenerationSettings(
        do_sample=bool(d.get("do_sample", False)),
        temperature=float(d.get("temperature") or 1.0),
        top_k=int(d.get("top_k") if d.get("top_k") is not None else 50),
        top_p=float(d.get("top_p") if d.get("top_p") is not None else 1.0),
        repetition_penalty=float(d.get("repetition_penalty") or 1.0),
        eos_token_ids=eos,
        max_new_tokens=int(d.get("max_new_tokens") or 256),
    )


class TokenSampler:
    """Picks the next token from last-position logits (V,), given the ids so far."""

    def __init__(self, settings: GenerationSettings):
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray, ids: np.ndarray) -> int:
        scores = logits.astype(np.float32, copy=True)
        if self.s.repetition_penalty != 1.0 and len(ids):
            seen = np.unique(ids)
            s = scores[seen]
            scores[seen] = np.where(s < 0, s * self.s.repetition_penalty, s / self.s.repetition_penalty)
        if self.s.greedy:
            return int(np.argmax(scores))
        if self.s.temperature != 1.0:
            scores = scores / np.float32(self.s.temperature)
        if 0 < self.s.top_k < scores.size:
            kth = np.partition(scores, -self.s.top_k)[-self.s.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        if self.s.top_p < 1.0:
            order = np.argsort(scores, kind="stable")  # ascending, as transformers' TopPLogitsWarper
            probs = _softmax(scores[order])
            remove = np.cumsum(probs) <= (1 - self.s.top_p)
            remove[-1] = False  # always keep the most likely token
            scores[order[remove]] = -np.inf
        probs = _softmax(scores)
        return int(self.rng.choice(scores.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp((x - np.max(x)).astype(np.float64))
    return e / e.sum()
