"""The `ragvl` command line: a thin typer layer over the library.

Answers go to stdout; progress and logs go to stderr; `--json` prints one object for scripts.
Every failure the user can fix is a RagvlError, printed as one line with a non-zero exit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import RagvlError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Local visual RAG over PDFs: ColQwen2 retrieval, Qwen2-VL answers, on onnxruntime.")
models_app = typer.Typer(no_args_is_help=True, help="Convert, list and pull models.")
app.add_typer(models_app, name="models")


def _fail(message: str, code: int = 1) -> None:
    print(f"ragvl: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Options shared by the commands that generate text or load models.
MAX_NEW_TOKENS = typer.Option(None, "--max-new-tokens", "-n", help="Default: 256.")
TEMPERATURE = typer.Option(None, "--temperature", help="Sample at this temperature.")
TOP_P = typer.Option(None, "--top-p", help="Nucleus sampling.")
REPETITION_PENALTY = typer.Option(None, "--repetition-penalty")
GREEDY = typer.Option(None, "--greedy/--sample", help="Force greedy or sampled decoding (default: the "
                      "checkpoint's generation_config).")
SEED = typer.Option(None, "--seed", help="Seed for sampling.")
DEVICE = typer.Option(None, "--device", help="cpu or cuda [env RAGVL_DEVICE].")


def _settings(defaults, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, greedy):
    """The checkpoint's generation defaults with the command-line overrides applied."""
    return defaults.with_overrides(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
                                   do_sample=None if greedy is None else not greedy)


def _timings_line(g) -> str:
    t = g.timings.as_dict()
    return (f"{g.prompt_tokens} prompt tokens, {len(g.token_ids)} new; vision {t['vision_s']:.2f}s, "
            f"prefill {t['prefill_s']:.2f}s, decode {t['decode_tok_s'] or 0:.1f} tok/s")


