"""`ragvl mcp`: a Model Context Protocol server on stdio (the official `mcp` SDK, 2.x).

Tools: search(query, k=5) and get_page(id) are the core (an assistant reads the page images
itself); list_documents(); ask(question, k=3), which runs the local answer model and reports
progress while it waits, reads and writes (clients that reset their timeout on progress keep
waiting). stdout carries the protocol: every log line goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import time

from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from ..errors import RagvlError
from .answers import AnswerQueue
from .service import Service, check_k

HEARTBEAT_S = 5.0  # a progress notification at least this often while ask runs

ASK_DESCRIPTION = (
    "Answer a question from the indexed PDFs with ragvl's local vision-language model (Qwen2-VL), which "
    "reads the k best-matching page images; returns the answer with its cited sources. SLOW: on a CPU it "
    "takes tens of seconds to a few minutes (the model reads ~800 image tokens per page), and only one "
    "answer runs at a time; progress notifications are sent while it runs. Prefer `search` + `get_page` "
    "to read the pages yourself when you can see images.")


async def _call(fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except RagvlError as e:
        raise ToolError(str(e)) from None


def _k(k, default: int) -> int:
    """check_k, the servers' one check of k, as a tool error."""
    try:
        return check_k(k, default)
    except RagvlError as e:
        raise ToolError(str(e)) from None


def build_server(service: Service) -> MCPServer:
    """The MCP server over `service` (tools only: the pages are reached by id through get_page)."""
    mcp = MCPServer(name="ragvl", instructions=(
        "Local visual search over the user's PDF pages. Use `search` to find pages (each has an id), "
        "`get_page` to see a page image, `list_documents` for what is indexed, `ask` for a slow local answer."))
    queue = AnswerQueue(service)

    @mcp.tool(description="Find the PDF pages that best match `query` (ColQwen2 late interaction over page "
                          "images). Returns rank, path, page, score and the page `id` for get_page; with "
                          "images=true also the page images. Fast (about a second).", structured_output=False)
    async def search(query: str, k: int = 5, images: bool = False) -> list:
        k = _k(k, 5)
        hits = await _call(service.search, query, k)
        out: list = [json.dumps(hits, ensure_ascii=False, indent=1)]
        if images:
            for h in hits:
                out.append(Image(data=await _call(service.page_png, h["id"]), format="png"))
        return out

    @mcp.tool(description="The image of one indexed page, by the `id` that search returns.", structured_output=False)
    async def get_page(id: str) -> list:
        return [Image(data=await _call(service.page_png, id), format="png")]

    @mcp.tool(description="The indexed documents: path, sha256 and page count of each.", structured_output=False)
    async def list_documents() -> str:
        return json.dumps(await _call(service.documents), ensure_ascii=False, indent=1)

    @mcp.tool(description=ASK_DESCRIPTION, structured_output=False)
    async def ask(question: str, ctx: Context, k: int = 3) -> str:
        k = _k(k, 3)
        events: asyncio.Queue = asyncio.Queue()

        async def pump():
            try:
                async for event in queue.stream(question, k):
                    await events.put(event)
            finally:
                await events.put(None)

        task = asyncio.create_task(pump())
        step, tokens, state, t0 = 0, 0, "starting", time.monotonic()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    event = ("heartbeat", None)
                if event is None:
                    raise ToolError("the answer ended without a result")
                name, data = event
                if name == "done":
                    return json.dumps(data, ensure_ascii=False, indent=1)
                if name == "error":
                    raise ToolError(data["error"])
                if name == "queued":
                    state = f"waiting: {data['position']} answer(s) ahead"
                elif name == "retrieved":
                    state = f"reading {len(data)} page(s)"
                elif name == "token":
                    tokens += 1
                    state = f"writing: {tokens} tokens"
                    if tokens % 8:
                        continue  # a notification every 8 tokens is plenty
                step += 1
                await ctx.report_progress(step, None, f"{state} ({time.monotonic() - t0:.0f}s)")
        finally:
            task.cancel()  # the client gave up or we are done: stop the generation

    return mcp


def run_stdio(service: Service) -> None:
    build_server(service).run("stdio")
