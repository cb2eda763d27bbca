"""Which documents a search may return: `--in PATH`, `--glob PATTERN`, `--where FIELD OP VALUE`.

Filters select documents, evaluated on one scan of the document-level columns, and are applied
BEFORE ranking: the search layer scores only the allowed pages (`allowed_keys`, or the LanceDB
predicate `filter_sql` for a table-side filter), so a filter never hides a page that a bigger
candidate set would have found.

- `in_paths`: files or folders (as the user types them; relative to the current folder):
  documents that are these files or lie under these folders. Repeatable: any of them.
- `globs`: fnmatch patterns matched against the stored path (relative to the project when the
  document is under it) and against the absolute path; `*` also crosses "/". Any of them.
- `where`: "FIELD OP VALUE" on the PDF metadata stored at indexing, FIELD one of title, author,
  subject, created, modified; OP one of `=`, `!=` (case-insensitive), `~` (contains,
  case-insensitive), `<`, `<=`, `>`, `>=` (text order; dates are ISO 8601, so
  `created>=2024` or `modified<2023-06-01` work). Several are all required. A document without
  the field never matches.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import RagvlError
from ..store import METADATA_FIELDS, sql_quote

if TYPE_CHECKING:
    from ..store import PageStore

_OPS: dict[str, Callable[[str, str], bool]] = {
    "!=": lambda a, b: a.casefold() != b.casefold(),
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
    "=": lambda a, b: a.casefold() == b.casefold(),
    "~": lambda a, b: b.casefold() in a.casefold(),
    "<": lambda a, b: a < b, ">": lambda a, b: a > b,
}
_WHERE = re.compile(r"^\s*(\w+)\s*(!=|<=|>=|=|~|<|>)\s*(.*?)\s*$", re.S)


@dataclass(frozen=True)
class Filters:
    """Document filters for search / ask (see the module docstring). Empty: everything."""

    in_paths: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    where: tuple[str, ...] = ()

    @classmethod
    def of(cls, in_paths: Iterable | None = None, globs: Iterable | str | None = None,
           where: Iterable | str | None = None) -> "Filters":
        """Build from loose arguments (a str or an iterable each); parses `where` now (errors early)."""
        one = lambda x: (x,) if isinstance(x, (str, os.PathLike)) else tuple(x or ())  # noqa: E731
        f = cls(tuple(os.fspath(p) for p in one(in_paths)), one(globs), one(where))
        for w in f.where:
            parse_where(w)
        return f

    def __bool__(self) -> bool:
        return bool(self.in_paths or self.globs or self.where)


def parse_where(expr: str) -> tuple[str, str, str]:
    """"author = Alice" -> ("author", "=", "Alice"); RagvlError naming the problem."""
    m = _WHERE.match(expr)
    if not m:
        raise RagvlError(f"--where {expr!r}: expected FIELD OP VALUE, e.g. \"author=Alice\" or \"created>=2024\"")
    name, op, value = m.groups()
    if name.lower() not in METADATA_FIELDS:
        raise RagvlError(f"--where {expr!r}: unknown field {name!r} (one of {', '.join(METADATA_FIELDS)})")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return name.lower(), op, value


def allowed_documents(store: "PageStore", filters: Filters) -> set[str] | None:
    """Stored paths of the live documents that pass `filters`; None when there are no filters."""
    if not filters:
        return None
    t = store.scan(["doc_path", *METADATA_FIELDS], where=store.visible).to_pydict()
    docs: dict[str, dict] = {}
    for i, path in enumerate(t["doc_path"]):
        docs.setdefault(path, {k: t[k][i] for k in METADATA_FIELDS})
    roots = [Path(os.path.abspath(os.path.expanduser(p))) for p in filters.in_paths]
    conds = [parse_where(w) for w in filters.where]
    out = set()
    for path, meta in docs.items():
        absolute = store.resolve(path)
        if roots and not any(absolute == r or absolute.is_relative_to(r) for r in roots):
            continue
        if filters.globs and not any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(str(absolute), g)
                                     for g in filters.globs):
            continue
        if not all(meta.get(f) is not None and _OPS[op](meta[f], v) for f, op, v in conds):
            continue
        out.add(path)
    return out


def allowed_keys(store: "PageStore", filters: Filters) -> set[tuple[str, int]] | None:
    """(stored path, page) of the searchable pages that pass `filters`; None without filters."""
    docs = allowed_documents(store, filters)
    if docs is None:
        return None
    t = store.scan(["doc_path", "page"]).to_pydict()
    return {(p, n) for p, n in zip(t["doc_path"], t["page"]) if p in docs}


def filter_sql(store: "PageStore", filters: Filters) -> str:
    """A LanceDB predicate selecting the searchable rows that pass `filters`."""
    docs = allowed_documents(store, filters)
    if docs is None:
        return store.searchable
    if not docs:
        return "false"
    return f"({store.searchable}) AND doc_path IN ({', '.join(sql_quote(d) for d in sorted(docs))})"
