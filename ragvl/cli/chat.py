"""`ragvl chat`: Qwen2-VL on the user's own images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import RagvlError
from ._common import (ANSWERER, DEVICE, GREEDY, MAX_NEW_TOKENS, REPETITION_PENALTY, SEED, TEMPERATURE,
                      TOP_K_SAMPLING, TOP_P, fail, generation_settings, log, timings_line)


def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    image: List[Path] = typer.Option([], "--image", "-i", help="An image to show the model (repeatable)."),
    answerer: Optional[Path] = ANSWERER,
    model: Optional[Path] = typer.Option(None, "--model", "-m", hidden=True,
                                         help="Deprecated spelling of --answerer."),
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    temperature: Optional[float] = TEMPERATURE,
    top_p: Optional[float] = TOP_P,
    top_k_sampling: Optional[int] = TOP_K_SAMPLING,
    top_k: Optional[int] = typer.Option(None, "--top-k", hidden=True,
                                        help="Deprecated spelling of --top-k-sampling."),
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    greedy: Optional[bool] = GREEDY,
    seed: Optional[int] = SEED,
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Resize each image to at most this "
                                             "many pixels (default: the checkpoint's preprocessor config)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Ask Qwen2-VL about images: the answer streams to stdout."""
    from ..models.contract.manifest import KIND_ANSWERER
    from ..models.contract.registry import resolve_model
    from ..models.runtime.qwen2vl import Qwen2VL

    if top_k is not None:
        log("note: `ragvl chat` --top-k is deprecated; it is now --top-k-sampling (in chat and ask alike)")
        top_k_sampling = top_k_sampling if top_k_sampling is not None else top_k
    if model is not None:
        log("note: `ragvl chat` --model is deprecated; it is now --answerer (as in ask)")
        answerer = answerer if answerer is not None else model
    try:
        folder = resolve_model(KIND_ANSWERER, answerer, "--answerer")
        log(f"loading {folder}")
        vlm = Qwen2VL(folder, device=device)
        settings = generation_settings(vlm.defaults, max_new_tokens, temperature, top_p, top_k_sampling,
                                       repetition_penalty, seed, greedy)
        gen = vlm.chat(prompt, image, settings, max_pixels=max_pixels)
        if as_json:
            gen.consume()
            print(json.dumps(gen.as_dict(), ensure_ascii=False))
            return
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        log(timings_line(gen))
    except RagvlError as e:
        fail(str(e))
