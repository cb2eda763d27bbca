"""Finding documents: the PDFs and image files under the paths a user names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import RagvlError, short

# Raster formats MuPDF opens as one-page (a multi-frame TIFF: one page per frame) documents,
# by file suffix. WebP is not among them (MuPDF 1.28 cannot open it), nor are SVG, EPUB or XPS,
# which are not page images.
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".gif",
    ".pnm", ".pbm", ".pgm", ".ppm", ".pam", ".jp2", ".jpx", ".j2k", ".jxr", ".psd",
})
PDF_SUFFIXES = frozenset({".pdf"})


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file's suffix (any case) is one of IMAGE_SUFFIXES."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def find_documents(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The PDFs and image files named by `paths`: sorted, de-duplicated, resolved absolute paths.

    - A folder is searched recursively for files whose suffix, in any case, is ".pdf" or one of
      IMAGE_SUFFIXES. Hidden entries below it (names starting with ".", such as .git, .ragvl or
      macOS's "._x.pdf" resource forks) are skipped. Symlinked folders are followed, each real
      folder once. A folder with no documents adds nothing; an unreadable folder is an error.
    - A file named explicitly is taken whatever its name (hidden, or another suffix): the user
      asked for it, so `open_document` will say what is wrong with it rather than it being
      silently ignored. A broken symlink named explicitly is an error here.
    - A path that does not exist raises RagvlError naming it, before any work is done.
    """
    return _find(paths, PDF_SUFFIXES | IMAGE_SUFFIXES)


def find_pdfs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Like `find_documents`, but a folder contributes only its PDFs (names ending in .pdf)."""
    return _find(paths, PDF_SUFFIXES)


def _find(paths: Iterable[str | os.PathLike], suffixes: frozenset[str]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for raw in paths:
        p = Path(os.path.expanduser(os.fspath(raw)))
        if not os.path.lexists(p):
            raise RagvlError(f"{raw}: no such file or folder")
        if p.is_symlink() and not p.exists():
            raise RagvlError(f"{raw}: broken symbolic link (its target {os.readlink(p)} does not exist)")
        if p.is_dir():
            found.update(_walk(p, suffixes))
        else:
            found.add(_result_path(p))
    return sorted(found)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _result_path(p: Path) -> Path:
    """Resolved absolute path; a broken symlink stays itself (absolute) so its error can say so."""
    return p.resolve() if p.exists() else Path(os.path.abspath(p))


def _walk(root: Path, suffixes: frozenset[str]) -> Iterator[Path]:
    seen_dirs: set[str] = set()

    def onerror(err: OSError) -> None:
        why = "permission denied" if isinstance(err, PermissionError) else short(err.strerror or err)
        raise RagvlError(f"{err.filename or root}: cannot read folder ({why})")

    for folder, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symlink cycle or a second link to the same folder
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in filenames:
            if not _is_hidden(name) and os.path.splitext(name)[1].lower() in suffixes:
                yield _result_path(Path(folder, name))
