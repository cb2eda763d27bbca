"""Vision features stored at indexing and reused by `ragvl ask` (ragvl/store/vision_cache.py).

The pair that shares a vision tower is built as in test_colqwen2's
test_vision_tower_shared_with_identical_generator: a Qwen2-VL and a ColQwen2 checkpoint from the
same seed have the same vision weights, and the embedder is converted with share_vision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ragvl import Index
from ragvl.store.page_store import PageStore, page_id
from ragvl.store.vision_cache import Producer, VisionCache
from ragvl.models.converter.convert import convert
from ragvl.models.runtime.generation import GenerationSettings
from ragvl.models.runtime.vlm import ImageFeatures
from tiny_pdfs import make_pdf

from tiny_numpy import make_numpy_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

N_NEW = 32
QUESTION = "What grew in region 1?"


def ragvl(*args):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(answerer, embedder sharing its vision tower, answerer with another vision tower)."""
    tmp = tmp_path_factory.mktemp("vc_models")
    gen = convert(make_numpy_checkpoint(tmp / "gen", variant="a", seed=0), tmp / "gen_model", log=lambda m: None)
    col = convert(make_numpy_checkpoint(tmp / "col", variant="a", kind="colqwen2", seed=0), tmp / "col_model",
                  share_vision=[gen], log=lambda m: None)
    other = convert(make_numpy_checkpoint(tmp / "other", variant="a", seed=5), tmp / "other_model", log=lambda m: None)
    return gen, col, other


@pytest.fixture(scope="module")
def db(tmp_path_factory, models):
    tmp = tmp_path_factory.mktemp("vc_db")
    for i in range(2):
        make_pdf(tmp / "docs" / f"r{i}.pdf", 2, seed=30 + i)
    Index(tmp / "db", embedder=models[1], log=lambda m: None).index([tmp / "docs"], progress=False)
    return tmp / "db"


def greedy(n=N_NEW):
    return GenerationSettings(max_new_tokens=n, ignore_eos=True)


def test_features_stored_at_indexing(db, models):
    gen, col, _ = models
    from ragvl.models.runtime.colqwen2 import ColQwen2
    from ragvl.models.runtime.qwen2vl import Qwen2VL

    emb, ans = ColQwen2(col), Qwen2VL(gen)
    assert emb.vision_hash == ans.vision_hash  # one graph, hard-linked
    store, vision = PageStore(db), VisionCache(db)
    t = store.scan(["doc_sha256", "page"])
    ids = [page_id(s, p) for s, p in zip(t["doc_sha256"].to_pylist(), t["page"].to_pylist())]
    rows = vision.table.search().select(["page_id", "vision_hash", "max_pixels", "n_tokens", "hidden", "bytes"]) \
        .limit(None).to_arrow().to_pylist()
    assert sorted(r["page_id"] for r in rows) == sorted(ids) and len(ids) == 4
    assert all(r["vision_hash"] == ans.vision_hash and r["max_pixels"] == emb.max_pixels for r in rows)
    assert all(r["bytes"] == 2 * r["n_tokens"] * r["hidden"] for r in rows)  # float16
    assert PageStore(db).meta["vision_cache"]["max_bytes"] == 4 * 1024 ** 3  # recorded in the index
    # The stored features are the embedder's vision output for the page, rounded to float16.
    img = store.page_image(*store.scan(["doc_path", "page"]).to_pylist()[0].values())
    from io import BytesIO

    from PIL import Image

    out: list[ImageFeatures] = []
    emb.embed_images([Image.open(BytesIO(img))], vision_out=out)
    first = store.scan(["doc_sha256", "page"]).to_pylist()[0]
    got = vision.lookup([page_id(first["doc_sha256"], first["page"])],
                        Producer(ans.vision_hash, emb.image_key, emb.max_pixels)).found
    stored = next(iter(got.values()))
    assert stored.grid == out[0].grid and stored.features.dtype == np.float16
    assert np.array_equal(stored.features, out[0].features.astype(np.float16))