@models_app.command("convert")
def models_convert(
    src: Path = typer.Argument(..., help="A Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)."),
    out: Optional[Path] = typer.Argument(None, help="The ragvl model folder to write (default: the model home, "
                                         "which makes it available to index/search/ask)."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights of the MatMuls: fp32, int8 or int4."),
    base: Optional[Path] = typer.Option(None, "--base", help="For a LoRA adapter folder: its base checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing ragvl model folder."),
    default: bool = typer.Option(False, "--default", help="Make it the default model of its kind."),
) -> None:
    """Convert a Qwen2-VL or ColQwen2 checkpoint to ONNX (no torch needed, works offline)."""
    from .models.convert import convert
    from .models.manifest import read_manifest
    from .models.registry import default_model, installed_models, models_dir, set_default

    try:
        in_home = out is None
        if in_home:
            out = models_dir() / f"{src.resolve().name.lower()}-{dtype}"
        folder = convert(src, out, dtype=dtype, force=force, base=base, log=_log,
                         share_vision=[f for f, _ in installed_models() if f.resolve() != out.resolve()])
        kind = read_manifest(folder)["kind"]
        if default or (in_home and default_model(kind) in (None, folder)):
            set_default(kind, folder)
            _log(f"{folder.name} is now the default {kind} model")
    except RagvlError as e:
        _fail(str(e))


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """Show the models installed in the model home [env RAGVL_HOME; default ~/.cache/ragvl]."""
    from .models.registry import default_model, installed_models, models_dir

    rows = []
    for folder, m in installed_models():
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        rows.append({"name": folder.name, "kind": m.get("kind"), "dtype": m.get("dtype"), "bytes": size,
                     "default": default_model(m.get("kind", "")) == folder, "path": str(folder)})
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        _log(f"no models in {models_dir()}: run `ragvl models pull` or `ragvl models convert CHECKPOINT_DIR`")
        return
    for r in rows:
        print(f"{'*' if r['default'] else ' '} {r['name']:<32} {r['kind']:<9} {r['dtype']:<5} "
              f"{r['bytes'] / 1e9:7.2f} GB")


@models_app.command("pull")
def models_pull(
    dtype: str = typer.Option("int8", "--dtype", help="fp32, int8 (default: 2x faster on a CPU) or int4."),
    only: Optional[str] = typer.Option(None, "--only", help="One model name or kind (colqwen2, qwen2-vl)."),
) -> None:
    """Download the default models from the Hugging Face hub and convert them (needs the network once)."""
    from .models.pull import pull_defaults

    try:
        for folder in pull_defaults(dtype, _log, only):
            _log(f"installed {folder}")
    except RagvlError as e:
        _fail(str(e))


@app.command("chat")
def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    image: List[Path] = typer.Option([], "--image", "-i", help="An image to show the model (repeatable)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A converted qwen2-vl model folder or "
                                         "installed name [env RAGVL_ANSWERER; default: the installed one]."),
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    temperature: Optional[float] = TEMPERATURE,
    top_p: Optional[float] = TOP_P,
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample from the k most likely tokens."),
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    greedy: Optional[bool] = GREEDY,
    seed: Optional[int] = SEED,
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Resize each image to at most this "
                                             "many pixels (default: the checkpoint's preprocessor config)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Ask Qwen2-VL about images: the answer streams to stdout."""
    from .models.manifest import KIND_GENERATOR
    from .models.qwen2vl import Qwen2VL
    from .models.registry import resolve_model

    try:
        folder = resolve_model(KIND_GENERATOR, model, "--model")
        _log(f"loading {folder}")
        vlm = Qwen2VL(folder, device=device)
        settings = _settings(vlm.defaults, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
                             greedy)
        gen = vlm.chat(prompt, image, settings, max_pixels=max_pixels)
        if as_json:
            gen.consume()
            print(json.dumps(gen.as_dict(), ensure_ascii=False))
            return
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        _log(_timings_line(gen))
    except RagvlError as e:
        _fail(str(e))


EMBEDDER_HELP = "A converted colqwen2 model folder or installed name [env RAGVL_EMBEDDER; default: the installed one]."
DB_HELP = "The index folder [env RAGVL_DB; default: .ragvl in the current folder]."


@app.command("index")
def index(
    paths: List[Path] = typer.Argument(..., help="PDF files or folders (searched recursively for *.pdf)."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    embedder: Optional[Path] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Rasterization DPI (default 120)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index PDFs: rasterize every page, embed it with ColQwen2, store it in LanceDB (incrementally)."""
    from .api import Index
    from .pdf import DEFAULT_DPI

    idx = Index(db, embedder=embedder, device=device, log=_log)
    try:
        summary = idx.index(paths, dpi=dpi or DEFAULT_DPI, progress=not quiet)
    except RagvlError as e:
        _fail(str(e))
        return
    if as_json:
        print(json.dumps({**summary.as_dict(), "db": str(idx.db)}, ensure_ascii=False))
    _log(summary.line())
    if summary.failed:
        raise typer.Exit(1)


def _display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


@app.command("search")
def search(
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="How many pages."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    embedder: Optional[Path] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {rank, path, page, score}."),
) -> None:
    """Find the pages that best match QUERY (ColQwen2 late interaction)."""
    from .api import Index

    try:
        hits = Index(db, embedder=embedder, device=device, log=_log).search(query, k)
    except RagvlError as e:
        _fail(str(e))
        return
    if as_json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
        return
    for h in hits:
        print(f"{h.rank:>3}  {h.score:8.3f}  {_display_path(h.path)}  page {h.page}")


@app.command("ask")
def ask(
    question: str = typer.Argument(..., help="Your question about the indexed PDFs."),
    k: int = typer.Option(3, "-k", "--top-k", min=1, help="How many retrieved pages the answer reads."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    embedder: Optional[Path] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    answerer: Optional[Path] = typer.Option(None, "--answerer", help="A converted qwen2-vl model folder or installed "
                                            "name [env RAGVL_ANSWERER; default: the installed one]."),
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    temperature: Optional[float] = TEMPERATURE,
    top_p: Optional[float] = TOP_P,
    top_k_sampling: Optional[int] = typer.Option(None, "--top-k-sampling", help="Sampling top-k (not pages)."),
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    greedy: Optional[bool] = GREEDY,
    seed: Optional[int] = SEED,
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Each page image's resolution for the "
                                             "answer, in pixels (default 602112: 768 visual tokens)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answer, sources, timings."),
) -> None:
    """Answer a question from the indexed PDFs: retrieve pages, let Qwen2-VL read them, cite them."""
    from .answer.answer import ANSWER_MAX_PIXELS
    from .api import Index

    try:
        idx = Index(db, embedder=embedder, answerer=answerer, device=device, log=_log)
        idx.answerer  # fail on a missing answer model before any retrieval work
        settings = _settings(idx.answerer.defaults, max_new_tokens, temperature, top_p, top_k_sampling,
                             repetition_penalty, seed, greedy)
        result = idx.ask(question, k, settings, max_pixels or ANSWER_MAX_PIXELS)
        if as_json:
            result.consume()
            print(json.dumps(result.as_dict(), ensure_ascii=False))
            return
        for piece in result:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n\nSources:\n")
        for h in result.sources:
            sys.stdout.write(f"  [{h.rank}] {_display_path(h.path)}, page {h.page} (score {h.score:.2f})\n")
        for note in result.notes:
            _log(f"note: {note}")
        t = result.generation.timings.as_dict()
        _log(f"retrieval {result.retrieval_s:.2f}s, first token {result.retrieval_s + t['first_token_s']:.2f}s; "
             + _timings_line(result.generation))
    except RagvlError as e:
        _fail(str(e))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
