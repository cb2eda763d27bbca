"""ragvl's converted ColQwen2 against colpali-engine's ColQwen2 on the same tiny checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ragvl.models.runtime.colqwen2 import ColQwen2
from ragvl.models.converter.convert import convert

import tiny_colqwen2 as tq
from tiny_checkpoints import TINY_MAX_PIXELS, make_checkpoint

pytestmark = pytest.mark.reference  # parity with colpali-engine: every test needs the reference stack

QUERIES = ["what was the revenue in 2023?", "a bar chart of sales by region", "organigramme de la société",
           "売上高の推移", "x"]


def page(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


PAGES = [page(100, 140, 1), page(300, 120, 2), page(56, 56, 3), page(200, 260, 4)]


def ours(folder, **kw) -> ColQwen2:
    return ColQwen2(folder, max_pixels=TINY_MAX_PIXELS, **kw)


def assert_close_lists(a: list[np.ndarray], b: list[np.ndarray], atol=1e-5) -> None:
    assert [x.shape for x in a] == [y.shape for y in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module", params=["a", "b"])
def pair(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colqwen2")
    ckpt = tq.make_colqwen2_checkpoint(tmp / "ckpt", variant=request.param)
    model = ours(convert(ckpt, tmp / "model", log=lambda m: None))
    return model, tq.load_colqwen2(ckpt), tq.make_colqwen2_processor(ckpt)


def test_page_and_query_embeddings(pair):
    model, ref, proc = pair
    assert_close_lists(model.embed_images(PAGES, batch_size=2), tq.colpali_embed_images(ref, proc, PAGES))
    assert_close_lists(model.embed_queries(QUERIES), tq.colpali_embed_queries(ref, proc, QUERIES))
    for v in model.embed_images(PAGES[:1]):
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_batching_does_not_change_embeddings(pair):
    model = pair[0]
    assert_close_lists(model.embed_images(PAGES, batch_size=1), model.embed_images(PAGES, batch_size=3))
    assert_close_lists(model.embed_queries(QUERIES, batch_size=1), model.embed_queries(QUERIES, batch_size=4))


def test_scores_and_rankings_match_colpali(pair):
    from ragvl.retrieval.maxsim import maxsim_scores

    model, ref, proc = pair
    qs, ps = model.embed_queries(QUERIES), model.embed_images(PAGES)
    expected = tq.colpali_scores(proc, tq.colpali_embed_queries(ref, proc, QUERIES),
                                 tq.colpali_embed_images(ref, proc, PAGES))
    got = np.stack([maxsim_scores(q, ps) for q in qs])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert (np.argsort(-got, axis=1, kind="stable") == np.argsort(-expected, axis=1, kind="stable")).all()


def test_image_only_vectors(pair):
    model = pair[0]
    full = model.embed_images(PAGES[:1])[0]
    masked = ColQwen2(model.folder, max_pixels=TINY_MAX_PIXELS, mask_non_image_embeddings=True)
    only = masked.embed_images(PAGES[:1])[0]
    n_image = full.shape[0] - len(tq.document_prompt_ids(pair[2], 0))
    assert only.shape[0] == n_image
    assert masked.id != model.id


@pytest.mark.parametrize("layout,sharded,dtype,prefix,scope", [
    ("flat", False, "float32", "", "custom_text_proj"),
    ("nested", True, "bfloat16", "base_model.model.", "custom_text_proj"),
    ("flat", True, "float32", "base_model.model.", "all"),
])
def test_checkpoint_layouts(tmp_path, layout, sharded, dtype, prefix, scope):
    ckpt = tq.make_colqwen2_checkpoint(tmp_path / "c", layout=layout, sharded=sharded, dtype=dtype,
                                       prefix=prefix, prefix_scope=scope, seed=5)
    model = ours(convert(ckpt, tmp_path / "m", log=lambda m: None))
    # colpali-engine loads nothing from a fully prefixed file, so its reference is the same
    # weights without the prefix.
    ref_ckpt = ckpt if scope != "all" else tq.make_colqwen2_checkpoint(tmp_path / "r", layout=layout,
                                                                      dtype=dtype, seed=5)
    ref, proc = tq.load_colqwen2(ref_ckpt), tq.make_colqwen2_processor(ref_ckpt)
    assert_close_lists(model.embed_images(PAGES[:2]), tq.colpali_embed_images(ref, proc, PAGES[:2]))
    assert_close_lists(model.embed_queries(QUERIES[:2]), tq.colpali_embed_queries(ref, proc, QUERIES[:2]))


@pytest.mark.parametrize("key_layout", ["hub", "transformers5"])
def test_lora_adapter_merged_at_conversion(tmp_path, key_layout):
    base = tq.make_colqwen2_checkpoint(tmp_path / "base", variant="b", seed=2)
    adapter = tq.make_colqwen2_lora(base, tmp_path / "adapter", key_layout=key_layout)
    model = ours(convert(adapter, tmp_path / "m", base=base, log=lambda m: None))
    ref, proc = tq.merged_reference(base, adapter), tq.make_colqwen2_processor(base)
    assert_close_lists(model.embed_images(PAGES[:2]), tq.colpali_embed_images(ref, proc, PAGES[:2]))
    assert_close_lists(model.embed_queries(QUERIES), tq.colpali_embed_queries(ref, proc, QUERIES))
    unmerged = ours(convert(base, tmp_path / "base_model", log=lambda m: None))
    assert np.abs(unmerged.embed_queries(QUERIES[:1])[0] - model.embed_queries(QUERIES[:1])[0]).max() > 1e-2


def test_adapter_needs_its_base(tmp_path):
    from ragvl.errors import RagvlError

    base = tq.make_colqwen2_checkpoint(tmp_path / "base")
    adapter = tq.make_colqwen2_lora(base, tmp_path / "adapter")
    with pytest.raises(RagvlError, match="--base"):
        convert(adapter, tmp_path / "m", log=lambda m: None)


def test_vision_tower_shared_with_identical_generator(tmp_path):
    """ColQwen2's LoRA leaves the vision tower alone: it is stored and loaded once."""
    from ragvl.models.runtime.qwen2vl import Qwen2VL

    gen_ckpt = make_checkpoint(tmp_path / "gen", variant="a", seed=0)
    col_ckpt = tq.make_colqwen2_checkpoint(tmp_path / "col", variant="a", seed=0)  # same vision weights
    gen = convert(gen_ckpt, tmp_path / "gen_model", log=lambda m: None)
    col = convert(col_ckpt, tmp_path / "col_model", share_vision=[gen], log=lambda m: None)
    assert (col / "vision.onnx.data").stat().st_ino == (gen / "vision.onnx.data").stat().st_ino
    a, b = Qwen2VL(gen), ColQwen2(col)
    assert a.vision is b.vision
    other = tq.make_colqwen2_checkpoint(tmp_path / "other", variant="a", seed=9)
    col2 = convert(other, tmp_path / "other_model", share_vision=[gen], log=lambda m: None)
    assert (col2 / "vision.onnx.data").stat().st_ino != (gen / "vision.onnx.data").stat().st_ino
