"""Block quantization: the packing matches onnxruntime's MatMulNBits / GatherBlockQuantized, at the
block sizes the converter really uses (quantize.FORMATS: int8 in blocks of 64, int4 in blocks of 128)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ragvl.models.converter.onnx_builder import FLOAT, GraphBuilder
from ragvl.models.converter.quantize import (FORMATS, WeightFormat, dequantize_blockwise, linear, quantize_blockwise,
                                          quantize_columns, rows_reference)

QUANTIZED = [f for f in FORMATS.values() if f.quantized]
assert {(f.bits, f.block_size) for f in QUANTIZED} == {(8, 64), (4, 128)}  # what this file is about


def production(**fields) -> list:
    """pytest params: each production format, with `fields` replaced (e.g. accuracy_level)."""
    return [pytest.param(WeightFormat(f.name, bits=f.bits, block_size=f.block_size,
                                      accuracy_level=fields.get("accuracy_level", f.accuracy_level)), id=f.name)
            for f in QUANTIZED]


@pytest.mark.parametrize("fmt", production())
@pytest.mark.parametrize("k", [100, 1176, 1536])  # 100 and 1176 (a patch row) are not multiples of a block
def test_roundtrip_error_is_within_half_a_step(fmt, k):
    w = np.random.default_rng(k).standard_normal((24, k)).astype(np.float32)
    packed, scales, zp = quantize_blockwise(w, fmt.bits, fmt.block_size)
    n_blocks = -(-k // fmt.block_size)
    assert packed.shape == (24, n_blocks, fmt.block_size * fmt.bits // 8) and scales.shape == (24 * n_blocks,)
    deq = dequantize_blockwise(packed, scales, zp, fmt.bits, k)
    step = np.repeat(scales.reshape(24, -1), fmt.block_size, axis=1)[:, :k]
    assert np.all(np.abs(deq - w) <= step / 2 + 1e-6)


@pytest.mark.parametrize("fmt", production(accuracy_level=0))  # fp32 compute: an exact comparison
@pytest.mark.parametrize("k", [100, 1176])
def test_matmulnbits_equals_dequantized_matmul(tmp_path, fmt, k):
    rng = np.random.default_rng(fmt.bits)
    w, b = rng.standard_normal((48, k)).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    g = GraphBuilder("t", tmp_path / "t.onnx")
    x = g.input("x", FLOAT, [3, k])
    g.output(linear(g, x, "fc.weight", w, b, "/fc", fmt), "y", FLOAT, [3, 48])
    g.save()
    nodes = [n for n in onnx.load(str(tmp_path / "t.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert [{a.name: a.i for a in n.attribute}["block_size"] for n in nodes] == [fmt.block_size]
    xv = rng.standard_normal((3, k)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    deq = dequantize_blockwise(*quantize_blockwise(w, fmt.bits, fmt.block_size), fmt.bits, k)
    np.testing.assert_allclose(y, xv @ deq.T + b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", production())
def test_quantized_embedding_gathers_dequantized_rows(tmp_path, fmt):
    """A table whose width is a multiple of both blocks takes the GatherBlockQuantized path."""
    from ragvl.models.contract.config import TextConfig
    from ragvl.models.converter.checkpoint import TensorSource
    from ragvl.models.converter.decoder_graph import build_embed

    vocab, hidden = 1000, 256
    table = np.random.default_rng(0).standard_normal((vocab, hidden)).astype(np.float32)

    class Src(TensorSource):
        def __init__(self):
            self.used = set()

        def get(self, name, shape=None):
            assert shape == table.shape
            return table

    cfg = TextConfig(hidden, 1, 4, 2, 512, vocab, 1e-6, 1e6, (8, 12, 12), "silu")
    g = GraphBuilder("embed", tmp_path / "e.onnx")
    build_embed(g, Src(), cfg, fmt)
    g.save()
    ops = [n.op_type for n in onnx.load(str(tmp_path / "e.onnx")).graph.node]
    assert "GatherBlockQuantized" in ops and "Gather" not in ops
    ids = np.array([[0, 5, 517, vocab - 1]], np.int64)
    y = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    deq = dequantize_blockwise(*quantize_blockwise(table, fmt.bits, fmt.block_size), fmt.bits, hidden)
    np.testing.assert_array_equal(y[0], deq[ids[0]])


@pytest.mark.parametrize("fmt", production())
def test_large_tensors_quantize_in_chunks_identically(fmt):
    w = np.random.default_rng(1).standard_normal((4100, 1152)).astype(np.float32)  # > one 16 MB chunk
    whole = quantize_blockwise(w, fmt.bits, fmt.block_size)
    rows = [quantize_blockwise(w[i:i + 1], fmt.bits, fmt.block_size) for i in (0, 3999, 4099)]
    n_blocks = 1152 // fmt.block_size
    assert whole[0].shape == (4100, n_blocks, fmt.block_size * fmt.bits // 8)
    for (p, s, z), i in zip(rows, (0, 3999, 4099)):
        np.testing.assert_array_equal(whole[0][i], p[0])
        np.testing.assert_array_equal(whole[1].reshape(4100, -1)[i], s)
        np.testing.assert_array_equal(whole[2].reshape(4100, -1)[i], z)


@pytest.mark.parametrize("shape", [(37, 100), (2, 5, 1176)])  # a matrix, and (B, S, K) as the encoder
def test_rows_kernel_equals_its_integer_reference(tmp_path, shape):
    """The int8 rows kernel (per-row activations, per-column weights, MatMulInteger) computes exactly
    what rows_reference does in numpy, and is within int8 rounding of the fp32 product."""
    rng = np.random.default_rng(len(shape))
    k = shape[-1]
    w, b = rng.standard_normal((48, k)).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    w[3] = 0  # an all-zero output column keeps a finite scale
    xv = rng.standard_normal(shape).astype(np.float32)
    xv[..., 0, :] *= 50  # an outlier row must not coarsen the others
    g = GraphBuilder("t", tmp_path / "t.onnx")
    x = g.input("x", FLOAT, list(shape))
    fmt = FORMATS["int8"].for_many_rows()
    y1 = linear(g, x, "a.weight", w, b, "/a", fmt)
    y2 = linear(g, x, "b.weight", w[::-1].copy(), None, "/b", fmt)
    g.output(y1, "y1", FLOAT, [*shape[:-1], 48])
    g.output(y2, "y2", FLOAT, [*shape[:-1], 48])
    g.save()
    ops = [n.op_type for n in onnx.load(str(tmp_path / "t.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("ReduceMax") == 1  # one quantization, shared
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    y1v, y2v = sess.run(None, {"x": xv})
    q, scales = quantize_columns(w)
    np.testing.assert_allclose(y1v, rows_reference(xv, q, scales) + b, rtol=1e-6, atol=1e-6)
    q2, scales2 = quantize_columns(w[::-1].copy())
    np.testing.assert_allclose(y2v, rows_reference(xv, q2, scales2), rtol=1e-6, atol=1e-6)
    exact = xv @ w.T + b
    # each row's error is bounded by its own scale: about 1% of the row's output magnitude here
    rel = np.abs(y1v - exact).max(axis=-1) / np.abs(exact).max(axis=-1)
    assert rel.max() < 0.03, rel.max()


def graph_ops(folder, graph: str) -> set[str]:
    """The op types of a converted folder's graph."""
    return {n.op_type for n in onnx.load(str(folder / f"{graph}.onnx"), load_external_data=False).graph.node}


