"""`ragvl models convert|list|pull`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..models.contract import DEFAULT_DTYPE
from ._common import App, log

models_app = App(no_args_is_help=True, help="Convert, list and pull models.")

# One option for both commands, so that pulling a model and converting its checkpoint by hand
# make the same model (see DEFAULT_DTYPE).
DTYPE = typer.Option(DEFAULT_DTYPE, "--dtype", help=f"Weights of the MatMuls: fp32 (exact), int8 or int4; "
                     f"default {DEFAULT_DTYPE}, in `models pull` and `models convert` alike: a third of fp32's "
                     "memory, 2.5x its decoding speed, page embedding 1.2-1.4x faster; the answer's prefill "
                     "slower than fp32 on CPUs without AVX-512.")


@models_app.command("convert")
def models_convert(
    src: Path = typer.Argument(..., help="A Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)."),
    out: Optional[Path] = typer.Argument(None, help="The ragvl model folder to write (default: the model home, "
                                         "which makes it available to index/search/ask)."),
    dtype: str = DTYPE,
    base: Optional[Path] = typer.Option(None, "--base", help="For a LoRA adapter folder: its base checkpoint."),
    int8_kernel: str = typer.Option("rows", "--int8-kernel", help="int8 only: the kernel of the vision tower and "
                                    "the page embedder. rows (int8 activations per row, MatMulInteger): pages embed "
                                    "1.5x faster than with nbits on an AVX2 CPU, scores move ~2x further from fp32's; "
                                    "nbits (MatMulNBits, as every decoder uses)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing ragvl model folder."),
    default: bool = typer.Option(False, "--default", help="Make it the default model of its kind."),
    no_optimized: bool = typer.Option(False, "--no-optimized-graphs", help="Do not save onnxruntime's optimized "
                                      "graphs beside the plain ones (they read the plain graphs' weights: little "
                                      "disk saved; each load then optimizes, seconds at the 2B shape)."),
) -> None:
    """Convert a Qwen2-VL or ColQwen2 checkpoint to ONNX (no torch needed, works offline)."""
    from ..models.converter import convert
    from ..models.contract import read_manifest
    from ..models.contract import default_model, installed_models, models_dir, set_default

    in_home = out is None
    if in_home:
        out = models_dir() / f"{src.resolve().name.lower()}-{dtype}"
    folder = convert(src, out, dtype=dtype, force=force, base=base, log=log, optimize=not no_optimized,
                     int8_kernel=int8_kernel,
                     share_vision=[f for f, _ in installed_models() if f.resolve() != out.resolve()])
    kind = read_manifest(folder, verify=False)["kind"]  # just written and hashed
    if default or (in_home and default_model(kind) in (None, folder)):
        set_default(kind, folder)
        log(f"{folder.name} is now the default {kind} model")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """Show the models installed in the model home [env RAGVL_HOME; default $XDG_CACHE_HOME/ragvl, else ~/.cache/ragvl]."""
    from ..models.contract import cpu_features, default_model, graph_kernels, installed_models, models_dir

    rows, installed = [], installed_models()
    for folder, m in installed:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        rows.append({"name": folder.name, "kind": m.get("kind"), "dtype": m.get("dtype"), "bytes": size,
                     "default": default_model(m.get("kind", "")) == folder, "path": str(folder),
                     "kernels": graph_kernels(m), "cpu": cpu_features().kind})
    if as_json:
        print(json.dumps([{**r, **_optimized(m)} for r, (_, m) in zip(rows, installed)]))
        return
    if not rows:
        log(f"no models in {models_dir()}: run `ragvl models pull` or `ragvl models convert CHECKPOINT_DIR`")
        return
    for r in rows:
        kernels = ", ".join(f"{g} {k}" for g, k in r["kernels"].items())
        print(f"{'*' if r['default'] else ' '} {r['name']:<32} {r['kind']:<9} {r['dtype']:<5} "
              f"{r['bytes'] / 1e9:7.2f} GB  {kernels}")
    log(f"kernels as this CPU runs them ({cpu_features().kind}; RAGVL_INT8_KERNEL overrides the int8 one)")


def _optimized(manifest: dict) -> dict:
    """Whether a model's saved optimized graphs load here on the CPU, and why (`models list --json`)."""
    from ..models.contract import optimized_status

    usable, reason = optimized_status(manifest, "CPUExecutionProvider")
    return {"optimized": usable, "optimized_reason": reason}


@models_app.command("pull")
def models_pull(
    dtype: str = DTYPE,
    only: Optional[str] = typer.Option(None, "--only", help="One model name or kind (colqwen2, qwen2-vl)."),
) -> None:
    """Download the default models from the Hugging Face hub and convert them (needs the network once)."""
    from ..models.converter import pull_defaults

    for folder in pull_defaults(dtype, log, only):
        log(f"installed {folder}")
