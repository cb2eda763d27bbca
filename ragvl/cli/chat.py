"""`ragvl chat`: Qwen2-VL on the user's own images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ._common import ANSWERER, DEVICE, GenerationFlags, generation_options, log, timings_line


@generation_options
def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    # No short flag: across commands `-i` means --interactive (`ragvl ask -i`).
    image: List[Path] = typer.Option([], "--image", help="An image to show the model (repeatable)."),
    answerer: Optional[Path] = ANSWERER,
    gen: GenerationFlags = GenerationFlags(),  # the sampling flags: see generation_options
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="Resize each image to at most this "
                                             "many pixels (default: the checkpoint's preprocessor config)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Ask Qwen2-VL about images: the answer streams to stdout."""
    from ..models.contract import KIND_ANSWERER
    from ..models.contract import resolve_model
    from ..models.runtime import Qwen2VL

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
    log(timings_line(reply.as_dict()))
