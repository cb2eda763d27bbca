"""Weight-only block quantization for onnxruntime's MatMulNBits, one tensor at a time.

Each Linear weight (N out, K in) is cut into blocks of `block_size` values along K; every block
gets its own float scale and zero point (asymmetric, so skewed blocks keep their full range).
Doing this per tensor while converting keeps peak memory at one tensor, where
`onnxruntime.quantization.quantize_dynamic` over a finished 2B graph peaks near 20 GB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .onnx_builder import MS_DOMAIN, GraphBuilder


@dataclass(frozen=True)
class WeightFormat:
    """How Linear weights are stored: fp32 MatMul, or MatMulNBits with `bits` in (4, 8)."""

    name: str = "fp32"
    bits: int = 0
    block_size: int = 32
    # accuracy_level 4 lets MatMulNBits quantize activations to int8 and use integer dot
    # products: that is what makes it faster than fp32 on a CPU, not just smaller.
    accuracy_level: int = 4

    @property
    def quantized(self) -> bool:
        return self.bits > 0


# Block sizes measured on the 2-core AVX-512 dev machine with accuracy_level 4, for a
# (1, 1536) x (1536, 8960) decode-step MatMul: int4 reads weights at 71 GB/s with blocks of 128
# against 49 GB/s with 32; int8 at 56 GB/s with 64 against 46 GB/s with 32. Larger blocks
# also shrink the scales (the int4 2B language model: 1.0 GB instead of 1.14 GB).
FORMATS = {
    "fp32": WeightFormat("fp32"),
    "int8": WeightFormat("int8", bits=8, block_size=64),
    "int4": WeightFormat("int4", bits=4, block_size=128),
}


def quantize_blockwise(w: np.ndarray, bits: int, block_size: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize `w` (N, K) into MatMulNBits' layout.

    Returns (packed (N, n_blocks, block_size*bits/8) uint8, scales (N*n_blocks,) float32,
    zero points uint8: (N*n_blocks,) for 8 bits, (N*ceil(n_blocks/2),) nibble-packed for 4 bits).
    """
    n, k = w.shape
    rows = max(1, (1 << 22) // max(k, 1))  # ~16 MB of float32 per chunk bounds the temporaries
    if n > rows:
        parts = [quantize_blockwise(w[i:i + rows], bits, block_size) for i in range(0, n, rows)]
        return tuple(np.concatenate(p) for p in zip(*parts))
    n_blocks = -(-k // block_size)
    pad = n_blocks * block_size - k
    if pad:
        w = np.pad(w, ((0, 0), (0, pad)))
    blocks = w.reshape(n, n_blocks, block_size).astype(np.float32)  # (N, nb, bs)
    qmax = (1 << bits) - 1
    lo = np.minimum(blocks.min(axis=-1), 0.0)  # keep 0 exactly representable
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scale = (hi - lo) / qmax  # (N, nb)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, qmax).astype(np.uint8)  # (N, nb)
    q = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    if bits == 8:
        return q, scale.reshape(-1), zp.reshape(-1)
    # 4 bits: two values per byte, the earlier one in the low nibble
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # (N, nb, bs/2)
    if n_blocks % 2:
        zp = np.pad(zp, ((0, 0), (0, 1)))
    zp_packed = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)  # (N, ceil(nb/2))
    return packed, scale.reshape(-1), zp_packed.reshape(-1)


def dequantize_blockwise(packed: np.ndarray, scales: np.ndarray, zp: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of quantize_blockwise, for tests and error measurements: returns (N, K)."""
    n, nb = packed.shape[:2]
    if bits == 4:
        q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, nb, -1)
        z = np.stack([zp.reshape(n, -1) & 15, zp.reshape(n, -1) >> 4], axis=-1).reshape(n, -1)[:, :nb]
    else:
        q, z = packed, zp.reshape(n, nb)
    w = (q.astype(np.float32) - z[..., None]) * scales.reshape(n, nb)[..., None]
    return w.reshape(n, -1)[:, :k]


def linear(g: GraphBuilder, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None, path: str,
           fmt: WeightFormat) -> str:
    """Emit `x @ weight.T + bias` for a HF Linear weight (out, in); `name` is its checkpoint name.

    fp32 stores the weight transposed to (in, out) for MatMul; quantized formats store
    MatMulNBits' blocked layout, which keeps HF's (out, in) row order.
    """
    n, k = weight.shape
    if fmt.quantized:
        packed, scales, zp = quantize_blockwise(weight, fmt.bits, fmt.block_size)
        y = g.op("MatMulNBits", [x, g.weight(name + ".qweight", packed), g.weight(name + ".scales", scales),
                                 g.weight(name + ".zero_points", zp)], path, domain=MS_DOMAIN,
                 K=k, N=n, bits=fmt.bits, block_size=fmt.block_size, accuracy_level=fmt.accuracy_level)
        if bias is not None:
            y = g.add(y, g.weight(name.removesuffix(".weight") + ".bias", bias), path)
        return y
    y = g.matmul(x, g.weight(name, np.ascontiguousarray(weight.T)), path)
    if bias is not None:
        y = g.add(y, g.weight(name.removesuffix(".weight") + ".bias", bias), path)
    return y
