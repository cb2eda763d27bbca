"""`ragvl serve`: the local web page, its JSON API and the similarity maps (ragvl.server)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ._common import ANSWERER, DB, DEVICE, EMBEDDER, GenerationFlags, fail, generation_options, log


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def model_options(db, embedder, answerer, device, gen: GenerationFlags, max_pixels=None, roots=None):
    """ServeOptions from the options `ragvl ask` also takes (shared by serve and mcp)."""
    from ..server import ServeOptions

    return ServeOptions(db=db, embedder=embedder, answerer=answerer, device=device, max_pixels=max_pixels,
                        overrides=gen.overrides(),
                        roots=list(roots) if roots else [Path.cwd()])


@generation_options
def serve(
    db: Optional[str] = DB,
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address. Beyond loopback, --token is required."),
    port: int = typer.Option(8765, "--port", min=0, max=65535),
    root: List[Path] = typer.Option([], "--root", help="A folder whose files the page may add (repeatable) "
                                    "[default: the current folder]."),
    token: Optional[str] = typer.Option(None, "--token", envvar="RAGVL_TOKEN", help="Required in every request "
                                        "(given once in the URL, then kept in a cookie)."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Another Host name the page is reached by "
                                         "(e.g. the machine's LAN name; repeatable)."),
    embedder: Optional[Path] = EMBEDDER,
    answerer: Optional[Path] = ANSWERER,
    gen: GenerationFlags = GenerationFlags(),  # the sampling flags: see generation_options
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="Page resolution for answers (as ask)."),
    device: Optional[str] = DEVICE,
) -> None:
    """Serve a local web page: ask, see the cited pages and where they matched; plus a JSON API."""
    import socket

    import uvicorn

    from ..server import create_app
    from ..server import Service

    if not is_loopback(host) and not token:
        fail(f"--host {host} makes the server reachable from other machines: give it a --token "
             f"(e.g. --token $(python -c 'import secrets; print(secrets.token_urlsafe(24))'))")
    for r in root:
        if not r.is_dir():
            fail(f"--root {r}: not a folder")
    opts = model_options(db, embedder, answerer, device, gen, max_pixels, root)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        fail(f"cannot listen on {host}:{port} ({e.strerror})")
    port = sock.getsockname()[1]  # --port 0 picks a free one
    service = Service(opts, log=log)
    app = create_app(service, host=host, port=port, token=token, allow_hosts=tuple(allow_host))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    print(f"ragvl: serving {service.index.db} at http://{shown}:{port}/"
          + (f"?token={token}" if token else ""), flush=True)
    log("press Ctrl+C to stop")
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    sys.exit(0)
