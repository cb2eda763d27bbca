"""Similarity maps (`ragvl search --explain`, Index.explain) against colpali-engine's own grids."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tiny_pdfs import make_pdf

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop


def ragvl(*args):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


def _landscape_pdf(path):
    import pymupdf

    doc = pymupdf.open()
    pg = doc.new_page(width=420, height=260)
    pg.insert_text((30, 40), "Wide page: quarterly revenue", fontsize=14)
    pg.draw_rect(pymupdf.Rect(40, 120, 380, 200), color=(0.2, 0.4, 0.8), fill=(0.2, 0.4, 0.8))
    doc.save(path)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_embedder):
    tmp = tmp_path_factory.mktemp("explain")
    make_pdf(tmp / "docs" / "tall.pdf", 2, seed=3)
    _landscape_pdf(tmp / "docs" / "wide.pdf")
    r = ragvl("index", tmp / "docs", "--db", tmp / "db", "--embedder", tiny_embedder, "-q")
    assert r.returncode == 0, r.stderr
    return tmp


@pytest.mark.reference
def test_token_grids_equal_colpali_engine(indexed, tiny_embedder):
    """Per-token grids equal get_similarity_maps_from_embeddings (transposed: colpali returns (n_x, n_y))."""
    import torch
    from colpali_engine.interpretability.similarity_map_utils import get_similarity_maps_from_embeddings

    import tiny_colqwen2 as tq
    from ragvl import Index
    from ragvl.retrieval.explain import image_rows, merged_grid, similarity_grids
    from ragvl.store.page_ids import page_row
    from ragvl.store.page_store import PageStore

    idx = Index(indexed / "db", embedder=tiny_embedder, log=lambda m: None)
    query = "quarterly revenue chart"
    hits = idx.search(query, k=3)
    maps = idx.explain(query, [h.id for h in hits])
    ckpt = tiny_embedder.parent / "ckpt"
    model, proc = tq.load_colqwen2(ckpt), tq.make_colqwen2_processor(ckpt, max_num_visual_tokens=768)
    q_ref = tq.colpali_embed_queries(model, proc, [query])[0]
    store = PageStore(indexed / "db")
    shapes = set()
    for h, m in zip(hits, maps):
        image = Image.open(io.BytesIO(page_row(store, h.id, ["image_png"])["image_png"])).convert("RGB")
        batch = proc.process_images([image])
        with torch.no_grad():
            d_ref = model(**batch)  # (1, S, 128)
        n_patches = proc.get_n_patches(image.size, spatial_merge_size=model.spatial_merge_size)
        ref = get_similarity_maps_from_embeddings(d_ref, torch.from_numpy(q_ref)[None], n_patches,
                                                  proc.get_image_mask(batch))[0].numpy()  # (nq, n_x, n_y)
        # ragvl's mask and grid, derived from the stored size and the embedder settings alone
        emb = idx.embedder
        grid = merged_grid(image.width, image.height, emb.image_config_for(emb.max_pixels))
        assert grid == (n_patches[1], n_patches[0])
        assert np.array_equal(image_rows(emb, grid[0] * grid[1]), proc.get_image_mask(batch)[0].numpy())
        # the same embeddings give the same grids (up to float32 rounding)...
        mine = similarity_grids(q_ref, d_ref[0].numpy(), image_rows(emb, grid[0] * grid[1]), grid)
        np.testing.assert_allclose(mine, ref.transpose(0, 2, 1), atol=1e-5)
        # ...and the map built from the index (float16 vectors, ragvl's query) agrees to float16 precision
        np.testing.assert_allclose(m.token_grids, ref.transpose(0, 2, 1), atol=2e-2)
        np.testing.assert_allclose(m.grid, ref.max(axis=0).T, atol=2e-2)
        assert m.score == pytest.approx(h.score, abs=2e-2)
        shapes.add(m.grid.shape)
    assert len(shapes) == 2  # a portrait and a landscape page: the transpose is really tested


def test_search_explain_writes_maps(indexed, tiny_embedder):
    out = indexed / "maps"
    r = ragvl("search", "revenue", "-k", 2, "--db", indexed / "db", "--embedder", tiny_embedder,
              "--explain", out, "--explain-tokens")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    main = [n for n in names if "-t" not in n.split("-p")[-1]]
    assert len(main) == 2 and main[0].startswith("01-")
    tokens = [n for n in names if n.startswith(main[0][:-4] + "-t")]
    assert len(tokens) > 10  # "Query: revenue" + 10 augmentation tokens
    page = Image.open(out / main[0])
    assert page.mode == "RGB" and page.width > 300
    assert "similarity maps" in r.stderr


def test_explain_api_array_and_image(indexed, tiny_embedder):
    from ragvl import Index

    idx = Index(indexed / "db", embedder=tiny_embedder, log=lambda m: None)
    hit = idx.search("region", k=1)[0]
    m = idx.explain("region", [hit.id])[0]
    assert m.grid.ndim == 2 and m.grid.dtype == np.float32 and m.token_grids.shape[1:] == m.grid.shape
    img = m.image()
    assert isinstance(img, Image.Image) and img.size == m.page_image.size
    assert not np.array_equal(np.asarray(img), np.asarray(m.page_image))  # the heat is blended in
    assert (m.path, m.page) == (hit.path, hit.page)


def test_explain_tokens_needs_explain_and_bad_id(indexed, tiny_embedder):
    from ragvl import Index
    from ragvl.errors import RagvlError

    r = ragvl("search", "x", "--db", indexed / "db", "--embedder", tiny_embedder, "--explain-tokens")
    assert r.returncode != 0 and "--explain" in r.stderr
    idx = Index(indexed / "db", embedder=tiny_embedder, log=lambda m: None)
    for bad in ("../etc/passwd", "0123456789abcdef-0", "' OR 1=1 --", "0123456789abcdef-99"):
        with pytest.raises(RagvlError):
            idx.page_image(bad)
