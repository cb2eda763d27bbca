"""Which embedder folder reads or extends an index: the one it recorded, found again.

An index records its embedder as {"id", "folder", "max_pixels"} (meta key `embedder`). Later
commands without `--embedder` use that folder while it still holds a model with the same id;
if the folder moved or is gone, any installed model in the model home with the same id; else
one line naming the id, the folder it was at, and the fix.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RagvlError
from ..models.contract import KIND_EMBEDDER, installed_models, models_dir, read_manifest
from ..models.runtime import MAX_PIXELS, embedder_id


def folder_id(folder: str | Path | None, max_pixels: int | None) -> str | None:
    """The embedder id of the model in `folder` (None: no readable colqwen2 model there)."""
    if not folder:
        return None
    try:
        return embedder_id(read_manifest(folder, kind=KIND_EMBEDDER, verify=False), max_pixels or MAX_PIXELS)
    except RagvlError:
        return None


def find_recorded(db: Path, record: dict, *, allow_changed: bool = False) -> Path:
    """The folder of the embedder recorded in an index (see the module docstring).

    `allow_changed`: accept the recorded folder even if its model's id changed (re-embedding).
    """
    want, folder, px = record.get("id"), record.get("folder"), record.get("max_pixels")
    now = folder_id(folder, px)
    if now == want or (allow_changed and now is not None):
        return Path(folder)
    for f, m in installed_models():
        if m.get("kind") == KIND_EMBEDDER and folder_id(f, px) == want:
            return f
    if now is not None:  # the folder is there but holds other vectors now: re-converted
        raise RagvlError(f"{db}: built with embedder {want}, but the model at {folder} now makes {now} "
                         "(converted again?): re-embed with `ragvl index --reembed`, or pass --embedder DIR "
                         "of the model that built the index")
    raise RagvlError(f"{db}: built with embedder {want}, which was at {folder or 'an unrecorded folder'} and is "
                     f"gone, and no model in {models_dir()} has that id: pass --embedder DIR, or install it with "
                     "`ragvl models pull`")
