"""int8 by the CPU's features: the choice of kernel, the layouts derived at load from the one
stored layout, and each kernel's integer product checked exactly against numpy's int64 one.

Every kernel runs on every machine: u8u8 and u8s7 are exact on any x86 CPU with AVX2 (and on
ARM), so their full-range results are compared bit for bit everywhere; u8s8 is exact where the
CPU has an integer dot product, so it is compared on full-range weights where this CPU is chosen
for it, and on weights that cannot saturate AVX2's 16-bit pair sums everywhere.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ragvl.errors import RagvlError
from ragvl.models.contract import (CpuFeatures, best_int8_kernel, column_scaled_blocks, cpu_features, int8_kernel,
                                   read_manifest)
from ragvl.models.converter.onnx_builder import FLOAT, GraphBuilder
from ragvl.models.converter.quantize import FORMATS, linear, quantize_columns, rows_reference
from ragvl.models.runtime.int8 import derive, derive_weight
from ragvl.models.runtime.session import create_session, session_kernel

X86 = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


@pytest.mark.parametrize("features, kernel", [
    (("avx2",), "u8u8"),  # AMD Zen 2/3, Intel before Ice Lake: u8 x s8 pairs saturate int16
    (("avx2", "avx512f"), "u8u8"),  # Skylake-X: AVX-512 but no VNNI
    (("avx2", "avx512f", "avx512_vnni"), "u8s8"),  # Zen 4, Ice Lake / Cascade Lake Xeons
    (("avx2", "avx_vnni"), "u8s8"),  # Alder Lake laptops
    (("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"), "u8s8"),  # Sapphire Rapids
    ((), "u8u8"),  # no AVX2: the stored layout, exact everywhere
])
def test_kernel_choice_by_cpu_features(features, kernel):
    cpu = CpuFeatures("test cpu", "x86_64", tuple(f for f in X86 if f in features) + (
        ("amx_tile",) if "amx_tile" in features else ()))
    assert best_int8_kernel(cpu) == kernel


def test_kernel_choice_on_arm():
    assert best_int8_kernel(CpuFeatures("arm", "aarch64", ("asimd", "asimddp"))) == "u8s8"
    assert best_int8_kernel(CpuFeatures("arm", "aarch64", ("asimd",))) == "u8u8"


def test_this_machine_and_the_override(monkeypatch):
    cpu = cpu_features()
    flags = open("/proc/cpuinfo").read().split()
    assert set(cpu.features) == {f for f in (*X86, "amx_tile", "avx512_bf16", "asimd", "asimddp", "i8mm", "sve")
                                 if f in flags}
    assert cpu.as_dict()["int8_kernel"] == best_int8_kernel(cpu)
    monkeypatch.delenv("RAGVL_INT8_KERNEL", raising=False)
    assert int8_kernel() == best_int8_kernel(cpu)
    monkeypatch.setenv("RAGVL_INT8_KERNEL", "u8u8")
    assert int8_kernel() == "u8u8"
    monkeypatch.setenv("RAGVL_INT8_KERNEL", "s4")
    with pytest.raises(RagvlError, match="RAGVL_INT8_KERNEL=s4: expected one of u8s8, u8s7, u8u8"):
        int8_kernel()


def test_derived_weights_are_the_stored_ones():
    """u8s8 is the stored uint8 minus 128, bit for bit; u8s7 halves it to |q| <= 64, rounding
    half away from zero."""
    q = np.arange(1, 256, dtype=np.uint8).reshape(15, 17)  # every stored value quantize_columns writes
    q8 = q.astype(np.int16) - 128
    s8 = derive_weight(q, "u8s8")
    assert s8.dtype == np.int8 and np.array_equal(s8, q8)
    s7 = derive_weight(q, "u8s7")
    assert s7.dtype == np.int8 and np.abs(s7).max() == 64
    assert np.abs(2 * s7.astype(np.int16) - q8).max() == 1  # one rounding step of the halved value
    assert np.array_equal(s7, np.sign(q8) * ((np.abs(q8) + 1) // 2))  # ties (odd q8) away from zero


def _rows_graph(tmp_path, w: np.ndarray, k: int) -> str:
    """One rows-kernel Linear (as the converter writes it), weights large enough to live in
    the external data file."""
    g = GraphBuilder("t", tmp_path / "t.onnx")
    x = g.input("x", FLOAT, ["M", k])
    g.output(linear(g, x, "l.weight", w, None, "/l", FORMATS["int8"].for_many_rows()), "y", FLOAT, ["M", len(w)])
    g.save()
    return tmp_path / "t.onnx"


@pytest.mark.parametrize("kernel", sorted({"u8u8", "u8s7", best_int8_kernel()}))
def test_kernel_is_exact_here_on_full_range_weights(tmp_path, kernel):
    """The kernels this CPU may run (u8u8, u8s7 and the one chosen for it) compute exactly their
    integer reference on full-range weights and activations with outliers."""
    rng = np.random.default_rng(7)
    k, n = 1176, 96
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[:, ::2] = np.abs(w[:, ::2])  # same-signed neighbours: the pairs that saturate int16 if anything does
    x = rng.standard_normal((33, k)).astype(np.float32)
    x[5] *= 40
    x[:, ::2] = np.abs(x[:, ::2]) * 3
    path = _rows_graph(tmp_path, w, k)
    inits = {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.initializer}
    assert inits["l.weight.qweight"].data_location == TensorProto.EXTERNAL  # supplied in memory when derived
    sess = create_session(path, threads=2, kernel=kernel)
    assert session_kernel(sess) == kernel
    q, scales = quantize_columns(w)
    if kernel == "u8s7":
        q, scales = (derive_weight(q, kernel).astype(np.int16) + 128).astype(np.uint8), scales * 2
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], rows_reference(x, q, scales), rtol=1e-6, atol=1e-6)


def test_u8s8_is_exact_everywhere_where_pairs_cannot_saturate(tmp_path):
    """u8s8's graph rewrite on any CPU: int8 weights within +-64 (no pair of u8 x s8 products
    reaches int16's limit, even on AVX2) give MatMulInteger's exact int64 product."""
    rng = np.random.default_rng(3)
    k, n = 640, 80
    b = rng.integers(64, 193, (k, n)).astype(np.uint8)  # stored uint8 = int8 + 128, |int8| <= 64
    zp = numpy_helper.from_array(np.uint8(128), "/const/uint8_0")
    node = helper.make_node("MatMulInteger", ["a", "l.weight.qweight", zp.name, zp.name], ["y"])
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", n])],
                              [numpy_helper.from_array(b, "l.weight.qweight"), zp,
                               numpy_helper.from_array(np.ones(n, np.float32), "l.weight.scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "m.onnx"))
    used, derived = derive(tmp_path / "m.onnx", "u8s8")
    rewritten = onnx.load_from_string(derived.model)
    assert used == "u8s8" and list(rewritten.graph.node[0].input) == ["a", "l.weight.qweight", zp.name]
    assert {i.name: i.data_type for i in rewritten.graph.initializer}["l.weight.qweight"] == TensorProto.INT8
    a = rng.integers(0, 256, (21, k)).astype(np.uint8)
    sess = create_session(tmp_path / "m.onnx", threads=2, kernel="u8s8")
    assert np.array_equal(sess.run(None, {"a": a})[0], (a.astype(np.int64) - 128) @ (b.astype(np.int64) - 128))


@pytest.mark.parametrize("kernel", sorted({"u8u8", "u8s7", best_int8_kernel()}))
@pytest.mark.parametrize("optimized", [False, True])
def test_decoder_blocks_become_the_rows_kernel(tmp_path, kernel, optimized):
    """The decoder's column-scaled MatMulNBits (with its bias, which onnxruntime's optimizer folds
    into the node) computes exactly the rows kernel's numbers from the same stored weights for
    many rows on every kernel (u8u8: an If over the stored blocks), and for one row as the rows
    kernel where the CPU has an integer dot product or MatMulNBits as stored on u8u8; K not a
    whole number of blocks, hidden states (B, S, K) as in the decoder."""
    from ragvl.models.converter.optimize import save_optimized

    rng = np.random.default_rng(11)
    k, n = 200, 72  # 200 = 3 blocks of 64 + 8
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[:, ::2] = np.abs(w[:, ::2])
    bias = rng.standard_normal(n).astype(np.float32)
    g = GraphBuilder("t", tmp_path / "t.onnx")
    x = g.input("x", FLOAT, ["B", "S", k])
    fmt = FORMATS["int8"].for_any_rows()
    assert fmt.describe()["weights"] == "per output column" and fmt.kernel == "nbits"
    g.output(linear(g, x, "l.weight", w, bias, "/l", fmt), "y", FLOAT, ["B", "S", n])
    g.save()
    path = tmp_path / "t.onnx"
    if optimized:
        save_optimized(path)
        path = tmp_path / "t.opt.onnx"
        node = next(nd for nd in onnx.load(str(path), load_external_data=False).graph.node
                    if nd.op_type == "MatMulNBits")
        assert node.input[5] == "l.bias"  # the bias Add folded in: the rewrite must keep it
    xs = rng.standard_normal((1, 9, k)).astype(np.float32)
    xs[0, 2] *= 30
    sess = create_session(path, threads=2, kernel=kernel, optimize=not optimized)
    assert session_kernel(sess) == kernel
    q, scales = quantize_columns(w)
    rewritten = onnx.load_from_string(derive(path, kernel)[1].model).graph
    top = [nd.op_type for nd in rewritten.node]
    if kernel == "u8u8":  # If(more than one row) {MatMulInteger over the stored blocks} else {MatMulNBits}
        assert top.count("If") == 1 and "MatMulNBits" not in top and "MatMulInteger" not in top
        branches = {a.name: [nd.op_type for nd in a.g.node] for a in next(nd for nd in rewritten.node
                                                                            if nd.op_type == "If").attribute}
        assert branches["else_branch"] == ["MatMulNBits"] and branches["then_branch"].count("MatMulInteger") == 1
        assert not [i for i in rewritten.initializer if i.name.endswith(".rows_qweight")]  # nothing copied
    else:
        assert "MatMulNBits" not in top and top.count("MatMulInteger") == 1
    if kernel == "u8s7":
        q, scales = (derive_weight(q, kernel).astype(np.int16) + 128).astype(np.uint8), scales * 2
    for rows_in in (xs, xs[:, 3:4], np.concatenate([xs[:, 3:4], xs[:, 5:6]])):  # 9 rows, 1 row, a batch of 2 rows
        y = sess.run(None, {"x": rows_in})[0]
        ref = rows_reference(rows_in.reshape(-1, k), q, scales).reshape(*rows_in.shape[:2], n) + bias
        if kernel == "u8u8" and rows_in.size == k:  # MatMulNBits quantizes its activations in blocks
            assert (np.abs(y - ref).max(axis=-1) / np.abs(ref).max(axis=-1)).max() < 0.02
        else:
            np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5)


def test_graphs_without_rows_weights_are_loaded_as_they_are(tmp_path):
    g = GraphBuilder("t", tmp_path / "t.onnx")
    x = g.input("x", FLOAT, ["M", 64])
    g.output(linear(g, x, "l.weight", np.ones((8, 64), np.float32), None, "/l", FORMATS["int8"]), "y", FLOAT, ["M", 8])
    g.save()
    assert derive(tmp_path / "t.onnx", "u8s8") == (None, None)  # MatMulNBits' own blocks: kept
    assert session_kernel(create_session(tmp_path / "t.onnx", kernel="u8s8")) is None


def test_models_list_says_which_kernel_runs_here(make_np_ckpt, tmp_path, monkeypatch):
    """`models list --json`: each graph's kernel on this machine, and the CPU it was chosen for."""
    from typer.testing import CliRunner

    from ragvl.cli import app
    from ragvl.models.converter.convert import convert

    monkeypatch.setenv("RAGVL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAGVL_INT8_KERNEL", raising=False)
    models = tmp_path / "home" / "models"
    convert(make_np_ckpt(variant="a", kind="colqwen2"), models / "emb-int8", dtype="int8", log=lambda m: None)
    convert(make_np_ckpt(variant="a", kind="colqwen2"), models / "emb-fp32", dtype="fp32", log=lambda m: None)
    convert(make_np_ckpt(variant="a"), models / "ans-int8", dtype="int8", log=lambda m: None)
    out = CliRunner().invoke(app, ["models", "list", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    best = best_int8_kernel()
    assert rows["emb-int8"]["kernels"] == {"vision": f"int8 {best} (MatMulInteger)",
                                           "encoder": f"int8 {best} (MatMulInteger)",
                                           "embed": "int8 blocks of 64 (GatherBlockQuantized)"}
    assert rows["emb-fp32"]["kernels"] == {"vision": "fp32 (MatMul)", "encoder": "fp32 (MatMul)", "embed": "fp32 (Gather)"}
    # the decoder's column-scaled blocks: on AVX2 the rows kernel for a prefill and MatMulNBits as
    # stored for one row, the rows kernel for both elsewhere
    assert rows["ans-int8"]["kernels"]["decoder"] == (
        "int8 u8u8 (MatMulInteger) for many rows, blocks of 64 (MatMulNBits) for one" if best == "u8u8"
        else f"int8 {best} (MatMulInteger)")
    assert rows["emb-int8"]["cpu"] == cpu_features().kind
    # which graphs hold column-scaled blocks, from the manifest: only those are read before
    # they load on u8u8 (runtime/int8.py); the others load as stored, unread
    manifests = {name: read_manifest(models / name) for name in ("emb-int8", "emb-fp32", "ans-int8")}
    assert {(name, g) for name, m in manifests.items() for g in m["graphs"] if column_scaled_blocks(m, g)} == {
        ("ans-int8", "decoder")}
    not_a_graph = tmp_path / "not-a-graph.onnx"
    not_a_graph.write_bytes(b"\x00 not protobuf")
    assert derive(not_a_graph, "u8u8", has_blocks=False) == ("u8u8", None)
    with pytest.raises(Exception):  # told it may have blocks, u8u8 reads the file
        derive(not_a_graph, "u8u8")
    text = CliRunner().invoke(app, ["models", "list"])
    assert f"int8 {best}" in text.stdout
