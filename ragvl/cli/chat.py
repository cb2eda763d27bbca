"""`ragvl chat`: Qwen2-VL on the user's own images."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import RagvlError
from ._common import ANSWERER, DEVICE, GenerationFlags, fail, generation_options, log, timings_line


@generation_options
def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    image: List[Path] = typer.Option([], "--image", "-i", help="An image to show the model (repeatable)."),
    answerer: Optional[Path] = ANSWERER,
    model: Optional[Path] = typer.Option(None, "--model", "-m", hidden=True,
                                         help="Deprecated spelling of --answerer."),
    gen: GenerationFlags = GenerationFlags(),  # the sampling flags: see generation_options
    top_k: Optional[int] = typer.Option(None, "--top-k", hidden=True,
                                        help="Deprecated spelling of --top-k-sampling."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Resize each image to at most this "
                                             "many pixels (default: the checkpoint's preprocessor config)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Ask Qwen2-VL about images: the answer streams to stdout."""
    from ..models.contract import KIND_ANSWERER
    from ..models.contract import resolve_model
    from ..models.runtime import Qwen2VL

    if top_k is not None:
        log("note: `ragvl chat` --top-k is deprecated; it is now --top-k-sampling (in chat and ask alike)")
        if gen.top_k_sampling is None:
            gen = replace(gen, top_k_sampling=top_k)
    if model is not None:
        log("note: `ragvl chat` --model is deprecated; it is now --answerer (as in ask)")
        answerer = answerer if answerer is not None else model
    try:
        folder = resolve_model(KIND_ANSWERER, answerer, "--answerer")
        log(f"loading {folder}")
        vlm = Qwen2VL(folder, device=device)
        reply = vlm.chat(prompt, image, gen.settings(vlm.defaults), max_pixels=max_pixels)
        if as_json:
            reply.consume()
            print(json.dumps(reply.as_dict(), ensure_ascii=False))
            return
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        log(timings_line(reply))
    except RagvlError as e:
        fail(str(e))
