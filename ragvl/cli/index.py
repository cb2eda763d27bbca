"""`ragvl index`: bring the page index up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import RagvlError
from ._common import DB, DEVICE, EMBEDDER, fail, log


def index(
    paths: List[Path] = typer.Argument(..., help="PDF or image files, or folders (searched recursively for PDFs and images)."),
    db: Optional[str] = DB,
    embedder: Optional[Path] = EMBEDDER,
    dpi: Optional[int] = typer.Option(None, "--dpi", help="Rasterization DPI (default 120)."),
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
    vision_cache_gb: Optional[float] = typer.Option(None, "--vision-cache-gb", min=0, help="Cap on the stored "
                                                    "vision features, in GB, recorded in the index (default 4; "
                                                    "least recently used pages go first)."),
) -> None:
    """Index PDFs and images: rasterize every page, embed it with ColQwen2, store it in LanceDB (incrementally)."""
    from ..api import Index
    from ..ingest import DEFAULT_DPI

    idx = Index(db, embedder=embedder, device=device, log=log)
    try:
        cluster = None
        if workers is not None or ray_address is not None or threads_per_worker or gpus_per_worker:
            from ..distributed.options import RayOptions  # Ray itself is imported only past this point

            cluster = RayOptions(workers=workers, address=ray_address, threads_per_worker=threads_per_worker,
                                 gpus_per_worker=gpus_per_worker)
        cap = None if vision_cache_gb is None else int(vision_cache_gb * 1024 ** 3)
        summary = idx.index(paths, dpi=dpi or DEFAULT_DPI, progress=not quiet, cluster=cluster,
                            vision_cache=not no_vision_cache, vision_cache_bytes=cap)
    except RagvlError as e:
        fail(str(e))
        return
    if as_json:
        print(json.dumps({**summary.as_dict(), "db": str(idx.db)}, ensure_ascii=False))
    log(summary.line())
    if summary.failed or summary.skipped_pages:  # exit 1 so that scripts notice what is missing
        raise typer.Exit(1)
