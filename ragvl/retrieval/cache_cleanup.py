"""Search-cache cleanup by age: nothing another process may still be reading is deleted.

A reader cannot be seen (it may be another process, on another machine for a shared folder),
so age is the only safe rule: a file younger than the grace period may be in use.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from .segments import SEG_PREFIX, TMP_PREFIX, UNREADABLE

__all__ = ["cleanup", "view_segments", "GRACE_S"]

GRACE_S = 3600.0           # a cache file younger than this may be in use by another process


def cleanup(root: Path, *, keep: Path | None = None, grace_s: float = GRACE_S) -> None:
    """Delete cache files no process can still be using, judged by age (see the module docstring).

    Views older than `grace_s` go, except the newest of each index and `keep`; then segments
    that no remaining view references and that are older than `grace_s`; then stale temp folders.
    """
    now = time.time()
    views = root / "views"
    newest: dict[str, tuple[int, Path]] = {}
    all_views = list(views.glob("*.npz")) if views.is_dir() else []
    for p in all_views:
        try:
            idkey, v = p.stem.rsplit("-v", 1)
            v = int(v)
        except ValueError:
            continue
        if idkey not in newest or v > newest[idkey][0]:
            newest[idkey] = (v, p)
    keep_set = {p for _, p in newest.values()} | ({keep} if keep else set())
    referenced: set[str] = set()
    for p in all_views:
        if p not in keep_set and _age(p, now) > grace_s:
            p.unlink(missing_ok=True)
            continue
        try:
            referenced.update(view_segments(p))
        except UNREADABLE:
            continue
    for d in root.iterdir() if root.is_dir() else []:
        if d.name.startswith(SEG_PREFIX) and d.name[len(SEG_PREFIX):] not in referenced and _age(d, now) > grace_s:
            shutil.rmtree(d, ignore_errors=True)
        elif d.name.startswith(TMP_PREFIX) and _age(d, now) > grace_s:
            shutil.rmtree(d, ignore_errors=True)
    for old in root.parent.glob("v[0-9]*"):                    # the previous cache layout (cache/v{N}/)
        if _age(old, now) > grace_s:
            shutil.rmtree(old, ignore_errors=True)


def _age(p: Path, now: float) -> float:
    try:
        return now - p.stat().st_mtime
    except OSError:
        return 0.0


def view_segments(path: Path) -> list[str]:
    """The segment ids a view file references (for cleanup)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))["segments"]
