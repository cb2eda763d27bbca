"""Known models, the model home, and how commands find the model they use.

Like fastembed, each model ragvl can fetch by itself is described by one frozen dataclass.
Converted models live in the model home (`RAGVL_HOME`, else `$XDG_CACHE_HOME/ragvl`, else
`~/.cache/ragvl`) under
`models/NAME-DTYPE/`; `defaults.json` there names the embedder and answerer that `index`,
`search` and `ask` use when none is given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import RagvlError
from ...fsutil import atomic_write, ragvl_home
from .manifest import KIND_EMBEDDER, KIND_ANSWERER, MANIFEST, read_manifest


@dataclass(frozen=True)
class KnownModel:
    """A checkpoint on the Hugging Face hub that `ragvl models pull` can fetch and convert."""

    name: str
    kind: str  # KIND_ANSWERER or KIND_EMBEDDER
    repo: str
    base_repo: str | None  # for LoRA adapters: the checkpoint they are merged into
    license: str
    download_gb: float
    description: str
    files: tuple[str, ...] = ("*.json", "*.safetensors", "*.jinja", "*.txt")


KNOWN_MODELS = {
    m.name: m for m in (
        KnownModel("qwen2-vl-2b-instruct", KIND_ANSWERER, "Qwen/Qwen2-VL-2B-Instruct", None, "apache-2.0", 4.4,
                   "answers questions over page images"),
        KnownModel("colqwen2-v1.0", KIND_EMBEDDER, "vidore/colqwen2-v1.0", "vidore/colqwen2-base", "mit (adapter), "
                   "apache-2.0 (base)", 4.5, "page retrieval: LoRA adapter merged into colqwen2-base"),
    )
}
# The weights `models pull` and `models convert` write unless told otherwise. One default, so that
# converting a downloaded checkpoint by hand makes the same model (folder name, embedder id) as
# pulling it; int8 for its memory and speed (README "Models"; `--dtype fp32` is the exact conversion).
DEFAULT_DTYPE = "int8"
ENV = {KIND_EMBEDDER: "RAGVL_EMBEDDER", KIND_ANSWERER: "RAGVL_ANSWERER"}
ROLE = {KIND_EMBEDDER: "embedder", KIND_ANSWERER: "answerer"}


def model_home() -> Path:
    """RAGVL_HOME, else $XDG_CACHE_HOME/ragvl, else ~/.cache/ragvl (the rule RAGVL_CACHE follows too)."""
    return ragvl_home("RAGVL_HOME")


def models_dir() -> Path:
    return model_home() / "models"


def installed_models() -> list[tuple[Path, dict]]:
    """(folder, manifest) of every converted model in the model home."""
    out = []
    root = models_dir()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if (folder / MANIFEST).exists():
                try:
                    m = json.loads((folder / MANIFEST).read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(m, dict):  # else not a manifest ragvl wrote: not a model
                    out.append((folder, m))
    return out


def _defaults_file() -> Path:
    return model_home() / "defaults.json"


def read_defaults() -> dict:
    try:
        return json.loads(_defaults_file().read_text())
    except (OSError, ValueError):
        return {}


def set_default(kind: str, folder: Path) -> None:
    """Record `folder` as the default model of `kind` (atomically)."""
    d = read_defaults()
    d[ROLE[kind]] = folder.name
    path = _defaults_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(d, indent=2) + "\n")


def default_model(kind: str) -> Path | None:
    """The default installed model of `kind`: the one recorded in defaults.json, else the only one."""
    name = read_defaults().get(ROLE[kind])
    if name and (models_dir() / name / MANIFEST).exists():
        return models_dir() / name
    of_kind = [f for f, m in installed_models() if m.get("kind") == kind]
    return of_kind[0] if len(of_kind) == 1 else None


def resolve_model(kind: str, explicit: str | Path | None, option: str | None = None) -> Path:
    """The model folder a command should use: the option, else the env var, else the default."""
    chosen = explicit or os.environ.get(ENV[kind])
    if chosen:
        folder = Path(chosen)
        if not folder.exists() and (models_dir() / str(chosen)).exists():
            folder = models_dir() / str(chosen)  # a name in the model home
        read_manifest(folder, kind=kind)  # a clear error for a wrong folder or kind
        return folder
    folder = default_model(kind)
    if folder is None:
        raise RagvlError(f"no {ROLE[kind]} model installed in {models_dir()}: run `ragvl models pull` (needs the "
                         f"network once), or `ragvl models convert CHECKPOINT_DIR` from a downloaded checkpoint "
                         f"(offline); or pass {option or '--' + ROLE[kind]} DIR")
    return folder
