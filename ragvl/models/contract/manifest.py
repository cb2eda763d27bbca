"""The manifest (`ragvl.json`) that makes a folder a ragvl model, and its checks."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import RagvlError
from ...fsutil import atomic_write, cache_home, sha256_file
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
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise RagvlError(f"{path}: not a ragvl model manifest of version {FORMAT_VERSION}")
    if kind is not None and m.get("kind") != kind:
        raise RagvlError(f"{folder}: is a {m.get('kind')} model, expected a {kind} model")
    root = folder.resolve()
    for name, info in m.get("files", {}).items():
        f = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not _inside(f, root):
            raise RagvlError(f"{path}: file entry {name!r} points outside the model folder; refusing to use it")
        if not f.exists():
            raise RagvlError(f"{f}: missing from the model folder (re-run `ragvl models convert`)")
        if f.stat().st_size != info["bytes"]:
            raise RagvlError(f"{f}: size differs from the manifest (truncated or modified)")
    if verify:
        verify_files(folder, m)
    return m


def _inside(f: Path, root: Path) -> bool:
    try:
        f.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def verified_cache() -> Path:
    """Where verified file hashes are remembered: the user cache home, never the model folder
    (a model home may be read-only, and a shared vision graph is hard-linked between folders)."""
    return cache_home() / "verified-models.json"


def verify_files(folder: Path, manifest: dict) -> None:
    """Check each file's sha256 against the manifest, once per (file, size, mtime).

    The first use of a folder hashes its files (seconds for a 2B model); the result is cached by
    resolved path, size and mtime, so later uses only stat. A mismatch is a one-line error.
    """
    cache_file = verified_cache()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    changed = False
    for name, info in manifest.get("files", {}).items():
        f = (folder / name).resolve()
        st = f.stat()
        key = str(f)
        if cache.get(key) == [st.st_size, st.st_mtime_ns, info["sha256"]]:
            continue
        if sha256_file(f) != info["sha256"]:
            raise RagvlError(f"{folder / name}: contents differ from the manifest's sha256 (corrupt or modified); "
                             "re-run `ragvl models convert` or `ragvl models pull`")
        cache[key] = [st.st_size, st.st_mtime_ns, info["sha256"]]
        changed = True
    if changed:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_file, json.dumps(cache))
        except OSError:
            pass  # an unwritable cache only costs hashing again next time


def model_config(manifest: dict) -> Qwen2VLConfig:
    return Qwen2VLConfig.from_dict(manifest["config"])
