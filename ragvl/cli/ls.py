"""`ragvl ls`: the indexed documents."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ._common import DB, display_path, log


def ls(db: Optional[str] = DB,
       as_json: bool = typer.Option(False, "--json", help="Print a JSON object: documents and totals.")) -> None:
    """List the indexed documents: path, pages, sha256 (short), indexed-at time; totals."""
    from ..api import Index

    rows = Index(db, log=log).listing()
    total = sum(r["pages"] for r in rows)
    if as_json:
        print(json.dumps({"documents": rows, "total_documents": len(rows), "total_pages": total},
                         ensure_ascii=False))
        return
    for r in rows:
        print(f"{r['pages']:>5}  {r['sha256'][:12]}  {r['indexed_at'] or '-':<20}  {display_path(r['path'])}")
    print(f"{len(rows)} documents, {total} pages")
