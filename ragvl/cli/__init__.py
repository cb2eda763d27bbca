"""The `ragvl` command line: a thin typer layer over the library, one module per command group.

Answers go to stdout; progress and logs go to stderr; `--json` prints one object for scripts.
Every failure ends as one line on stderr with a non-zero exit (RAGVL_DEBUG=1 adds the traceback of an
unexpected one): `App` runs every command inside `_common.guarded`.
"""

from __future__ import annotations

from ._common import App
from .ask import ask
from .chat import chat
from .eval import eval_cmd
from .index import index
from .mcp import mcp
from .ls import ls
from .rm import rm
from .status import status
from .model_commands import models_app
from .search import search
from .serve import serve

app = App(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Local visual RAG over PDFs: ColQwen2 retrieval, Qwen2-VL answers, on onnxruntime.")
app.add_typer(models_app, name="models")
app.command("chat")(chat)
app.command("index")(index)
app.command("search")(search)
app.command("ask")(ask)
app.command("eval")(eval_cmd)
app.command("serve")(serve)
app.command("mcp")(mcp)
app.command("ls")(ls)
app.command("rm")(rm)
app.command("status")(status)


def main() -> None:
    app()
