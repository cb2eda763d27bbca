"""Quantized Linear layers, one tensor at a time, in two kernels.

* ``nbits``: weight-only block quantization for onnxruntime's MatMulNBits. Each Linear weight
  (N out, K in) is cut into blocks of `block_size` values along K; every block gets its own
  float scale and zero point (asymmetric, so skewed blocks keep their full range). With
  accuracy_level 4 the kernel quantizes activations per block too. Fastest at one row (decode).
* ``rows`` (int8 only): int8 weights per output column and int8 activations per row (token or
  patch), symmetric, multiplied exactly in integers by MatMulInteger. The weights are stored
  once, as uint8 = int8 + 128 (zero point 128), a layout every CPU multiplies exactly; at load
  the runtime derives the layout this CPU's integer instructions multiply fastest and still
  exactly (runtime/int8.py; contract/cpu.py chooses: int8 weights where the CPU has VNNI, AMX
  or an ARM dot product, the stored layout on AVX2 without one). The ops are contract/rows.py's.
  Per-row scales keep one outlier token from coarsening every other row, as a per-tensor scale
  (onnxruntime's quantize_dynamic) would; the price is a larger error than MatMulNBits' blocks
  of 64 (bench/results/<cpu kind>/int8_fidelity.md).
* ``nbits`` with column scales (int8, the answerer's decoder): the rows kernel's numbers (int8
  per output column, symmetric) stored in MatMulNBits' layout: every block of a column has the
  column's scale and zero point 128. The graph decodes one row at a time and prefills many, and
  the runtime gives each its kernel from these same bytes (runtime/int8.py): on AVX2 one row
  runs them as stored in MatMulNBits (as fast there as MatMulInteger at one row, with no copy
  of the weights) and a prefill the rows kernel over them (MatMulInteger, uint8 x uint8, exact
  there, 1.8x MatMulNBits at many rows); on a CPU with an int8 dot product the rows kernel runs
  both, with int8 weights derived exactly (as fast as MatMulNBits at one row, 4-9x at many).

Doing this per tensor while converting keeps peak memory at one tensor, where
`onnxruntime.quantization.quantize_dynamic` over a finished 2B graph peaks near 20 GB.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..contract import rows
from .onnx_builder import MS_DOMAIN, GraphBuilder


@dataclass(frozen=True)
class WeightFormat:
    """How Linear weights are stored: fp32 MatMul, or MatMulNBits with `bits` in (4, 8)."""

    name: str = "fp32"
    bits: int = 0
    block_size: int = 32
    # accuracy_level 4 lets MatMulNBits quantize activations to int8 and use integer dot
    # products: that is what makes a decode step faster than fp32 on a CPU, not just smaller.
    accuracy_level: int = 4
    kernel: str = "nbits"  # "nbits" (MatMulNBits) or "rows" (MatMulInteger, int8 only)
    scales: str = "blocks"  # nbits: "blocks" (asymmetric, per block) or "columns" (int8 only)

    @property
    def quantized(self) -> bool:
        return self.bits > 0

    def for_many_rows(self) -> WeightFormat:
        """The format for graphs that only ever multiply many rows at once (the vision tower,
        ColQwen2's encoder): int8 takes the `rows` kernel; fp32 and int4 are unchanged (int4 is
        chosen for size, and the rows kernel needs 8-bit weights)."""
        return replace(self, kernel="rows") if self.bits == 8 else self

    def for_any_rows(self) -> WeightFormat:
        """The format for a graph that decodes one row and prefills many (the answerer's
        decoder): int8 takes MatMulNBits with column scales, which the runtime turns into the
        rows kernel on CPUs with an int8 dot product; fp32 and int4 are unchanged."""
        return replace(self, scales="columns") if self.bits == 8 else self

    def describe(self) -> dict | None:
        """What a manifest records about this format (None for fp32)."""
        if not self.quantized:
            return None
        if self.kernel == "rows":
            return {"bits": 8, "kernel": "rows", "weights": "per output column", "activations": "per row"}
        out = {"bits": self.bits, "block_size": self.block_size, "kernel": "nbits",
               "accuracy_level": self.accuracy_level}
        return out | {"weights": "per output column"} if self.scales == "columns" else out


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


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output (a row of the HF weight `w` (N, K)), for the rows kernel.

    Returns (q (K, N) uint8 holding int8 + 128, as MatMulInteger's B with zero point 128;
    scales (N,) float32). Stored as uint8 because u8 x u8 is exact on every CPU (AVX2's u8 x s8
    instruction saturates its pairwise int16 sums); the faster layouts are derived from it at load.
    """
    scale = (np.abs(w).max(axis=1) / 127.0).astype(np.float32)  # (N,)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int16) + 128  # (N, K)
    return np.ascontiguousarray(q.T.astype(np.uint8)), scale


