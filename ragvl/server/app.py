"""`ragvl serve`: the web page and its JSON API, a Starlette app (see README "Web page, HTTP API and MCP").

    GET    /                              the page (HTML/CSS/JS shipped in ragvl/server/static)
    GET    /api/status                    models, documents, pages, index size, problems
    GET    /api/search?q=...&k=5          the `ragvl search --json` list, each hit with its page id
    POST   /api/ask  {"question", "k"}    server-sent events: queued, started, token..., sources, done
    GET    /api/pages/{id}.png            a page image, by id only
    GET    /api/pages/{id}/map.png?q=...  its similarity map for q
    GET    /api/documents                 the indexed documents
    POST   /api/documents {"paths": []}   index files/folders under --root: 202 + a job
    DELETE /api/documents?path=...        remove one document
    GET    /api/jobs/{job}                an indexing job's progress
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import RagvlError
from ..store import parse_page_id
from .answers import AnswerQueue
from .jobs import Jobs
from .security import Guard
from .service import Service, check_k

STATIC = Path(__file__).parent / "static"


class BadRequest(HTTPException):
    def __init__(self, detail: str, status: int = 400):
        super().__init__(status, detail)


def _k(raw, default: int) -> int:
    try:
        return check_k(raw, default)
    except RagvlError as e:
        raise BadRequest(str(e)) from None


async def _json_body(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("send a JSON body with Content-Type: application/json", 415)
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _page_id(request: Request) -> str:
    pid = request.path_params["id"]
    try:
        parse_page_id(pid)
    except RagvlError as e:
        raise BadRequest(str(e)) from None
    return pid


async def _call(fn, *args, not_found: bool = False):
    """Run a blocking Service call in a worker thread; a RagvlError becomes a 400 (or 404)."""
    try:
        return await run_in_threadpool(fn, *args)
    except RagvlError as e:
        raise BadRequest(str(e), 404 if not_found else 400) from None


def create_app(service: Service, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
               allow_hosts: tuple[str, ...] = ()) -> Guard:
    """The ASGI app for `service`, behind the Host/token/CSRF guard."""
    answers = AnswerQueue(service)
    jobs = Jobs(service)
    immutable = {"Cache-Control": "private, max-age=86400"}  # page ids name content: safe to cache

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def status(request: Request):
        out = await _call(service.status)
        out["answers_waiting"] = answers.waiting()
        out["jobs"] = jobs.active()
        return JSONResponse(out)

    async def search(request: Request):
        q = request.query_params.get("q", "")
        if not q.strip():
            raise BadRequest("missing query: /api/search?q=...")
        return JSONResponse(await _call(service.search, q, _k(request.query_params.get("k"), 5)))

    async def ask(request: Request):
        body = await _json_body(request)
        question = body.get("question")
        if not isinstance(question, str) or not question.strip():
            raise BadRequest("'question' must be a non-empty string")
        k = _k(body.get("k"), 3)
        await _call(service.check_can_answer)

        async def events():
            async for name, data in answers.stream(question, k):
                yield {"event": name, "data": json.dumps(data, ensure_ascii=False)}

        return EventSourceResponse(events(), ping=10)

    async def page_png(request: Request):
        data = await _call(service.page_png, _page_id(request), not_found=True)
        return Response(data, media_type="image/png", headers=immutable)

    async def map_png(request: Request):
        pid = _page_id(request)
        q = request.query_params.get("q", "")
        if not q.strip():
            raise BadRequest("missing query: map.png?q=...")
        return Response(await _call(service.map_png, pid, q, not_found=True), media_type="image/png",
                        headers=immutable)

    async def documents(request: Request):
        if request.method == "GET":
            return JSONResponse(await _call(service.documents))
        if request.method == "DELETE":
            path = request.query_params.get("path", "")
            if not path:
                raise BadRequest("missing ?path=")
            removed = await _call(service.remove, path)
            if not removed:
                raise BadRequest(f"{path}: not in the index", 404)
            return JSONResponse({"removed": removed})
        body = await _json_body(request)
        paths = body.get("paths")
        if not isinstance(paths, list):
            raise BadRequest("'paths' must be a list of file or folder paths")
        try:
            checked = await run_in_threadpool(service.check_under_roots, paths)
        except PermissionError as e:
            raise BadRequest(str(e), 403) from None
        except RagvlError as e:
            raise BadRequest(str(e)) from None
        job = jobs.submit(checked)
        return JSONResponse({"job": job["id"], "url": f"/api/jobs/{job['id']}", **job}, status_code=202)

    async def job(request: Request):
        found = jobs.get(request.path_params["job"])
        if found is None:
            raise BadRequest("no such job", 404)
        return JSONResponse(found)

    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception):
        service.log(traceback.format_exc())
        return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)

    app = Starlette(routes=[
        Route("/", page),
        Route("/api/status", status),
        Route("/api/search", search),
        Route("/api/ask", ask, methods=["POST"]),
        Route("/api/pages/{id}.png", page_png),
        Route("/api/pages/{id}/map.png", map_png),
        Route("/api/documents", documents, methods=["GET", "POST", "DELETE"]),
        Route("/api/jobs/{job}", job),
        Mount("/static", StaticFiles(directory=STATIC)),
    ], exception_handlers={HTTPException: http_error, Exception: server_error})
    return Guard(app, host=host, port=port, token=token, allow_hosts=allow_hosts)