def test_reused_features_give_the_same_answer(db, models):
    """Stored float16 features vs the vision tower from scratch (fp32): same greedy tokens, close logits."""
    gen, col, _ = models
    idx = Index(db, embedder=col, answerer=gen, log=lambda m: None)
    cached = idx.ask(QUESTION, k=3, settings=greedy()).consume()
    fresh = idx.ask(QUESTION, k=3, settings=greedy(), vision_cache=False).consume()
    assert cached.vision == {"reused": 3, "computed": 0, "reason": None}
    assert fresh.vision["computed"] == 3 and fresh.vision["reused"] == 0
    assert len(cached.generation.token_ids) == N_NEW
    assert cached.generation.token_ids == fresh.generation.token_ids
    assert cached.generation.timings.vision_s < fresh.generation.timings.vision_s

    # Prefill logits. float16 keeps 11 significant bits, so each stored feature carries a relative
    # rounding error of at most 2^-11 (~4.9e-4). The decoder's RMSNorm rescales its inputs and every
    # later layer is a smooth map, so the logits move by the same relative order: we allow
    # 4 x 2^-11 of the largest logit, and check that the features really were rounded (error > 0).
    from ragvl.answer.answering import ANSWER_MAX_PIXELS, page_inputs
    from ragvl.answer.prompt import answer_messages

    ans = idx.answerer
    hits = cached.sources
    messages = answer_messages(QUESTION, [(h.path, h.page) for h in hits])
    with_feats, _ = page_inputs(ans, PageStore(db), hits, ANSWER_MAX_PIXELS, VisionCache(db))
    with_images, _ = page_inputs(ans, PageStore(db), hits, ANSWER_MAX_PIXELS, None)
    assert all(isinstance(x, ImageFeatures) for x in with_feats)
    a, _, _ = ans.prefill(ans.build_prompt(messages, with_feats, ANSWER_MAX_PIXELS))
    b, _, _ = ans.prefill(ans.build_prompt(messages, with_images, ANSWER_MAX_PIXELS))
    err = float(np.max(np.abs(a - b)))
    print(f"\nprefill logits: max |stored - scratch| = {err:.2e}, max |logit| = {np.max(np.abs(b)):.2f}")
    assert 0 < err <= 4 * 2.0 ** -11 * float(np.max(np.abs(b)))


def test_other_vision_tower_reuses_nothing(db, models):
    gen, col, other = models
    idx = Index(db, embedder=col, answerer=other, log=lambda m: None)
    cached = idx.ask(QUESTION, k=2, settings=greedy(8)).consume()
    fresh = idx.ask(QUESTION, k=2, settings=greedy(8), vision_cache=False).consume()
    assert cached.vision["reused"] == 0 and cached.vision["computed"] == 2
    assert "another vision graph" in cached.vision["reason"]
    assert cached.generation.token_ids == fresh.generation.token_ids


def test_other_preprocessing_reuses_nothing(db, models):
    gen, col, _ = models
    idx = Index(db, embedder=col, answerer=gen, log=lambda m: None)
    out = idx.ask(QUESTION, k=1, settings=greedy(4), max_pixels=200 * 28 * 28).consume()
    assert out.vision["reused"] == 0 and "max_pixels 156800" in out.vision["reason"]


def test_cli_json_and_no_vision_cache(tmp_path, models):
    gen, col, _ = models
    make_pdf(tmp_path / "docs" / "a.pdf", 2, seed=40)
    r = ragvl("index", tmp_path / "docs", "--db", tmp_path / "db", "--embedder", col, "-q", "--no-vision-cache")
    assert r.returncode == 0, r.stderr
    common = ("--db", tmp_path / "db", "--embedder", col, "--answerer", gen, "-n", 4, "--json")
    out = json.loads(ragvl("ask", QUESTION, "-k", 2, *common).stdout)
    assert out["vision"]["reused"] == 0 and out["vision"]["computed"] == 2
    assert "no vision features" in out["vision"]["reason"] and out["timings"]["vision_s"] > 0
    r = ragvl("index", tmp_path / "docs", "--db", tmp_path / "db2", "--embedder", col, "-q")
    assert r.returncode == 0, r.stderr
    out = json.loads(ragvl("ask", QUESTION, "-k", 2, *common[:1], tmp_path / "db2", *common[2:]).stdout)
    assert out["vision"] == {"reused": 2, "computed": 0, "reason": None}
    r = ragvl("ask", QUESTION, "-k", 2, "--db", tmp_path / "db2", *common[2:], "--no-vision-cache")
    assert json.loads(r.stdout)["vision"]["computed"] == 2


def _feats(n_tokens: int, seed: int) -> ImageFeatures:
    rng = np.random.default_rng(seed)
    return ImageFeatures(rng.standard_normal((n_tokens, 8)).astype(np.float32), (1, 2, 2 * n_tokens))


