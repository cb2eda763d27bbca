"""The rows kernel's ops, written once: the converter emits them for the vision tower and the
embedder's encoder (converter/quantize.py), the runtime when it rewrites the decoder's
column-scaled MatMulNBits for this CPU (runtime/int8.py).

The rows kernel multiplies activations quantized per row (uint8, zero point 128, one scale per
row) by weights quantized per output column (stored uint8 = int8 + 128, one scale per column) in
MatMulInteger, then scales the int32 products back by the row and the column scale.

Both sides build graphs their own way (the converter's GraphBuilder, the runtime's node lists),
so the ops are written against two callbacks: ``op(op_type, inputs, **attrs) -> output name``
and ``const(array) -> name`` of a shared constant.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ZERO_POINT = 128  # of the stored uint8 weights and of the quantized activations
# onnx's TensorProto data types (not imported: `ragvl search` never loads onnx)
FLOAT, UINT8 = 1, 2

Op = Callable[..., str]
Const = Callable[[np.ndarray], str]


def quantize_rows(op: Op, const: Const, x: str) -> tuple[str, str]:
    """x (..., K) float -> (round(x / s) + 128 as uint8 (..., K), s = max|row| / 127 (..., 1)).

    Every value lands in [1, 255]; a row of zeros gets a tiny scale instead of a division by 0."""
    peak = op("ReduceMax", [op("Abs", [x]), const(np.array([-1], np.int64))], keepdims=1)  # (..., 1)
    s = op("Div", [op("Max", [peak, const(np.float32(1e-30))]), const(np.float32(127))])
    shifted = op("Add", [op("Div", [x, s]), const(np.float32(ZERO_POINT))])
    return op("Cast", [op("Round", [shifted])], to=UINT8), s


def rescale(op: Op, acc: str, row_scales: str, column_scales: str) -> str:
    """int32 products (..., N) -> float * row scale (..., 1) * column scale (N,)."""
    return op("Mul", [op("Mul", [op("Cast", [acc], to=FLOAT), row_scales]), column_scales])


def rows_matmul(op: Op, const: Const, xq: str, row_scales: str, weight: str, column_scales: str, *,
                uint8_weight: bool) -> str:
    """The rows kernel over quantized rows: (..., K) uint8 @ weight (K, N) -> (..., N) float.
    `uint8_weight`: the weight is stored uint8 (zero point 128), else int8 derived at load
    (zero point 0, MatMulInteger's default); both hold the same numbers."""
    zp = const(np.uint8(ZERO_POINT))
    acc = op("MatMulInteger", [xq, weight, zp] + ([zp] if uint8_weight else []))
    return rescale(op, acc, row_scales, column_scales)
