"""One copy of the weights: onnxruntime's optimized graphs read the weights they did not change
from the plain graphs' data files (converter/optimize.py), and are loaded only where they are
valid: the same onnxruntime, provider and CPU (contract/optimized.py); elsewhere the plain graph
loads, and the reason says why."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from ragvl.models.contract import optimized_graph, write_manifest
from ragvl.models.contract.cpu import CpuFeatures, cpu_features
from ragvl.models.converter.convert import convert
from ragvl.models.converter.optimize import external_files, save_optimized
from ragvl.models.runtime.colqwen2 import ColQwen2
from ragvl.models.runtime.generation import GenerationSettings
from ragvl.models.runtime.qwen2vl import Qwen2VL, user_message
from ragvl.models.runtime.session import session_kernel

from tiny_numpy import make_numpy_checkpoint  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def regions(graph: Path) -> dict[str, tuple[str, int, int, str]]:
    """{tensor: (data file, offset, length, sha256 of its bytes)} of a graph's external tensors."""
    out = {}
    for t in onnx.load(str(graph), load_external_data=False).graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            off, n = int(info["offset"]), int(info["length"])
            with open(graph.parent / info["location"], "rb") as f:
                f.seek(off)
                out[t.name] = (info["location"], off, n, hashlib.sha256(f.read(n)).hexdigest())
    return out


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def answer(vlm: Qwen2VL):
    from PIL import Image

    return vlm.generate(user_message("Describe.", 1), [Image.fromarray(IMAGE)],
                        GenerationSettings(max_new_tokens=12, ignore_eos=True)).consume()


def vision_out(vlm) -> np.ndarray:
    from PIL import Image

    pv, grids, _ = vlm.preprocess_images([Image.fromarray(IMAGE)], vlm.image_config)
    return vlm.vision_features(pv, grids)


def old_layout(folder: Path, dst: Path) -> Path:
    """`folder` as converters before this one wrote it: every optimized copy with all its weights
    in its own data file, the manifest's optimized section {"key", "graphs"} only."""
    shutil.copytree(folder, dst)
    m = json.loads((dst / "ragvl.json").read_text())
    for file in m["graphs"].values():
        save_optimized(dst / file, share=False)
    m["optimized"] = {"key": m["optimized"]["key"], "graphs": m["optimized"]["graphs"]}
    m.pop("files")
    write_manifest(dst, m)
    return dst


def edit_manifest(folder: Path, dst: Path, **optimized) -> Path:
    shutil.copytree(folder, dst)
    m = json.loads((dst / "ragvl.json").read_text())
    m["optimized"].update(optimized)
    (dst / "ragvl.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def answerer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opt_weights")
    ckpt = make_numpy_checkpoint(tmp / "ckpt", variant="b", seed=1)
    return convert(ckpt, tmp / "m", log=lambda m: None)


@pytest.fixture(scope="module")
def reference(answerer, tmp_path_factory):
    """The answer and vision features of the plain graphs, optimized at load."""
    folder = tmp_path_factory.mktemp("opt_plain") / "m"
    shutil.copytree(answerer, folder)
    m = json.loads((folder / "ragvl.json").read_text())
    m["optimized"] = None
    (folder / "ragvl.json").write_text(json.dumps(m))
    vlm = Qwen2VL(folder)
    return answer(vlm).token_ids, vision_out(vlm)


@pytest.mark.parametrize("dtype,kind", [("fp32", "qwen2-vl"), ("int8", "qwen2-vl"), ("int8", "colqwen2")])
def test_each_weight_is_stored_once(tmp_path, dtype, kind):
    ckpt = make_numpy_checkpoint(tmp_path / "ckpt", variant="b", kind=kind)
    folder = convert(ckpt, tmp_path / "m", dtype=dtype, log=lambda m: None)
    m = json.loads((folder / "ragvl.json").read_text())
    own_bytes = 0
    for graph, file in m["graphs"].items():
        opt = optimized_graph(file)
        plain, saved = regions(folder / file), regions(folder / opt)
        assert saved, graph
        assert set(external_files(folder / opt)) <= {file + ".data", opt + ".data"}
        plain_bytes = {r[3] for r in plain.values()}
        for name, r in saved.items():
            if r[0] == file + ".data":  # read from the plain graph's data: exactly one of its tensors
                assert r in plain.values(), name
            else:  # in the copy's own data: something the optimizer made, no plain weight again
                assert r[3] not in plain_bytes, name
                own_bytes += r[2]
        assert sum(r[2] for r in saved.values() if r[0] == file + ".data") > 0.9 * sum(r[2] for r in plain.values())
    on_disk = sum(f.stat().st_size for f in folder.glob("*.data"))
    plain_disk = sum((folder / (f + ".data")).stat().st_size for f in m["graphs"].values())
    assert plain_disk <= on_disk <= plain_disk + own_bytes + 4096 * len(m["graphs"]) * 8
    # the manifest hashes every file there is, and only those
    assert set(m["files"]) == {f.name for f in folder.iterdir() if f.name != "ragvl.json"}


