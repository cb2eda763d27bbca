"""Answering over retrieved pages: the prompt (labelled page images, then the question), the
stored vision features reused, streaming, citations, follow-ups over the kept KV cache."""

from .answering import ANSWER_MAX_PIXELS, Answer, answer_question, follow_up_question, low_score_notes, page_inputs
from .prompt import answer_messages

__all__ = ["ANSWER_MAX_PIXELS", "Answer", "answer_question", "follow_up_question", "low_score_notes", "page_inputs",
           "answer_messages"]
