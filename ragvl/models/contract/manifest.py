"""The manifest (`ragvl.json`) that makes a folder a ragvl model, and its checks."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import RagvlError
from ...fsutil import sha256_file
from .config import Qwen2VLConfig

MANIFEST = "ragvl.json"
FORMAT = "ragvl-model"
FORMAT_VERSION = 1
KIND_ANSWERER = "qwen2-vl"  # the answerer: vision + embed + decoder with KV cache
KIND_EMBEDDER = "colqwen2"   # page/query multi-vectors


def write_manifest(folder: Path, manifest: dict) -> None:
    """Hash every file in `folder` into the manifest and write it last: its presence means done."""
    files = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name != MANIFEST:
            files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: str | Path, kind: str | None = None, *, verify: bool = True) -> dict:
    """Load and sanity-check a model folder's manifest; `kind` restricts what is accepted."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise RagvlError(f"{folder}: no such model folder")
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise RagvlError(f"{folder}: not a ragvl model (no {MANIFEST}; convert a checkpoint with "
                         f"`ragvl models convert`)") from None
    except (OSError, ValueError) as e:
        raise RagvlError(f"{path}: unreadable manifest ({e})") from None
    if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise RagvlError(f"{path}: not a ragvl model manifest of version {FORMAT_VERSION}")
    if kind is not None and m.get("kind") != kind:
        raise RagvlError(f"{folder}: is a {m.get('kind')} model, expected a {kind} model")
    for name, info in m.get("files", {}).items():
        f = folder / name
        if not f.exists():
            raise RagvlError(f"{f}: missing from the model folder (re-run `ragvl models convert`)")
        if f.stat().st_size != info["bytes"]:
            raise RagvlError(f"{f}: size differs from the manifest (truncated or modified)")
    return m


def model_config(manifest: dict) -> Qwen2VLConfig:
    return Qwen2VLConfig.from_dict(manifest["config"])
