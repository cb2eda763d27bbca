"""`ragvl mcp`: driven by the official SDK's stdio client, against tiny models and a real index."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_embedder, tiny_answerer):
    tmp = tmp_path_factory.mktemp("mcp")
    make_pdf(tmp / "docs" / "a.pdf", 2, seed=50)
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", "index", tmp / "docs", "--db", tmp / "db",
                        "--embedder", tiny_embedder, "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return tmp / "db", tiny_embedder, tiny_answerer


async def _session_run(db, embedder, answerer, body):
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "ragvl.cli", "mcp", "--db", str(db),
                                   "--embedder", str(embedder), "--answerer", str(answerer), "-n", "10"],
                                   env=dict(os.environ))
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


def test_mcp_tools_over_stdio(setup):
    db, embedder, answerer = setup
    progress: list[tuple[float, str | None]] = []

    async def body(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == {"search", "get_page", "list_documents", "ask"}
        assert set(tools["search"].input_schema["properties"]) >= {"query", "k"}
        assert set(tools["ask"].input_schema["properties"]) == {"question", "k"}
        assert "seconds" in tools["ask"].description and "progress" in tools["ask"].description
        found = await session.call_tool("search", {"query": "revenue in region 1", "k": 2, "images": True})
        hits = json.loads(found.content[0].text)
        assert [h["rank"] for h in hits] == [1, 2] and all(h["id"] for h in hits)
        assert [c.type for c in found.content[1:]] == ["image", "image"]
        page = await session.call_tool("get_page", {"id": hits[0]["id"]})
        img = Image.open(io.BytesIO(base64.b64decode(page.content[0].data)))
        assert page.content[0].mime_type == "image/png" and img.width > 100
        bad = await session.call_tool("get_page", {"id": "../../etc/passwd"})
        assert bad.is_error and "not a page id" in bad.content[0].text
        docs = json.loads((await session.call_tool("list_documents", {})).content[0].text)
        assert [d["pages"] for d in docs] == [2]

        async def on_progress(p, total, message):
            progress.append((p, message))

        answer = await session.call_tool("ask", {"question": "What grew?", "k": 1}, progress_callback=on_progress)
        result = json.loads(answer.content[0].text)
        assert set(result) >= {"answer", "sources", "timings"} and isinstance(result["answer"], str)
        assert [s["rank"] for s in result["sources"]] == [1] and result["sources"][0]["id"]
        from ragvl.server.service import MAX_K

        for tool, args in (("search", {"query": "x"}), ("ask", {"question": "x"})):
            over = await session.call_tool(tool, {**args, "k": MAX_K + 1})  # the HTTP API's limit and message
            assert over.is_error and over.content[0].text == \
                f"Error executing tool {tool}: k must be between 1 and {MAX_K}, not {MAX_K + 1}"
        empty = await session.call_tool("ask", {"question": "  "})
        assert empty.is_error and "empty" in empty.content[0].text
        return True

    assert asyncio.run(_session_run(db, embedder, answerer, body))
    assert progress and all(b[0] > a[0] for a, b in zip(progress, progress[1:]))  # increasing, as MCP requires
    assert any("reading 1 page" in (m or "") for _, m in progress)


@pytest.mark.s3
def test_mcp_on_an_s3_index(setup, tmp_path):
    """search, get_page and list_documents on an index on the local S3 server."""
    from scale_helpers import ragvl, s3_server

    db, embedder, answerer = setup
    with s3_server():
        uri = "s3://bkt/mcp"
        r = ragvl("index", db.parent / "docs", "--db", uri, "--embedder", embedder, "-q")
        assert r.returncode == 0, r.stderr

        async def body(session):
            found = await session.call_tool("search", {"query": "revenue in region 1", "k": 2})
            hits = json.loads(found.content[0].text)
            assert [h["rank"] for h in hits] == [1, 2]
            page = await session.call_tool("get_page", {"id": hits[0]["id"]})
            assert page.content[0].mime_type == "image/png" and not page.is_error
            docs = json.loads((await session.call_tool("list_documents", {})).content[0].text)
            return [d["pages"] for d in docs]

        assert asyncio.run(_session_run(uri, embedder, answerer, body)) == [2]