def test_cap_keeps_recently_used_pages(tmp_path):
    """The cap evicts the least recently used pages; a page read for an answer counts as used."""
    producer = Producer("h" * 64, "pre", 1000)
    page_bytes = 4 * 8 * 2  # 4 tokens x 8 wide, float16
    vs = VisionCache(tmp_path, max_bytes=3 * page_bytes)
    vs.put([("p1", _feats(4, 1)), ("p2", _feats(4, 2))], producer)
    vs.lookup(["p1"], producer)  # p1 is now more recent than p2
    vs.put([("p3", _feats(4, 3))], producer)
    vs.put([("p4", _feats(4, 4))], producer)  # over the cap by one page: p2 goes
    assert vs.total_bytes() == 3 * page_bytes
    found = vs.lookup(["p1", "p2", "p3", "p4"], producer)
    assert sorted(found.found) == ["p1", "p3", "p4"] and "1 page(s)" in found.reason
    np.testing.assert_array_equal(found.found["p1"].features, _feats(4, 1).features.astype(np.float16))
    VisionCache(tmp_path, max_bytes=page_bytes).put([], producer)  # a smaller cap applies at once
    assert VisionCache(tmp_path).total_bytes() == page_bytes


def test_changed_document_drops_its_features(tmp_path, models):
    _, col, _ = models
    pdf = make_pdf(tmp_path / "docs" / "a.pdf", 2, seed=50)
    idx = Index(tmp_path / "db", embedder=col, log=lambda m: None)
    idx.index([tmp_path / "docs"], progress=False)
    before = set(VisionCache(tmp_path / "db").table.to_arrow()["page_id"].to_pylist())
    make_pdf(pdf, 1, seed=51)
    idx.index([tmp_path / "docs"], progress=False)
    after = set(VisionCache(tmp_path / "db").table.to_arrow()["page_id"].to_pylist())
    assert len(before) == 2 and len(after) == 1 and not (before & after)


def test_index_follow_up_continues_over_the_same_pages(db, models):
    gen, col, _ = models
    idx = Index(db, embedder=col, answerer=gen, log=lambda m: None)
    first = idx.ask(QUESTION, k=4, settings=greedy(8)).consume()  # k = every page: a follow-up gets the same
    nxt = idx.ask("And in Q4?", k=4, settings=greedy(), follow_up=first).consume()
    assert nxt.continued and nxt.sources == first.sources and nxt.as_dict()["follow_up"]["continued"]
    conv = nxt.conversation
    from ragvl.models.runtime.vlm import Prompt

    p = conv.prompt
    scratch = idx.answerer.generate_prompt(Prompt(np.asarray(conv.ids[:nxt.generation.prompt_tokens]),
                                                  p.pixel_values, p.grids, p.given), greedy()).consume()
    assert nxt.generation.token_ids == scratch.token_ids
    assert nxt.generation.timings.prefill_s < first.generation.timings.prefill_s
    other = idx.ask("And in Q4?", k=1, settings=greedy(4), follow_up=first).consume()
    assert not other.continued and "started a new prompt" in other.notes[0]
    assert other.vision["reused"] == 1


def test_cli_interactive_follow_ups(db, models):
    gen, col, _ = models
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", "ask", QUESTION, "-k", "4", "--db", db, "--embedder", col,
                        "--answerer", gen, "-n", "4", "--json", "-i"], input="And in Q4?\nWhy?\n\nignored\n",
                       capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x["question"] for x in lines] == [QUESTION, "And in Q4?", "Why?"]
    assert lines[0]["follow_up"] is None
    assert [x["follow_up"]["continued"] for x in lines[1:]] == [True, True]
    assert lines[2]["prompt_tokens"] > lines[1]["prompt_tokens"] > lines[0]["prompt_tokens"]


def test_sessions_open_only_when_needed(db, models):
    """search never opens the vision graph; an answer from stored features does not need it either."""
    gen, col, _ = models
    idx = Index(db, embedder=col, answerer=gen, log=lambda m: None)
    assert idx.embedder.opened == [] and idx.answerer.opened == []
    idx.search(QUESTION, k=2)
    assert idx.embedder.opened == ["embed", "encoder"]
    out = idx.ask(QUESTION, k=2, settings=greedy(2)).consume()
    assert out.vision["reused"] == 2 and idx.answerer.opened == ["decoder", "embed"]
    idx.ask(QUESTION, k=2, settings=greedy(2), vision_cache=False).consume()
    assert idx.answerer.opened == ["decoder", "embed", "vision"]
