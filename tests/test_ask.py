"""`ragvl ask`: retrieval, then Qwen2-VL answering over the page images (numpy-built tiny models),
checked against transformers on the same checkpoint (that test is marked `reference`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from ragvl.answer.answering import ANSWER_MAX_PIXELS
from ragvl.answer.prompt import answer_messages
from ragvl.store.page_store import PageStore
from ragvl.models.runtime.qwen2vl import Qwen2VL
from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop


def ragvl(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def answerer(np_answerer):
    """(checkpoint, converted folder) of the numpy-built tiny Qwen2-VL."""
    return np_answerer.parent / "ckpt", np_answerer


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_embedder):
    tmp = tmp_path_factory.mktemp("askdb")
    for i in range(2):
        make_pdf(tmp / "docs" / f"r{i}.pdf", 2, seed=20 + i)
    assert ragvl("index", tmp / "docs", "--db", tmp / "db", "--embedder", tiny_embedder, "-q").returncode == 0
    return tmp / "db"


def test_ask_json_sources_equal_search(db, tiny_embedder, answerer):
    common = ("--db", db, "--embedder", tiny_embedder)
    r = ragvl("ask", "What grew in region 1?", "-k", 2, *common, "--answerer", answerer[1], "-n", 8, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"answer", "sources", "timings"} and isinstance(out["answer"], str)
    assert set(out["timings"]) >= {"retrieval_s", "load_s", "vision_s", "prefill_s", "first_token_s", "decode_tok_s"}
    assert out["timings"]["load_s"] > 0  # a new process opens both models' sessions: outside every stage
    # which file each answerer graph was loaded from, and why (the saved optimized copies, valid here)
    assert out["graphs"]["decoder"]["file"] == "decoder.opt.onnx" and out["graphs"]["decoder"]["optimized"]
    assert out["graphs"]["decoder"]["reason"].endswith(", as here")
    search = json.loads(ragvl("search", "What grew in region 1?", "-k", 2, *common, "--json").stdout)
    assert [(s["path"], s["page"], s["score"]) for s in out["sources"]] == \
        [(s["path"], s["page"], s["score"]) for s in search]


def test_ask_streams_answer_then_sources(db, tiny_embedder, answerer):
    r = ragvl("ask", "Summarise.", "-k", 1, "--db", db, "--embedder", tiny_embedder, "--answerer", answerer[1],
              "-n", 6)
    assert r.returncode == 0, r.stderr
    assert "\nSources:\n  [1] " in r.stdout and ", page " in r.stdout
    assert "first token" in r.stderr and "first token" not in r.stdout


@pytest.mark.reference
def test_answer_prompt_and_tokens_equal_transformers(db, tiny_embedder, answerer):
    """The answer prompt is what HF's processor builds for the same messages; greedy tokens match."""
    from tiny_checkpoints import hf_generate, load_hf_model, make_hf_processor

    from ragvl import Index

    ckpt, folder = answerer
    idx = Index(db, embedder=tiny_embedder, answerer=folder, log=lambda m: None)
    question = "What does the chart show?"
    hits = idx.search(question, k=2)
    store = PageStore(db)
    images = [Image.open(io.BytesIO(store.page_image(h.path, h.page))).convert("RGB") for h in hits]
    messages = answer_messages(question, [(h.path, h.page) for h in hits])
    ref = hf_generate(load_hf_model(ckpt), make_hf_processor(ckpt, max_pixels=ANSWER_MAX_PIXELS), messages, images,
                      max_new_tokens=16, stop_at_eos=True)
    vlm = Qwen2VL(folder)
    assert vlm.build_prompt(messages, images, max_pixels=ANSWER_MAX_PIXELS).ids.tolist() == ref["prompt_ids"].tolist()
    settings = vlm.defaults.with_overrides(max_new_tokens=16)
    result = idx.ask(question, k=2, settings=settings).consume()
    eos = {vlm.tokenizer.im_end_id, vlm.tokenizer.endoftext_id}
    assert result.generation.token_ids == [t for t in ref["new_token_ids"].tolist() if t not in eos]
    assert [(h.path, h.page) for h in result.sources] == [(h.path, h.page) for h in hits]


def test_ask_bad_input(tmp_path, db, tiny_embedder, answerer):
    home = {"RAGVL_HOME": str(tmp_path / "home"), "RAGVL_EMBEDDER": "", "RAGVL_ANSWERER": ""}
    # no index / empty index
    r = ragvl("ask", "q", "--db", tmp_path / "none", "--embedder", tiny_embedder, "--answerer", answerer[1])
    assert r.returncode != 0 and "ragvl index" in r.stderr.strip().splitlines()[-1]
    (tmp_path / "nodocs").mkdir()
    ragvl("index", tmp_path / "nodocs", "--db", tmp_path / "emptydb", "--embedder", tiny_embedder)
    r = ragvl("ask", "q", "--db", tmp_path / "emptydb", "--embedder", tiny_embedder, "--answerer", answerer[1])
    assert r.returncode != 0 and "empty" in r.stderr and "ragvl index" in r.stderr
    # missing models
    r = ragvl("ask", "q", "--db", db, env=home)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "ragvl models pull" in last and "ragvl models convert" in last
    # a model of the wrong kind
    r = ragvl("ask", "q", "--db", db, "--embedder", tiny_embedder, "--answerer", tiny_embedder)
    assert r.returncode != 0 and "expected a qwen2-vl model" in r.stderr
    r = ragvl("ask", "q", "--db", db, "--embedder", answerer[1], "--answerer", answerer[1])
    assert r.returncode != 0 and "expected a colqwen2 model" in r.stderr
    # k larger than the index: all pages, and a note
    r = ragvl("ask", "q", "-k", 50, "--db", db, "--embedder", tiny_embedder, "--answerer", answerer[1], "-n", 2,
              "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["sources"]) == 4 and "more than the 4 pages" in r.stderr


# Offline either way, even on a connected machine: the hub client told so, or every connection
# sent to a proxy on a port where nothing listens (9: discard).
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9",
              "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "all_proxy": "http://127.0.0.1:9",
              "NO_PROXY": "", "no_proxy": ""}


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1", **NO_NETWORK}, {"HF_HUB_OFFLINE": "0", **NO_NETWORK}],
                         ids=["hf_hub_offline", "unreachable_network"])
def test_models_pull_without_network_fails_at_once(tmp_path, env):
    # A hang (retrying an unreachable hub) raises TimeoutExpired: the pull must give up by itself.
    r = ragvl("models", "pull", env={"RAGVL_HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), **env},
              timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and last.startswith("ragvl: error: cannot download") and "ragvl models convert" in last
    assert not any((tmp_path / "hf").rglob("*.safetensors")) and not (tmp_path / "models").exists()
