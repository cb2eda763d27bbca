"""The answer prompt: the retrieved page images, each labelled, then the question.

Each page is introduced by a short text label ("[2] report.pdf, page 7") right before its image,
so the model can tell the pages apart and cite them by number; the labels are what the
citations in the answer refer to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

INSTRUCTIONS = ("Answer the question using only the document pages shown above. Read the charts, tables and "
                "diagrams carefully. Cite the pages you used by their numbers in brackets, like [1]. If the "
                "pages do not contain the answer, say so.")


def page_label(i: int, path: str, page: int) -> str:
    return f"[{i}] {Path(path).name}, page {page}:"


def answer_messages(question: str, pages: Sequence[tuple[str, int]]) -> list[dict]:
    """HF chat messages for one question over `pages` [(path, 1-based page)], images in order."""
    content: list[dict] = []
    for i, (path, page) in enumerate(pages, 1):
        content.append({"type": "text", "text": page_label(i, path, page)})
        content.append({"type": "image"})
    content.append({"type": "text", "text": f"{INSTRUCTIONS}\nQuestion: {question}"})
    return [{"role": "user", "content": content}]
