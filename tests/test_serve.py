"""`ragvl serve`: the JSON API against a real uvicorn, tiny models and a real index; safety; load."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from servers import Served, sse_events
from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop


@pytest.fixture(scope="module")
def answerer(tiny_answerer):
    return tiny_answerer


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_embedder):
    """A --root folder with an indexed docs/ folder and a not-yet-indexed extra/ folder."""
    root = tmp_path_factory.mktemp("serve")
    for i in range(2):
        make_pdf(root / "docs" / f"r{i}.pdf", 2, seed=30 + i)
    make_pdf(root / "extra" / "added.pdf", 2, seed=40)
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", "index", root / "docs", "--db", root / "db",
                        "--embedder", tiny_embedder, "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope="module")
def server(root, tiny_embedder, answerer):
    s = Served("--db", root / "db", "--root", root, "--embedder", tiny_embedder, "--answerer", answerer, "-n", "12")
    yield s
    log = s.stop()
    assert "Traceback" not in log, log


def ask(client: httpx.Client, question: str, k: int = 2) -> list[tuple[str, object]]:
    with client.stream("POST", "/api/ask", json={"question": question, "k": k}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r)


def test_status_search_pages_and_maps(server, root):
    with server.client() as c:
        st = c.get("/api/status").json()
        assert st["documents"] == 2 and st["pages"] == 4 and st["index_bytes"] > 0
        assert st["embedder"] and st["answerer"] and st["problems"] == []
        hits = c.get("/api/search", params={"q": "revenue in region 1", "k": 3}).json()
        assert [h["rank"] for h in hits] == [1, 2, 3] and all(set(h) == {"rank", "path", "page", "score", "id", "mode", "visual_rank", "text_rank", "also"}
                                                               for h in hits)
        cli = subprocess.run([sys.executable, "-m", "ragvl.cli", "search", "revenue in region 1", "-k", "3", "--db",
                              root / "db", "--embedder", server_embedder(server), "--json"],
                             capture_output=True, text=True, timeout=300)
        assert json.loads(cli.stdout) == hits  # the same list as `ragvl search --json`
        png = c.get(f"/api/pages/{hits[0]['id']}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        page = Image.open(io.BytesIO(png.content))
        heat = c.get(f"/api/pages/{hits[0]['id']}/map.png", params={"q": "revenue"})
        assert heat.status_code == 200 and Image.open(io.BytesIO(heat.content)).size == page.size
        docs = c.get("/api/documents").json()
        assert sorted(d["path"] for d in docs) == sorted(str(root / "docs" / f"r{i}.pdf") for i in range(2))
        assert c.get("/").text.startswith("<!doctype html>")
        assert "ask-form" in c.get("/").text and c.get("/static/app.js").status_code == 200


def server_embedder(server) -> str:
    args = server.proc.args
    return args[args.index("--embedder") + 1]


def test_ask_streams_tokens_then_sources_then_timings(server):
    with server.client() as c:
        events = ask(c, "What grew in region 1?", k=2)
        names = [n for n, _ in events]
        assert names[0] == "started" and names[1] == "retrieved" and names[-2:] == ["sources", "done"]
        assert set(names[2:-2]) <= {"token"}
        done = events[-1][1]
        assert "".join(d["text"] for n, d in events if n == "token") == done["answer"]
        assert set(done) >= {"question", "answer", "sources", "timings", "prompt_tokens", "new_tokens"}
        assert set(done["timings"]) >= {"retrieval_s", "load_s", "vision_s", "prefill_s", "first_token_s",
                                        "decode_tok_s"}
        hits = c.get("/api/search", params={"q": "What grew in region 1?", "k": 2}).json()
        assert events[-2][1] == hits == done["sources"]


def test_bad_requests_get_json_4xx(server):
    with server.client() as c:
        cases = [
            c.get("/api/search"), c.get("/api/search", params={"q": "x", "k": "many"}),
            c.get("/api/search", params={"q": "x", "k": 0}), c.get("/api/pages/..%2F..%2Fetc%2Fpasswd.png"),
            c.get("/api/pages/not-an-id.png"), c.get("/api/pages/0123456789abcdef-1.png"),
            c.get("/api/pages/0123456789abcdef-1/map.png", params={"q": "x"}),
            c.post("/api/ask", content=b"{not json", headers={"content-type": "application/json"}),
            c.post("/api/ask", json=["a list"]), c.post("/api/ask", json={"question": ""}),
            c.post("/api/ask", json={"question": "x", "k": "three"}),
            c.post("/api/ask", content=b"question=x", headers={"content-type": "application/x-www-form-urlencoded"}),
            c.post("/api/documents", json={"paths": "not a list"}), c.post("/api/documents", json={"paths": []}),
            c.post("/api/documents", json={"paths": ["/no/such/file.pdf"]}),
            c.delete("/api/documents", params={"path": "/never/indexed.pdf"}), c.delete("/api/documents"),
            c.get("/api/jobs/nope"), c.get("/api/nothing-here"), c.put("/api/documents", json={}),
        ]
        for r in cases:
            assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json" and "error" in r.json(), r.text
            assert "Traceback" not in r.text
        assert cases[5].status_code == 404 and cases[4].status_code == 400 and cases[11].status_code == 415


def test_safety_host_origin_and_root(server, tmp_path):
    make_pdf(tmp_path / "outside.pdf", 1)
    with server.client() as c:
        for host in ("evil.example", f"evil.example:{server.port}", f"127.0.0.1:{server.port + 1}", "127.0.0.1.nip.io"):
            r = c.get("/api/status", headers={"host": host})
            assert r.status_code == 403 and "Host" in r.json()["error"]
        for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
            assert c.get("/api/status", headers={"host": host}).status_code == 200
        # CSRF: state-changing requests from another origin are refused (no token to show)
        evil = {"origin": "http://evil.example"}
        assert c.post("/api/ask", json={"question": "x"}, headers=evil).status_code == 403
        assert c.post("/api/documents", json={"paths": ["docs"]}, headers=evil).status_code == 403
        assert c.delete("/api/documents", params={"path": "x"}, headers={"sec-fetch-site": "cross-site"}).status_code == 403
        assert c.get("/api/search", params={"q": "x"}, headers=evil).status_code == 200  # reads stay CORS-protected
        same = {"origin": server.base}
        assert c.post("/api/documents", json={"paths": ["/nonexistent"]}, headers=same).status_code in (400, 403)
        # add-documents paths must lie under --root, however they are spelled
        for p in (str(tmp_path / "outside.pdf"), str(tmp_path), "../" * 12 + "etc", "/etc/passwd"):
            r = c.post("/api/documents", json={"paths": [p]})
            assert r.status_code == 403 and "outside" in r.json()["error"], (p, r.text)


def test_symlink_out_of_root_is_refused(server, root, tmp_path):
    make_pdf(tmp_path / "secret.pdf", 1)
    link_dir = root / "linked"
    link_dir.mkdir(exist_ok=True)
    (link_dir / "secret.pdf").symlink_to(tmp_path / "secret.pdf")
    try:
        with server.client() as c:
            for p in (str(link_dir), str(link_dir / "secret.pdf")):
                r = c.post("/api/documents", json={"paths": [p]})
                assert r.status_code == 403, r.text
    finally:
        shutil.rmtree(link_dir)


def test_add_document_job_progress_and_remove(server, root):
    with server.client() as c:
        r = c.post("/api/documents", json={"paths": ["extra"]})  # relative: to the first --root
        assert r.status_code == 202, r.text
        url, seen = r.json()["url"], []
        deadline = time.time() + 300
        while (job := c.get(url).json())["state"] in ("queued", "running"):
            seen.append((job["done"], job["total"]))
            assert time.time() < deadline
            time.sleep(0.05)
        assert job["state"] == "done", job
        assert job["done"] == job["total"] == 2 and job["summary"]["new"] == [str(root / "extra" / "added.pdf")]
        assert all(d <= 2 for d, _ in seen)
        assert len(c.get("/api/documents").json()) == 3
        assert c.get("/api/search", params={"q": "x", "k": 10}).json()[-1]["rank"] == 6
        r = c.delete("/api/documents", params={"path": str(root / "extra" / "added.pdf")})
        assert r.status_code == 200 and r.json()["removed"] == [str(root / "extra" / "added.pdf")]
        assert len(c.get("/api/documents").json()) == 2


def test_index_job_uses_the_servers_embedder(root, tiny_embedder, answerer, tmp_path):
    """The job embeds with the model the server searches with: one load ("embedder: ..." is logged
    at each), before and after a job."""
    shutil.copytree(root / "db", tmp_path / "db")
    s = Served("--db", tmp_path / "db", "--root", root, "--embedder", tiny_embedder, "--answerer", answerer)
    try:
        with s.client() as c:
            assert c.get("/api/search", params={"q": "revenue", "k": 1}).status_code == 200
            url = c.post("/api/documents", json={"paths": ["extra"]}).json()["url"]
            deadline = time.time() + 300
            while (job := c.get(url).json())["state"] in ("queued", "running"):
                assert time.time() < deadline
                time.sleep(0.05)
            assert job["state"] == "done" and job["summary"]["new"] == [str(root / "extra" / "added.pdf")], job
            assert len(c.get("/api/search", params={"q": "revenue", "k": 10}).json()) == 6  # the job's pages too
    finally:
        log = s.stop()
    assert [ln for ln in log.splitlines() if ln.startswith("embedder: ")] == [f"embedder: {tiny_embedder}"], log


def test_k_has_one_limit_for_search_and_ask(server):
    """The same limit and message as the MCP tools (service.check_k)."""
    from ragvl.server.service import MAX_K

    with server.client() as c:
        ok = c.get("/api/search", params={"q": "x", "k": MAX_K})
        assert ok.status_code == 200 and len(ok.json()) == 4  # every page: the index has 4
        for r in (c.get("/api/search", params={"q": "x", "k": MAX_K + 1}),
                  c.post("/api/ask", json={"question": "x", "k": MAX_K + 1})):
            assert r.status_code == 400 and r.json() == {"error": f"k must be between 1 and {MAX_K}, not {MAX_K + 1}"}


def test_load_20_searches_and_3_queued_asks(server):
    """20 concurrent searches and 3 asks at once: every one completes; the asks queue in order."""
    def one_search(i):
        with server.client() as c:
            r = c.get("/api/search", params={"q": f"chart number {i}", "k": 3})
            return r.status_code, len(r.json())

    def one_ask(i):
        with server.client() as c:
            return ask(c, f"What does page {i} show?", k=2)

    with ThreadPoolExecutor(23) as pool:
        asks = [pool.submit(one_ask, i) for i in range(3)]
        searches = [pool.submit(one_search, i) for i in range(20)]
        search_results = [f.result() for f in searches]
        ask_results = [f.result() for f in asks]
    assert search_results == [(200, 3)] * 20
    for events in ask_results:
        assert events[-1][0] == "done" and not [e for e in events if e[0] == "error"]
    # A waiting ask moves up one place at a time, and the asks start generating in the order they
    # joined (first in, first out), as the server counts both: no client clocks compared, since
    # an ask that joins after the line emptied starts at once and may finish before another.
    for events in ask_results:
        places = [d["position"] for n, d in events if n == "queued"]
        assert places == list(range(len(places), 0, -1)), places
    started = sorted((d["number"], d["turn"]) for events in ask_results for n, d in events if n == "started")
    assert len(started) == 3 and [turn for _, turn in started] == sorted(turn for _, turn in started), started


def test_client_disconnect_stops_generation(root, tiny_embedder, answerer):
    """A client that goes away mid-answer stops its generation; the next answer then runs."""
    s = Served("--db", root / "db", "--root", root, "--embedder", tiny_embedder, "--answerer", answerer,
               "-n", "4000", "--greedy")
    try:
        with s.client() as c:
            with c.stream("POST", "/api/ask", json={"question": "Which region grew the most?", "k": 2}) as r:
                for line in r.iter_lines():
                    if line.startswith("event: token"):
                        break  # leave after the first piece of a (up to) 4000-token answer
            deadline = time.time() + 60
            while c.get("/api/status").json()["answers_waiting"]:
                assert time.time() < deadline
                time.sleep(0.1)
            with c.stream("POST", "/api/ask", json={"question": "And now?", "k": 1}) as r:
                names = []
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        names.append(line[7:])
                    if names[-1:] == ["token"]:
                        break
            assert names[:3] == ["started", "retrieved", "token"]  # not "queued": the first one has stopped
    finally:
        log = s.stop()
    assert "Traceback" not in log
    assert log.count("answer stopped after") == 2 and "its client went away" in log


def test_token_cookie_and_csrf(root, tiny_embedder, answerer):
    s = Served("--db", root / "db", "--root", root, "--embedder", tiny_embedder, "--token", "s3cret-token")
    try:
        assert s.url.endswith("/?token=s3cret-token")
        with s.client() as c:
            assert c.get("/api/status").status_code == 401
            assert c.get("/").status_code == 401
            assert c.get("/api/status", params={"token": "wrong"}).status_code == 401
            assert c.get("/api/status", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
            assert c.get("/api/status", headers={"x-ragvl-token": "s3cret-token"}).status_code == 200
            first = c.get("/", params={"token": "s3cret-token"})  # the printed URL: cookie, then a clean URL
            assert first.status_code == 303 and first.headers["location"] == "/"
            assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
            assert c.get("/").status_code == 200 and c.get("/api/status").status_code == 200  # the cookie
            evil = {"origin": "http://evil.example"}
            assert c.post("/api/documents", json={"paths": ["docs"]}, headers=evil).status_code == 403  # cookie only
            r = c.post("/api/documents", json={"paths": ["docs"]}, headers={**evil, "x-ragvl-token": "s3cret-token"})
            assert r.status_code == 202
    finally:
        assert "Traceback" not in s.stop()


def test_non_loopback_host_needs_a_token(root):
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", "serve", "--db", root / "db", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--token" in r.stderr


def test_cancellation_stops_prefill_through_run_options(answerer, root):
    """RunOptions.terminate reaches the vision and decoder runs: a cancelled generation stops at once."""
    from ragvl.store.page_store import PageStore
    from ragvl.models.runtime.cancel import Cancellation, Cancelled
    from ragvl.models.runtime.qwen2vl import Qwen2VL

    model = Qwen2VL(answerer)
    store = PageStore(root / "db")
    path, _ = next(iter(store.documents().items()))
    image = Image.open(io.BytesIO(store.page_image(path, 1)))
    cancel = Cancellation(model)
    assert model.chat("Describe.", [image]).consume().token_ids  # untouched outside a running() block
    with cancel.running():
        gen = model.chat("Describe.", [image])
        cancel.cancel()
        with pytest.raises(Cancelled):
            gen.consume()  # the vision run (the first of the prefill) is refused
    with cancel.running():
        assert model.chat("Describe.", [image]).consume().token_ids  # the next generation runs normally


def test_no_models_and_no_index_say_what_to_run(tmp_path):
    s = Served("--db", tmp_path / "none", "--root", tmp_path, env={"RAGVL_HOME": str(tmp_path / "models"),
                                                                  "RAGVL_EMBEDDER": "", "RAGVL_ANSWERER": ""})
    try:
        with s.client() as c:
            st = c.get("/api/status").json()
            assert st["embedder"] is None and st["answerer"] is None and st["documents"] == 0
            text = " ".join(st["problems"])
            assert "ragvl models pull" in text and "ragvl index" in text
            r = c.post("/api/ask", json={"question": "anything?"})
            assert r.status_code == 400 and "ragvl models pull" in r.json()["error"]
            r = c.get("/api/search", params={"q": "x"})
            assert r.status_code == 400 and "ragvl models pull" in r.json()["error"]  # the embedder is checked first
            assert c.get("/api/documents").json() == []
    finally:
        assert "Traceback" not in s.stop()
