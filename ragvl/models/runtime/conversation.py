"""An answered conversation kept in memory, so that a follow-up extends it instead of starting over.

After an answer the KV cache holds the prompt (page images included) and the answer's tokens. A
follow-up turn only adds the chat template's text between them: `<|im_end|>` closing the answer,
the new user turn and the next `<|im_start|>assistant`. Prefilling those few tokens on top of
the kept cache gives the same logits as prefilling the whole conversation from scratch, because
attention is causal and the positions continue (text positions past the last image are
index + rope delta on all three M-RoPE rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vlm import Prompt


@dataclass
class Conversation:
    """Where an answered conversation stands: its messages, every token, and the KV cache."""

    messages: list[dict]  # HF chat messages so far, ending with the assistant's answer
    prompt: Prompt  # the first prompt (its images or features), for a restart from scratch
    ids: list[int]  # every token so far: prompts and answers
    cache: dict[str, np.ndarray]  # KV cache of ids[:cached]
    cached: int
    delta: int  # the M-RoPE delta of the first prompt (no image comes after it)
    max_pixels: int | None

    @property
    def n_images(self) -> int:
        return len(self.prompt.grids)


def user_turn(text: str) -> dict:
    """A text-only user message (a follow-up is asked over the pages already in the prompt)."""
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def template_suffix(render, messages: list[dict], answer: str, follow_up: str) -> str | None:
    """The template text a follow-up adds after the cached answer, or None where the chat template
    does not render the conversation as (first prompt + answer + more): then it must start over.

    `render(messages, add_generation_prompt)` is the tokenizer's apply_chat_template.
    """
    before = render(messages[:-1], True) + answer
    full = render(messages + [user_turn(follow_up)], True)
    return full[len(before):] if full.startswith(before) else None
