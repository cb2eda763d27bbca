"""Block quantization: the packing matches onnxruntime's MatMulNBits / GatherBlockQuantized."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ragvl.models.converter.onnx_builder import FLOAT, GraphBuilder
from ragvl.models.converter.quantize import WeightFormat, dequantize_blockwise, linear, quantize_blockwise


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 100, 1176])  # 100 and 1176 are not multiples of the block
def test_roundtrip_error_is_within_half_a_step(bits, k):
    w = np.random.default_rng(k).standard_normal((24, k)).astype(np.float32)
    packed, scales, zp = quantize_blockwise(w, bits, 32)
    deq = dequantize_blockwise(packed, scales, zp, bits, k)
    step = np.repeat(scales.reshape(24, -1), 32, axis=1)[:, :k]
    assert np.all(np.abs(deq - w) <= step / 2 + 1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_matmulnbits_equals_dequantized_matmul(tmp_path, bits):
    rng = np.random.default_rng(bits)
    w, b = rng.standard_normal((48, 100)).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    g = GraphBuilder("t", tmp_path / "t.onnx")
    x = g.input("x", FLOAT, [3, 100])
    fmt = WeightFormat("q", bits=bits, block_size=32, accuracy_level=0)  # fp32 compute: exact comparison
    g.output(linear(g, x, "fc.weight", w, b, "/fc", fmt), "y", FLOAT, [3, 48])
    g.save()
    xv = rng.standard_normal((3, 100)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    deq = dequantize_blockwise(*quantize_blockwise(w, bits, 32), bits, 100)
    np.testing.assert_allclose(y, xv @ deq.T + b, rtol=1e-4, atol=1e-4)


def test_quantized_embedding_gathers_dequantized_rows(tmp_path):
    from ragvl.models.converter.checkpoint import TensorSource
    from ragvl.models.contract.config import TextConfig
    from ragvl.models.converter.decoder_graph import build_embed

    table = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)

    class Src(TensorSource):
        def __init__(self):
            self.used = set()

        def get(self, name, shape=None):
            return table

    cfg = TextConfig(64, 1, 4, 2, 128, 40, 1e-6, 1e6, (2, 3, 3), "silu")
    g = GraphBuilder("embed", tmp_path / "e.onnx")
    build_embed(g, Src(), cfg, WeightFormat("int4", bits=4, block_size=32))
    g.save()
    ids = np.array([[0, 5, 39]], np.int64)
    y = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    deq = dequantize_blockwise(*quantize_blockwise(table, 4, 32), 4, 64)
    np.testing.assert_array_equal(y[0], deq[ids[0]])


@pytest.mark.parametrize("bits", [4, 8])
def test_large_tensors_quantize_in_chunks_identically(bits):
    w = np.random.default_rng(1).standard_normal((4100, 1056)).astype(np.float32)  # > one 16 MB chunk
    whole = quantize_blockwise(w, bits, 32)
    rows = [quantize_blockwise(w[i:i + 1], bits, 32) for i in (0, 3999, 4099)]
    n_blocks = 1056 // 32
    assert whole[0].shape == (4100, n_blocks, 32 * bits // 8)
    for (p, s, z), i in zip(rows, (0, 3999, 4099)):
        np.testing.assert_array_equal(whole[0][i], p[0])
        np.testing.assert_array_equal(whole[1].reshape(4100, -1)[i], s)
        np.testing.assert_array_equal(whole[2].reshape(4100, -1)[i], z)
