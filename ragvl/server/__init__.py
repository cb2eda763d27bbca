"""`ragvl serve` (web page + JSON API, ragvl.server.app) and `ragvl mcp` (ragvl.server.mcp_server).

Both sit on one `Service` (ragvl.server.service): the Index, lazily loaded models, the answer
queue's cancellation and the indexing jobs. The names below load lazily: `ragvl mcp` needs no
web framework, `ragvl serve` no MCP SDK.
"""

__all__ = ["Service", "ServeOptions", "create_app", "run_stdio"]


def __getattr__(name: str):
    if name in ("Service", "ServeOptions"):
        from . import service

        return getattr(service, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "run_stdio":
        from .mcp_server import run_stdio

        return run_stdio
    raise AttributeError(f"module 'ragvl.server' has no attribute {name!r}")
