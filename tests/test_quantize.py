"""Block quantization: the packing matches onnxruntime's MatMulNBits / GatherBlockQuantized, at the
block sizes the converter really uses (quantize.FORMATS: int8 in blocks of 64, int4 in blocks of 128)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ragvl.models.converter.onnx_builder import FLOAT, GraphBuilder
from ragvl.models.converter.quantize import FORMATS, WeightFormat, dequantize_blockwise, linear, quantize_blockwise

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
