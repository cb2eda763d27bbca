"""`ragvl models pull`: download the default checkpoints with huggingface_hub and convert them.

Downloads go to the Hugging Face cache (resumable; HF_TOKEN / `hf auth login` and HF_HUB_OFFLINE
are honoured); the converted models go to the model home and become the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ...errors import RagvlError
from .convert import convert
from ..contract import DEFAULT_DTYPE, KNOWN_MODELS, KnownModel, installed_models, models_dir, set_default


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo: str, patterns: tuple[str, ...], log: Callable[[str], None]) -> Path:
    """One hub repo's matching files in the HF cache; fails at once when there is no network."""
    if _offline():
        raise RagvlError(f"cannot download {repo}: HF_HUB_OFFLINE is set. Convert a downloaded checkpoint "
                         f"instead: `ragvl models convert CHECKPOINT_DIR`")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise RagvlError("`ragvl models pull` needs huggingface_hub: pip install huggingface_hub") from None
    log(f"downloading {repo}")
    try:
        return Path(snapshot_download(repo, allow_patterns=list(patterns), etag_timeout=10))
    except Exception as e:  # huggingface_hub raises many kinds; all mean "could not download"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RagvlError(f"cannot download {repo} from the Hugging Face hub ({first}). Without network, "
                         f"convert a downloaded checkpoint: `ragvl models convert CHECKPOINT_DIR`") from None


def pull(model: KnownModel, dtype: str, log: Callable[[str], None], force: bool = False) -> Path:
    """Download `model` (and its base), convert it into the model home, make it the default."""
    out = models_dir() / f"{model.name}-{dtype}"
    src = download(model.repo, model.files, log)
    base = download(model.base_repo, model.files, log) if model.base_repo else None
    convert(src, out, dtype=dtype, base=base, force=force or out.exists(),
            share_vision=[f for f, _ in installed_models()], log=log)
    set_default(model.kind, out)
    return out


def pull_defaults(dtype: str = DEFAULT_DTYPE, log: Callable[[str], None] = print,
                  only: str | None = None) -> list[Path]:
    """Pull every known model (or the one named or of the kind `only`) at `dtype`; their folders."""
    names = [n for n, m in KNOWN_MODELS.items() if only is None or only in (n, m.kind)]
    if not names:
        raise RagvlError(f"--only {only}: expected one of {', '.join(KNOWN_MODELS)}")
    return [pull(KNOWN_MODELS[n], dtype, log) for n in names]