def quantize_column_blocks(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_columns' numbers in MatMulNBits' 8-bit layout: (packed (N, n_blocks, block_size)
    uint8, scales (N*n_blocks,) with each column's scale in all its blocks, zero points 128).
    K is padded to whole blocks with zeros (stored 128)."""
    q, scale = quantize_columns(w)  # (K, N), (N,)
    n, k = w.shape
    nb = -(-k // block_size)
    packed = np.full((n, nb * block_size), 128, np.uint8)
    packed[:, :k] = q.T
    return (packed.reshape(n, nb, block_size), np.repeat(scale, nb).astype(np.float32),
            np.full(n * nb, 128, np.uint8))


def rows_reference(x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """What the rows kernel computes for x (..., K), in numpy (integer products are exact)."""
    s_row = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-30)) / np.float32(127)
    xq = np.round(x / s_row + np.float32(128)).astype(np.int64) - 128  # (..., K) in [-127, 127]
    acc = xq @ (q.astype(np.int64) - 128)  # (..., N)
    return (acc.astype(np.float32) * s_row) * scales


def _quantized_rows(g: GraphBuilder, x: str, path: str) -> tuple[str, str]:
    """contract.quantize_rows of x, made once per input, so q/k/v or gate/up projections of one
    hidden state share it."""
    key = ("rows", x)
    if key not in g.memo:
        g.memo[key] = rows.quantize_rows(_op(g, path), g.const_like, x)
    return g.memo[key]


def _op(g: GraphBuilder, path: str) -> rows.Op:
    return lambda op_type, inputs, **attrs: g.op(op_type, inputs, path, **attrs)


def linear(g: GraphBuilder, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None, path: str,
           fmt: WeightFormat) -> str:
    """Emit `x @ weight.T + bias` for a HF Linear weight (out, in); `name` is its checkpoint name.

    fp32 stores the weight transposed to (in, out) for MatMul, as does the rows kernel (uint8);
    MatMulNBits' blocked layout keeps HF's (out, in) row order.
    """
    n, k = weight.shape
    if fmt.kernel == "rows":
        q, scales = quantize_columns(weight)
        xq, s = _quantized_rows(g, x, path + "/quantize_rows")
        y = rows.rows_matmul(_op(g, path), g.const_like, xq, s, g.weight(name + ".qweight", q),
                             g.weight(name + ".scales", scales), uint8_weight=True)
    elif fmt.quantized:
        packed, scales, zp = (quantize_column_blocks(weight, fmt.block_size) if fmt.scales == "columns"
                              else quantize_blockwise(weight, fmt.bits, fmt.block_size))
        y = g.op("MatMulNBits", [x, g.weight(name + ".qweight", packed), g.weight(name + ".scales", scales),
                                 g.weight(name + ".zero_points", zp)], path, domain=MS_DOMAIN,
                 K=k, N=n, bits=fmt.bits, block_size=fmt.block_size, accuracy_level=fmt.accuracy_level)
    else:
        y = g.matmul(x, g.weight(name, np.ascontiguousarray(weight.T)), path)
    if bias is not None:
        y = g.add(y, g.weight(name.removesuffix(".weight") + ".bias", bias), path)
    return y
