"""The int8 kernel a graph runs with on this CPU, derived at load from the one stored layout.

A converted folder stores each `rows`-kernel weight once, as uint8 = int8 + 128 with zero point
128 (converter/quantize.py), which every CPU multiplies exactly. At load this module rewrites
those MatMulInteger nodes for the kernel `contract.int8_kernel()` picks (contract/cpu.py says
why each is exact where it is chosen):

* ``u8s8``: weight bytes XOR 0x80 read as int8 (= uint8 - 128, exact), no weight zero point;
* ``u8s7``: (uint8 - 128) / 2 rounded (|q| <= 64), its column scales doubled;
* ``u8u8``: the file as it is (nothing derived).

The graph file is never written: the rewritten graph (structure only, a few MB) is handed to
onnxruntime as bytes, the derived weights as in-memory initializers, and every other weight is
still read from the folder's external data. Derived weights cost their size in memory (the
stored bytes are only memory-mapped while they are read), which is why a session opened without
prepacking (one short query) keeps the file's own layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import RagvlError
from ..contract import external_location

if TYPE_CHECKING:  # onnx is imported when a graph is rewritten: `ragvl search` never needs it
    import onnx

ZERO_POINT = 128  # of the stored uint8 weights (quantize.quantize_columns)


@dataclass
class Derived:
    """A graph rewritten for one int8 kernel: bytes for onnxruntime and the weights it needs."""

    model: bytes
    names: list[str] = field(default_factory=list)  # external initializers supplied in memory
    arrays: list[np.ndarray] = field(default_factory=list)  # kept alive as long as the session


def _read(init: "onnx.TensorProto", folder: Path) -> np.ndarray:
    """An initializer's array, memory-mapped from its external data file when it has one."""
    import onnx
    from onnx import numpy_helper

    where = external_location(init)
    if where is None:
        return numpy_helper.to_array(init)
    location, offset, _ = where
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
    return np.memmap(folder / location, dtype=dtype, mode="r", offset=offset, shape=tuple(init.dims))


def derive_weight(q: np.ndarray, kernel: str) -> np.ndarray:
    """Stored uint8 (K, N) -> the kernel's int8 weights (K, N)."""
    if kernel == "u8s8":
        return (np.asarray(q) ^ np.uint8(0x80)).view(np.int8)  # u - 128, bit for bit
    # u8s7: q8 in [-127, 127] -> round(q8 / 2) in [-64, 64], half away from zero
    q8 = np.asarray(q).astype(np.float32) - ZERO_POINT
    return np.trunc(q8 / 2 + np.copysign(np.float32(0.5), q8)).astype(np.int8)


def _replace(init: "onnx.TensorProto", array: np.ndarray, derived: Derived) -> None:
    """Point `init` at `array`: inline if small, else as an initializer supplied in memory."""
    import onnx
    from onnx import TensorProto, numpy_helper
    if init.data_location != TensorProto.EXTERNAL:
        init.CopyFrom(numpy_helper.from_array(array, init.name))
        return
    init.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    derived.names.append(init.name)
    derived.arrays.append(np.ascontiguousarray(array))


def rows_weights(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str]]:
    """The rows-kernel matmuls of `model`: (MatMulInteger node, weight name, column-scale name).

    Matched by the converter's names (`X.weight.qweight`, `X.weight.scales`) and checked
    against the node: a uint8 constant weight with a constant zero point of 128.
    """
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 4:
            continue
        w, zp = node.input[1], node.input[3]
        if w not in inits or inits[w].data_type != TensorProto.UINT8 or not w.endswith(".qweight"):
            continue
        if zp not in inits or int(numpy_helper.to_array(inits[zp])) != ZERO_POINT:
            continue
        scales = w.removesuffix(".qweight") + ".scales"
        if scales not in inits:
            raise RagvlError(f"{model.graph.name}: int8 weight {w} has no {scales}")
        out.append((node, w, scales))
    return out


def derive(path: Path, kernel: str) -> tuple[str | None, Derived | None]:
    """The kernel `path`'s graph runs with and, unless that is the stored layout (u8u8), the
    graph rewritten for it: (None, None) for a graph without rows-kernel weights. u8u8 reads
    nothing (the file is loaded as it is, without importing onnx: `ragvl search` starts faster)."""
    if kernel == "u8u8":
        return kernel, None
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)  # the structure: a few MB at 2B
    found = rows_weights(model)
    if not found:
        return None, None
    folder = path.parent
    inits = {i.name: i for i in model.graph.initializer}
    derived = Derived(b"")
    done_scales: set[str] = set()
    for node, w, scales in found:
        del node.input[3]  # the int8 weights' zero point is 0, MatMulInteger's default
        init = inits[w]
        if init.data_type == TensorProto.UINT8:  # a weight two nodes share is derived once
            _replace(init, derive_weight(_read(init, folder), kernel), derived)
        if kernel == "u8s7" and scales not in done_scales:
            done_scales.add(scales)
            _replace(inits[scales], (np.asarray(_read(inits[scales], folder)) * np.float32(2)).astype(np.float32),
                     derived)
    derived.model = model.SerializeToString()
    return kernel, derived