def test_optimized_copies_give_the_outputs_of_a_full_copy(answerer, reference, tmp_path):
    """Shared weights, the old layout (a full copy of the weights per optimized graph, the old
    manifest) and the plain graphs: the same vision features, bit for bit, and the same answer."""
    old = old_layout(answerer, tmp_path / "old")
    assert all(regions(old / optimized_graph(f)) and set(external_files(old / optimized_graph(f))) ==
               {optimized_graph(f) + ".data"} for f in json.loads((old / "ragvl.json").read_text())["graphs"].values())
    assert (sum(f.stat().st_size for f in old.glob("*.data")) >
            1.9 * sum(f.stat().st_size for f in answerer.glob("*.data")))
    before = snapshot(old)
    new_vlm, old_vlm = Qwen2VL(answerer), Qwen2VL(old)
    for vlm in (new_vlm, old_vlm):
        assert all(vlm.graph_choice(g)["optimized"] for g in ("vision", "embed", "decoder"))
    assert "CPU not recorded" in old_vlm.graph_choice("decoder")["reason"]
    feats = vision_out(new_vlm)
    assert np.array_equal(feats, vision_out(old_vlm))
    ids = np.arange(20, dtype=np.int64)[None]
    assert np.array_equal(new_vlm.embed_ids(ids), old_vlm.embed_ids(ids))
    tokens = answer(new_vlm).token_ids
    assert tokens == answer(old_vlm).token_ids == reference[0]
    np.testing.assert_allclose(feats, reference[1], rtol=1e-4, atol=1e-5)
    assert snapshot(old) == before


@pytest.mark.parametrize("kernel", ["u8u8", "u8s7"])
def test_int8_copies_rewritten_at_load_read_the_shared_weights(tmp_path, monkeypatch, kernel):
    """The rows kernel's weights rewritten at load (runtime/int8.py) from an optimized copy that
    reads them from the plain graph's data: the same features as from a full copy."""
    monkeypatch.setenv("RAGVL_INT8_KERNEL", kernel)
    folder = convert(make_numpy_checkpoint(tmp_path / "ckpt", variant="b", seed=2), tmp_path / "m", dtype="int8",
                     log=lambda m: None)
    new, old = Qwen2VL(folder), Qwen2VL(old_layout(folder, tmp_path / "old"))
    assert np.array_equal(vision_out(new), vision_out(old))
    assert new.loaded["vision"]["file"] == old.loaded["vision"]["file"] == "vision.opt.onnx"
    assert session_kernel(new.vision) == session_kernel(old.vision) == kernel


def _other_cpu():
    return CpuFeatures("Another CPU", "testarch", ())


def _more_features():
    here = cpu_features()
    return CpuFeatures(here.model, here.arch, here.features + ("testfeature",))


@pytest.mark.parametrize("what", ["cpu kind", "cpu features", "onnxruntime"])
def test_copies_made_elsewhere_are_skipped_with_the_reason(answerer, reference, tmp_path, monkeypatch, what):
    folder = answerer
    if what == "onnxruntime":
        folder = edit_manifest(answerer, tmp_path / "m", onnxruntime="1.0.0",
                               key="onnxruntime-1.0.0-CPUExecutionProvider")
    else:
        import ragvl.models.contract.optimized as optimized

        monkeypatch.setattr(optimized, "cpu_features", _other_cpu if what == "cpu kind" else _more_features)
    before = snapshot(folder)
    vlm = Qwen2VL(folder)
    gen = answer(vlm)
    assert gen.token_ids == reference[0]
    graphs = gen.as_dict()["graphs"]  # what `ragvl chat --json` prints
    assert set(graphs) == {"vision", "embed", "decoder"}
    recorded = json.loads((answerer / "ragvl.json").read_text())["optimized"]["cpu"]["kind"]
    expected = {"cpu kind": [f"on {recorded}", "this is", "testarch baseline"],
                "cpu features": ["testfeature]", f"on {cpu_features().kind} ["],
                "onnxruntime": ["onnxruntime 1.0.0", f"this is onnxruntime {ort.__version__}"]}[what]
    for g, choice in graphs.items():
        assert choice["file"] == f"{g}.onnx" and choice["optimized"] is False
        assert all(s in choice["reason"] for s in expected), choice["reason"]
    assert snapshot(folder) == before  # the skipped copy is neither rebuilt nor rewritten there