def test_int8_kernel_per_graph_and_embedding_fidelity(make_np_ckpt, tmp_path):
    """int8: the many-row graphs (vision tower, ColQwen2's encoder) take the rows kernel, the
    answerer's decoder (one row per decode step) keeps MatMulNBits; int8 page and query vectors
    stay close to fp32's (on this random tiny model the old MatMulNBits encoder measured a minimum
    cosine of 0.988, the rows kernel 0.990)."""
    from PIL import Image

    from ragvl.models.converter.convert import convert
    from ragvl.models.runtime.colqwen2 import ColQwen2

    ckpt = make_np_ckpt(variant="a", kind="colqwen2")
    fp32, int8 = (ColQwen2(convert(ckpt, tmp_path / d, dtype=d, log=lambda m: None)) for d in ("fp32", "int8"))
    for graph in ("vision", "encoder"):
        assert "MatMulInteger" in graph_ops(int8.folder, graph) and "MatMulNBits" not in graph_ops(int8.folder, graph)
    assert {k: v["kernel"] for k, v in int8.manifest["weight_format"].items()} == {
        "vision": "rows", "encoder": "rows", "embed": "nbits"}
    answerer = convert(make_np_ckpt(variant="a", seed=4), tmp_path / "answerer", dtype="int8", log=lambda m: None)
    assert "MatMulNBits" in graph_ops(answerer, "decoder") and "MatMulInteger" not in graph_ops(answerer, "decoder")
    assert "MatMulInteger" in graph_ops(answerer, "vision")

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(100, 100), (300, 140)]]
    queries = ["what is the revenue?", "a chart of sales"]
    pairs = [*zip(fp32.embed_images(images), int8.embed_images(images)),
             *zip(fp32.embed_queries(queries), int8.embed_queries(queries))]
    for a, b in pairs:
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))  # (n_vectors,)
        assert cos.min() > 0.98 and cos.mean() > 0.995, (cos.min(), cos.mean())
