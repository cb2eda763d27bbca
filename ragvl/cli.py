"""The `ragvl` command line: a thin typer layer over the library.

Answers go to stdout; progress and logs go to stderr; `--json` prints one object for scripts.
Every failure the user can fix is a RagvlError, printed as one line with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import RagvlError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Local visual RAG over PDFs: ColQwen2 retrieval, Qwen2-VL answers, on onnxruntime.")
models_app = typer.Typer(no_args_is_help=True, help="Convert, list and pull models.")
app.add_typer(models_app, name="models")


def _fail(message: str, code: int = 1) -> None:
    print(f"ragvl: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@models_app.command("convert")
def models_convert(
    src: Path = typer.Argument(..., help="A Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)."),
    out: Path = typer.Argument(..., help="The ragvl model folder to write."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights of the MatMuls: fp32, int8 or int4."),
    force: bool = typer.Option(False, "--force", help="Replace an existing ragvl model folder."),
) -> None:
    """Convert a Qwen2-VL checkpoint to ONNX (no torch needed)."""
    from .models.convert import convert

    try:
        convert(src, out, dtype=dtype, force=force, log=_log)
    except RagvlError as e:
        _fail(str(e))


def _model_dir(model: Optional[Path]) -> Path:
    if model is not None:
        return model
    env = os.environ.get("RAGVL_ANSWERER")
    if env:
        return Path(env)
    raise RagvlError("no model given: pass --model DIR (a folder made by `ragvl models convert`) "
                     "or set RAGVL_ANSWERER")


@app.command("chat")
def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    image: List[Path] = typer.Option([], "--image", "-i", help="An image to show the model (repeatable)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A converted qwen2-vl model folder "
                                         "[env RAGVL_ANSWERER]."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", help="Default: 256."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sample at this temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    greedy: Optional[bool] = typer.Option(None, "--greedy/--sample",
                                          help="Force greedy or sampled decoding (default: the checkpoint's "
                                               "generation_config)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Resize each image to at most this "
                                             "many pixels (default: the checkpoint's preprocessor config)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda [env RAGVL_DEVICE]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Ask Qwen2-VL about images: the answer streams to stdout."""
    from .models.qwen2vl import Qwen2VL

    try:
        folder = _model_dir(model)
        _log(f"loading {folder}")
        vlm = Qwen2VL(folder, device=device)
        settings = vlm.defaults.with_overrides(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=seed,
            do_sample=None if greedy is None else not greedy)
        gen = vlm.chat(prompt, image, settings, max_pixels=max_pixels)
        if as_json:
            gen.consume()
            print(json.dumps(gen.as_dict(), ensure_ascii=False))
            return
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        t = gen.timings.as_dict()
        _log(f"{gen.prompt_tokens} prompt tokens, {len(gen.token_ids)} new; vision {t['vision_s']:.2f}s, "
             f"prefill {t['prefill_s']:.2f}s, decode {t['decode_tok_s'] or 0:.1f} tok/s")
    except RagvlError as e:
        _fail(str(e))


def _embedder(path: Optional[Path], device: Optional[str]):
    from .models.colqwen2 import ColQwen2
    from .models.manifest import KIND_EMBEDDER
    from .models.registry import resolve_model

    folder = resolve_model(KIND_EMBEDDER, path)
    _log(f"embedder: {folder}")
    return ColQwen2(folder, device=device)


EMBEDDER_HELP = "A converted colqwen2 model folder or installed name [env RAGVL_EMBEDDER; default: the installed one]."
DB_HELP = "The index folder [env RAGVL_DB; default: .ragvl in the current folder]."


@app.command("index")
def index(
    paths: List[Path] = typer.Argument(..., help="PDF files or folders (searched recursively for *.pdf)."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    embedder: Optional[Path] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Rasterization DPI (default 120)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda [env RAGVL_DEVICE]."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index PDFs: rasterize every page, embed it with ColQwen2, store it in LanceDB (incrementally)."""
    from .index.indexer import index_paths
    from .index.store import PageStore, default_db
    from .pdf import DEFAULT_DPI, find_pdfs

    try:
        find_pdfs(paths)  # a missing path fails before any model is loaded
        model = _embedder(embedder, device)
        store = PageStore(db or default_db(), create=True)
        summary = index_paths(paths, store, model, dpi=dpi or DEFAULT_DPI, log=_log, progress=not quiet)
    except RagvlError as e:
        _fail(str(e))
        return
    if as_json:
        print(json.dumps({**summary.as_dict(), "db": str(store.path)}, ensure_ascii=False))
    _log(summary.line())
    if summary.failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