@pytest.mark.slow  # a `ragvl` subprocess
def test_models_list_says_whether_the_copies_load_here(answerer, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(answerer, home / "models" / "a")
    edit_manifest(answerer, home / "models" / "b", onnxruntime="1.0.0", key="onnxruntime-1.0.0-CPUExecutionProvider")
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", "models", "list", "--json"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "RAGVL_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["a"]["optimized"] is True and rows["a"]["optimized_reason"].endswith(", as here")
    assert rows["b"]["optimized"] is False and "onnxruntime 1.0.0" in rows["b"]["optimized_reason"]


def test_shared_vision_graph_links_its_optimized_copy(tmp_path):
    gen = convert(make_numpy_checkpoint(tmp_path / "gen", variant="a", seed=0), tmp_path / "gen_m", log=lambda m: None)
    col_ckpt = make_numpy_checkpoint(tmp_path / "col", variant="a", kind="colqwen2", seed=0)
    col = convert(col_ckpt, tmp_path / "col_m", share_vision=[gen], log=lambda m: None)
    for f in ("vision.onnx", "vision.onnx.data", "vision.opt.onnx"):
        assert (col / f).stat().st_ino == (gen / f).stat().st_ino, f
    assert not (col / "vision.opt.onnx.data").exists()
    a, b = Qwen2VL(gen), ColQwen2(col)
    assert b.graph_choice("vision")["optimized"]
    assert a.vision is b.vision  # one session for both folders
    assert b.embed_queries(["a query"])[0].shape[1] == 128

    # A vision copy optimized on another CPU is not linked: the new folder gets its own, valid here.
    other = edit_manifest(gen, tmp_path / "gen_other", cpu={"kind": "testarch baseline", "features": []})
    col2 = convert(col_ckpt, tmp_path / "col2_m", share_vision=[other], log=lambda m: None)
    assert (col2 / "vision.onnx.data").stat().st_ino == (other / "vision.onnx.data").stat().st_ino
    assert (col2 / "vision.opt.onnx").stat().st_ino != (other / "vision.opt.onnx").stat().st_ino
    assert ColQwen2(col2).graph_choice("vision")["optimized"]


def test_share_weights_matches_by_bytes_not_names(tmp_path):
    """A weight the optimizer kept (same name), renamed (same bytes) or changed (same name, other
    bytes) or made: the first two are read from the plain graph's data, the others stay in the
    copy's own file; the copy computes what it computed before."""
    from onnx import helper, numpy_helper

    from ragvl.models.converter.optimize import share_weights

    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((8, 8), (8, 8), (8,)))

    def save(nodes, inits, path):
        g = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data",
                        size_threshold=0)

    plain = tmp_path / "g.onnx"
    save([helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("MatMul", ["h", "B"], ["h2"]),
          helper.make_node("Add", ["h2", "C"], ["y"])], {"A": a, "B": b, "C": c}, plain)
    opt = tmp_path / "g.opt.onnx"
    save([helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("MatMul", ["h", "B_fused"], ["h2"]),
          helper.make_node("Add", ["h2", "C"], ["h3"]), helper.make_node("Add", ["h3", "D"], ["y"])],
         {"A": a, "B_fused": b, "C": 2 * c, "D": c + 1}, opt)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    before = ort.InferenceSession(str(opt)).run(None, {"x": x})[0]
    stats = share_weights(plain, opt)
    assert (stats["shared"], stats["own"]) == (2, 2)
    where = {k: v[:3] for k, v in regions(opt).items()}
    plain_where = {k: v[:3] for k, v in regions(plain).items()}
    assert where["A"] == plain_where["A"] and where["B_fused"] == plain_where["B"]
    assert where["C"][0] == where["D"][0] == "g.opt.onnx.data"
    assert (tmp_path / "g.opt.onnx.data").stat().st_size == where["D"][1] + where["D"][2]
    after = ort.InferenceSession(str(opt)).run(None, {"x": x})[0]
    assert np.array_equal(before, after)
    np.testing.assert_allclose(after, x @ a @ b + 3 * c + 1, rtol=1e-5)
