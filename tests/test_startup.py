"""Start-up: onnxruntime's optimized graphs saved at conversion, loaded without optimizing again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ragvl.models.converter.convert import convert
from ragvl.models.runtime.generation import GenerationSettings
from ragvl.models.runtime.qwen2vl import Qwen2VL, user_message

from tiny_numpy import make_numpy_checkpoint  # noqa: E402
from tiny_pdfs import make_pdf  # noqa: E402

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop


def snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def answer(vlm):
    img = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    from PIL import Image

    return vlm.generate(user_message("Describe.", 1), [Image.fromarray(img)],
                        GenerationSettings(max_new_tokens=12, ignore_eos=True)).consume().token_ids


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_optimized_graphs_load_and_fall_back(tmp_path, dtype):
    ckpt = make_numpy_checkpoint(tmp_path / "ckpt", variant="b", seed=1)
    folder = convert(ckpt, tmp_path / "m", dtype=dtype, log=lambda m: None)
    opt = json.loads((folder / "ragvl.json").read_text())["optimized"]
    import onnxruntime as ort

    assert opt["key"] == f"onnxruntime-{ort.__version__}-CPUExecutionProvider"
    assert set(opt["graphs"]) == {"vision", "embed", "decoder"}
    before = snapshot(folder)
    vlm = Qwen2VL(folder)
    assert all(vlm.graph_path(g) == (folder / opt["graphs"][g], True) for g in opt["graphs"])
    tokens = answer(vlm)
    assert snapshot(folder) == before  # loading never writes into the model folder

    # Another onnxruntime (or provider) wrote them: the plain graphs load, with the same answer.
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    m = json.loads((other / "ragvl.json").read_text())
    m["optimized"]["key"] = "onnxruntime-0.0.0-CPUExecutionProvider"
    (other / "ragvl.json").write_text(json.dumps(m))
    vlm2 = Qwen2VL(other)
    assert vlm2.graph_path("decoder") == (other / "decoder.onnx", False)
    assert answer(vlm2) == tokens


def test_convert_without_optimized_graphs(tmp_path):
    folder = convert(make_numpy_checkpoint(tmp_path / "ckpt", variant="a"), tmp_path / "m", optimize=False,
                     log=lambda m: None)
    assert json.loads((folder / "ragvl.json").read_text())["optimized"] is None
    assert not list(folder.glob("*.opt.onnx*"))
    assert Qwen2VL(folder).graph_path("vision") == (folder / "vision.onnx", False)


def test_embedder_id_ignores_optimized_copies(tmp_path):
    from ragvl.models.runtime.colqwen2 import ColQwen2

    ckpt = make_numpy_checkpoint(tmp_path / "ckpt", variant="a", kind="colqwen2")
    with_opt = ColQwen2(convert(ckpt, tmp_path / "a", log=lambda m: None))
    without = ColQwen2(convert(ckpt, tmp_path / "b", optimize=False, log=lambda m: None))
    assert with_opt.manifest["optimized"] and not without.manifest["optimized"]
    assert with_opt.id == without.id
    q = with_opt.embed_queries(["a query"])[0]
    np.testing.assert_allclose(q, without.embed_queries(["a query"])[0], atol=1e-5)


# A `ragvl search` run that reports, last on stderr, which of the costly packages it imported.
_PROBE = """
import runpy, sys
sys.argv = ["ragvl", "search", "revenue", "--db", sys.argv[1], "-k", "1"]
try:
    runpy.run_module("ragvl.cli", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("imported:", *(m for m in ("onnx", "pymupdf") if m in sys.modules), file=sys.stderr)
"""


def test_search_imports_neither_onnx_nor_pymupdf(tmp_path, tiny_embedder):
    """`ragvl search` starts without PyMuPDF (indexing only) and, once the MaxSim kernels are
    cached, without the onnx package: each costs about a second of every start."""
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, seed=1)
    env = {**os.environ, "RAGVL_CACHE": str(tmp_path / "cache")}
    db = tmp_path / "db"
    subprocess.run([sys.executable, "-m", "ragvl.cli", "index", str(docs), "--db", str(db), "--embedder",
                    str(tiny_embedder), "-q"], check=True, env=env, capture_output=True)

    def search() -> str:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(db)], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert "a.pdf" in r.stdout
        return r.stderr.strip().splitlines()[-1]

    assert search() == "imported: onnx"  # the first search on this machine builds the kernels
    assert sorted((tmp_path / "cache" / "kernels").iterdir())
    assert search() == "imported:"


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_unpacked_weights_embed_as_packed(tmp_path, dtype):
    """`prepack=False` (the CLI's search and ask: Index(quick_start=True)) leaves the weights
    memory-mapped; onnxruntime packs them at each run instead. Same vectors up to float32
    rounding (another summation order), far inside the 1e-5 parity bound with colpali-engine."""
    from ragvl.models.runtime.colqwen2 import ColQwen2

    folder = convert(make_numpy_checkpoint(tmp_path / "ckpt", variant="a", kind="colqwen2"), tmp_path / "m",
                     dtype=dtype, log=lambda m: None)
    packed, unpacked = ColQwen2(folder), ColQwen2(folder, prepack=False)
    assert packed.encoder is not unpacked.encoder
    queries = ["a query", "what was the revenue in 2023?"]
    for a, b in zip(packed.embed_queries(queries), unpacked.embed_queries(queries)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    # int8 rounds activations per row: a last-bit difference of the fp32 parts before (the vision
    # tower's attention and merger, ~5e-6) can cross a rounding boundary, one quantization step.
    # The int8 page vectors' own error against fp32 is ~2e-2 on these weights.
    atol = 1e-6 if dtype == "fp32" else 5e-3
    np.testing.assert_allclose(packed.embed_images([img])[0], unpacked.embed_images([img])[0], rtol=0, atol=atol)


def test_sessions_opened_in_background_are_opened_once(tmp_path, monkeypatch):
    """`ask` opens the answer model's prompt graphs while it retrieves; a caller that needs one
    meanwhile waits for it: one session per graph."""
    from ragvl.models.runtime import vlm as vlm_mod

    folder = convert(make_numpy_checkpoint(tmp_path / "ckpt", variant="b", seed=1), tmp_path / "m",
                     log=lambda m: None)
    opened = []
    real = vlm_mod.create_session
    monkeypatch.setattr(vlm_mod, "create_session", lambda path, *a, **k: opened.append(path.name) or real(path, *a, **k))
    model = Qwen2VL(folder)
    thread = model.open_in_background("embed", "decoder")
    decoder = model.session("decoder")
    thread.join()
    assert model.session("decoder") is decoder and model.opened == ["decoder", "embed"]
    assert sorted(opened) == ["decoder.opt.onnx", "embed.opt.onnx"]
    assert answer(model) == answer(Qwen2VL(folder))
