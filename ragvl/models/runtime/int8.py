"""The int8 kernel a graph runs with on this CPU, derived at load from the one stored layout.

A converted folder stores each `rows`-kernel weight once, as uint8 = int8 + 128 with zero point
128 (converter/quantize.py), which every CPU multiplies exactly. At load this module rewrites
those MatMulInteger nodes for the kernel `contract.int8_kernel()` picks (contract/cpu.py says
why each is exact where it is chosen):

* ``u8s8``: weight bytes XOR 0x80 read as int8 (= uint8 - 128, exact), no weight zero point;
* ``u8s7``: (uint8 - 128) / 2 rounded (|q| <= 64), its column scales doubled;
* ``u8u8``: the file as it is (nothing derived).

The answerer's decoder stores the same int8 numbers in MatMulNBits' layout, every block of a
column with the column's scale and zero point 128 (quantize.quantize_column_blocks): AVX2 runs
that as stored (the faster kernel at one row there). With u8s8 or u8s7 each such MatMulNBits
becomes the rows kernel, exactly as the converter writes it for the vision tower (quantize.linear:
activations quantized per row, MatMulInteger, row and column scales), its weights transposed
from the blocks. Only nodes whose zero points are all 128 and whose scales are constant along
each column are rewritten, so the weights are the stored ones bit for bit; older folders'
asymmetric blocks are loaded as they are.

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


def column_blocks(model: onnx.ModelProto, folder: Path) -> list[tuple[onnx.NodeProto, np.ndarray, np.ndarray]]:
    """The 8-bit MatMulNBits nodes of `model` that hold rows-kernel numbers: (node, the stored uint8
    weights (N, K) = int8 + 128, memory-mapped, column scales (N,)). Checked on
    the data: zero points all 128, scales constant along each column."""
    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 4 or not all(i in inits for i in node.input[1:4]):
            continue
        if len(node.input) > 4 and node.input[4]:  # g_idx: a reordered layout, never the converter's
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("bits") != 8:
            continue
        k, n = int(attrs["K"]), int(attrs["N"])
        zp = np.asarray(_read(inits[node.input[3]], folder))
        if not np.all(zp == ZERO_POINT):
            continue
        scales = np.asarray(_read(inits[node.input[2]], folder)).reshape(n, -1)  # (N, n_blocks)
        if not np.all(scales == scales[:, :1]):
            continue
        packed = _read(inits[node.input[1]], folder).reshape(n, -1)[:, :k]  # (N, K), memory-mapped
        out.append((node, packed, np.ascontiguousarray(scales[:, 0])))
    return out


def _as_rows(model: onnx.ModelProto, found, kernel: str, derived: Derived) -> None:
    """Replace each MatMulNBits of `found` by the rows kernel in `kernel`'s layout (same output
    name): x -> per-row uint8 + scale -> MatMulInteger -> float * row scale * column scale."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    consts: dict[str, np.ndarray] = {"/int8/axis_last": np.array([-1], np.int64),
                                     "/int8/tiny": np.float32(1e-30), "/int8/q_max": np.float32(127),
                                     "/int8/offset": np.float32(ZERO_POINT), "/int8/zero_point": np.uint8(ZERO_POINT)}
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), name) for name, v in consts.items())
    quantized: dict[str, tuple[str, str]] = {}  # input -> (uint8 rows, row scales): q/k/v share one
    nodes = list(g.node)
    del g.node[:]
    dropped = set()
    replace_by = {id(node): (w, s) for node, w, s in found}
    for node in nodes:
        if id(node) not in replace_by:
            g.node.append(node)
            continue
        w, scales = replace_by.pop(id(node))
        x, y, p = node.input[0], node.output[0], node.name or node.output[0]
        # onnxruntime's optimizer folds a following bias Add into MatMulNBits (input 5)
        bias = node.input[5] if len(node.input) > 5 and node.input[5] else None
        dropped.update(node.input[1:4])
        if x not in quantized:
            q = f"{p}/quantize_rows"
            g.node.extend([
                helper.make_node("Abs", [x], [q + "/abs"], name=q + "/Abs"),
                helper.make_node("ReduceMax", [q + "/abs", "/int8/axis_last"], [q + "/max"], name=q + "/ReduceMax",
                                 keepdims=1),
                helper.make_node("Max", [q + "/max", "/int8/tiny"], [q + "/max_"], name=q + "/Max"),
                helper.make_node("Div", [q + "/max_", "/int8/q_max"], [q + "/scale"], name=q + "/scale"),
                helper.make_node("Div", [x, q + "/scale"], [q + "/div"], name=q + "/Div"),
                helper.make_node("Add", [q + "/div", "/int8/offset"], [q + "/add"], name=q + "/Add"),
                helper.make_node("Round", [q + "/add"], [q + "/round"], name=q + "/Round"),
                helper.make_node("Cast", [q + "/round"], [q + "/uint8"], name=q + "/Cast", to=TensorProto.UINT8)])
            quantized[x] = (q + "/uint8", q + "/scale")
        xq, s = quantized[x]
        name = node.input[1].removesuffix(".qweight") + ".rows_qweight"  # the stored blocks' own name is dropped
        # one weight at a time in memory besides the derived ones (the file stays memory-mapped)
        weight, col = _derive_transposed(w, kernel), scales * (np.float32(2) if kernel == "u8s7" else np.float32(1))
        for n_, a in ((name, weight), (name.removesuffix(".rows_qweight") + ".column_scales", col.astype(np.float32))):
            derived.names.append(n_)
            derived.arrays.append(a)
            g.initializer.append(_external(n_, a))
        g.node.extend([
            helper.make_node("MatMulInteger", [xq, name, "/int8/zero_point"], [p + "/acc"], name=p + "/MatMulInteger"),
            helper.make_node("Cast", [p + "/acc"], [p + "/acc_f"], name=p + "/Cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "/acc_f", s], [p + "/row_scaled"], name=p + "/row_scale"),
            helper.make_node("Mul", [p + "/row_scaled", name.removesuffix(".rows_qweight") + ".column_scales"],
                             [p + "/scaled" if bias else y], name=p + "/col_scale")])
        if bias:
            g.node.append(helper.make_node("Add", [p + "/scaled", bias], [y], name=p + "/bias"))
    used = {i for n_ in g.node for i in n_.input}
    keep = [i for i in g.initializer if i.name not in dropped or i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _derive_transposed(stored: np.ndarray, kernel: str, rows: int = 128) -> np.ndarray:
    """derive_weight of stored.T for stored (N, K): tile by tile, so that each transpose stays
    in the cache (with whole-array transposes, deriving a 2B decoder took 9-12 s; tiled, 4-6)."""
    n, k = stored.shape
    out = np.empty((k, n), np.int8)
    for i in range(0, n, rows):
        if kernel == "u8s8":  # derive_weight's u - 128 (bit 7 flipped), in one pass
            np.bitwise_xor(stored[i:i + rows].T, np.uint8(0x80), out=out.view(np.uint8)[:, i:i + rows])
        else:
            out[:, i:i + rows] = derive_weight(np.ascontiguousarray(stored[i:i + rows].T), kernel)
    return out


def _external(name: str, array: np.ndarray) -> "onnx.TensorProto":
    """An initializer whose bytes onnxruntime is handed in memory (add_external_initializers)."""
    import onnx
    from onnx import TensorProto

    t = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                         dims=array.shape, data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value="in-memory")
    return t


def derive(path: Path, kernel: str) -> tuple[str | None, Derived | None]:
    """The kernel `path`'s graph runs with and, unless that is the stored layout (u8u8), the
    graph rewritten for it: (None, None) for a graph without rows-kernel weights. u8u8 reads
    nothing (the file is loaded as it is, without importing onnx: `ragvl search` starts faster)."""
    if kernel == "u8u8":
        return kernel, None
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)  # the structure: a few MB at 2B
    folder = path.parent
    found, blocks = rows_weights(model), column_blocks(model, folder)
    if not found and not blocks:
        return None, None
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
    if blocks:
        _as_rows(model, blocks, kernel, derived)
    derived.model = model.SerializeToString()
    return kernel, derived
