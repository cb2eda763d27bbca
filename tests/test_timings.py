"""Honest timings: opening a session is `load_s`, never part of a stage (vision, prefill, decode,
retrieval). Real sessions on numpy-built tiny models; the checks are structural (which sessions
are open when a stage starts, load_s exactly 0 once they are), never on wall-time magnitudes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ragvl.models.runtime.generation import GenerationSettings
from ragvl.models.runtime.qwen2vl import Qwen2VL, user_message
from ragvl.models.runtime.vlm import ImageFeatures

ONE = GenerationSettings(max_new_tokens=3, ignore_eos=True)


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8))


def watch_stages(model: Qwen2VL) -> dict[str, list[list[str]]]:
    """Record `model.opened` as each stage starts: the vision tower's run and every decoder call
    (the first is the prefill; the follow-up's extension is one too)."""
    seen: dict[str, list[list[str]]] = {"vision": [], "decoder": []}
    encode, decode = model.encode_images, model.run_decoder

    def encode_images(prompt):
        seen["vision"].append(model.opened)
        return encode(prompt)

    def run_decoder(*args):
        seen["decoder"].append(model.opened)
        return decode(*args)

    model.encode_images, model.run_decoder = encode_images, run_decoder
    return seen


def test_first_answer_opens_its_sessions_before_the_stages(np_answerer):
    model = Qwen2VL(np_answerer)
    assert model.opened == []  # sessions open on first use
    seen = watch_stages(model)
    first = model.chat("Describe.", [noise(0)], ONE).consume()
    assert first.timings.load_s > 0
    assert seen["vision"] == [["decoder", "embed", "vision"]]  # all open before the vision timer starts
    assert seen["decoder"] and all(s == ["decoder", "embed", "vision"] for s in seen["decoder"])
    assert first.as_dict()["timings"]["load_s"] == round(first.timings.load_s, 4)

    second = model.chat("Describe.", [noise(1)], ONE).consume()
    assert second.timings.load_s == 0.0
    assert second.token_ids and len(second.token_ids) == len(first.token_ids)
    follow = model.follow_up(second.conversation, "And the colours?", ONE).consume()
    assert follow.continued and follow.timings.load_s == 0.0


def test_answer_from_stored_features_never_opens_the_vision_tower(np_answerer):
    source = Qwen2VL(np_answerer)
    prompt = source.build_prompt(user_message("Describe.", 1), [noise(2)])
    feats = ImageFeatures(source.vision_features(prompt.pixel_values, prompt.grids), prompt.grids[0])

    model = Qwen2VL(np_answerer)
    seen = watch_stages(model)
    g = model.generate(user_message("Describe.", 1), [feats], ONE).consume()
    assert g.vision == {"reused": 1, "computed": 0}
    assert g.timings.load_s > 0
    assert seen["vision"] == [["decoder", "embed"]] and model.opened == ["decoder", "embed"]
    assert g.token_ids == source.generate(user_message("Describe.", 1), [noise(2)], ONE).consume().token_ids


def test_background_opening_is_waited_for_before_the_prefill(np_answerer):
    """`ask` opens the prompt graphs while it retrieves: the prefill's timer starts once they are
    open (the wait, if any, is load_s), and the thread opened them once."""
    model = Qwen2VL(np_answerer)
    seen = watch_stages(model)
    thread = model.open_in_background("embed", "decoder")
    g = model.generate(user_message("Hi", 0), [], ONE).consume()
    thread.join()
    assert seen["vision"] == [["decoder", "embed"]] and seen["decoder"][0] == ["decoder", "embed"]
    assert model.opened == ["decoder", "embed"] and len(g.token_ids) == ONE.max_new_tokens


def test_ensure_open_reports_the_opening_once(np_embedder):
    from ragvl.models.runtime.colqwen2 import ColQwen2

    model = ColQwen2(np_embedder)
    assert model.ensure_open("embed", "encoder") > 0
    assert model.opened == ["embed", "encoder"]
    assert model.ensure_open("embed", "encoder") == 0.0
    assert model.ensure_open() > 0 and model.opened == sorted(model.manifest["graphs"])  # default: every graph
    assert model.ensure_open() == 0.0


@pytest.fixture(scope="module")
def index(tmp_path_factory, np_embedder, np_answerer):
    from ragvl import Index
    from tiny_pdfs import make_pdf

    tmp = tmp_path_factory.mktemp("timings")
    make_pdf(tmp / "docs" / "a.pdf", 2, seed=3)
    idx = Index(tmp / "db", embedder=np_embedder, answerer=np_answerer, log=lambda m: None)
    idx.index([tmp / "docs"], progress=False)
    return tmp / "db"


def test_ask_reports_both_models_openings_as_load(index, np_embedder, np_answerer):
    """The first ask opens the embedder's query graphs during retrieval and the answer model's
    before its prefill: both are load_s, outside retrieval_s and the stages."""
    from ragvl import Index

    idx = Index(index, embedder=np_embedder, answerer=np_answerer, log=lambda m: None)
    embedder = idx.embedder
    at_query: list[list[str]] = []
    embed_queries = embedder.embed_queries
    embedder.embed_queries = lambda qs: at_query.append(embedder.opened) or embed_queries(qs)
    seen = watch_stages(idx.answerer)

    first = idx.ask("What grew?", k=1, settings=ONE, vision_cache=False).consume()  # the page is encoded
    assert at_query == [["embed", "encoder"]]
    assert seen["vision"][0] == ["decoder", "embed", "vision"]
    t = first.as_dict()["timings"]
    assert first.load_s > 0 and first.generation.timings.load_s > 0
    assert t["load_s"] == round(first.load_s + first.generation.timings.load_s, 4)
    assert {"retrieval_s", "load_s", "vision_s", "prefill_s", "first_token_s", "decode_tok_s"} <= set(t)

    second = idx.ask("What grew?", k=1, settings=ONE, vision_cache=False).consume()
    assert second.as_dict()["timings"]["load_s"] == 0.0
    follow = idx.ask("What grew?", k=1, settings=ONE, follow_up=second).consume()  # the same page: continued
    assert follow.continued and follow.as_dict()["timings"]["load_s"] == 0.0
