"""`ragvl index`: bring the page index up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._common import DB, DEVICE, EMBEDDER, fail, log

GIB = 1024 ** 3


def index(
    paths: List[Path] = typer.Argument(None, help="PDF or image files, or folders (searched recursively for PDFs and images)."),
    db: Optional[str] = DB,
    embedder: Optional[Path] = EMBEDDER,
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Rasterization DPI [default: the index's, else 120]; "
                                      "another value re-renders the documents indexed now."),
    prune: bool = typer.Option(False, "--prune", help="Also remove indexed documents whose files are gone."),
    reembed: bool = typer.Option(False, "--reembed", help="Re-embed every document the current embedder did not "
                                 "embed (after a converter change gave the embedder a new id)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Fail at once if another writer holds the index "
                                 "(default: wait for it)."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Embed on N Ray workers: a fresh local Ray "
                                          "instance (RAY_ADDRESS ignored), or N workers on --ray-address's cluster."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (host:port, or "
                                              "auto: RAY_ADDRESS, else the cluster last started here)."),
    threads_per_worker: Optional[int] = typer.Option(None, "--threads-per-worker", help="onnxruntime threads (and "
                                                     "CPUs reserved) per Ray worker."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs per Ray worker (CUDA provider; "
                                          "untested)."),
    no_vision_cache: bool = typer.Option(False, "--no-vision-cache", help="Do not keep the pages' vision "
                                         "features for `ragvl ask` (about 2.4 MB a page at the 2B shape)."),
    vision_cache_gib: Optional[float] = typer.Option(None, "--vision-cache-gib", min=0, help="Cap on the stored "
                                                     "vision features, in GiB (1024**3 bytes), recorded in the "
                                                     "index (default 4; least recently used pages go first)."),
) -> None:
    """Index PDFs and images: rasterize every page, embed it with ColQwen2, store it in LanceDB (incrementally).

    Exit 1 when a file or a page could not be indexed (each is named); the rest is indexed.
    """
    from ..api import Index

    if not paths and not (prune or reembed):
        fail("give PDF or image files or folders to index (or --prune / --reembed alone)", 2)
    idx = Index(db, embedder=embedder, device=device, log=log, wait=not no_wait)
    cluster = None
    if workers is not None or ray_address is not None or threads_per_worker or gpus_per_worker:
        from ..indexing.distributed import RayOptions  # Ray itself is imported only past this point

        cluster = RayOptions(workers=workers, address=ray_address, threads_per_worker=threads_per_worker,
                             gpus_per_worker=gpus_per_worker)
    cap = None if vision_cache_gib is None else int(vision_cache_gib * GIB)
    summary = idx.index(paths or [], dpi=dpi, progress=not quiet, prune=prune, reembed=reembed, cluster=cluster,
                        vision_cache=not no_vision_cache, vision_cache_bytes=cap)
    if as_json:
        print(json.dumps({**summary.as_dict(), "db": str(idx.db)}, ensure_ascii=False))
    log(summary.line())
    if not summary.ok:
        raise typer.Exit(1)
