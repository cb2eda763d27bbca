"""The int8 kernel a graph runs with on this CPU, derived at load from the one stored layout.

A converted folder stores each `rows`-kernel weight once, as uint8 = int8 + 128 with zero point
128 (converter/quantize.py), which every CPU multiplies exactly. At load this module rewrites
those MatMulInteger nodes for the kernel `contract.int8_kernel()` picks (contract/cpu.py says
why each is exact where it is chosen):

* ``u8s8``: weight bytes XOR 0x80 read as int8 (= uint8 - 128, exact), no weight zero point;
* ``u8s7``: (uint8 - 128) / 2 rounded (|q| <= 64), its column scales doubled;
* ``u8u8``: the file as it is (nothing derived).

The answerer's decoder stores the same int8 numbers in MatMulNBits' layout, every block of a
column with the column's scale and zero point 128 (quantize.quantize_column_blocks). With u8s8
or u8s7 each such MatMulNBits becomes the rows kernel, with the ops the converter writes for the
vision tower (contract/rows.py: activations quantized per row, MatMulInteger, row and column
scales), its weights transposed from the blocks. On u8u8 (AVX2) MatMulNBits stays for one row
and an If gives many rows the rows kernel over the stored blocks themselves (`_prefill_as_rows`).
Only nodes whose zero points are all 128 and whose scales are constant along each column are
rewritten, so the weights are the stored ones bit for bit; older folders'
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
from ..contract import external_location, rows

if TYPE_CHECKING:  # onnx is imported when a graph is rewritten: `ragvl search` never needs it
    import onnx

ZERO_POINT = rows.ZERO_POINT  # of the stored uint8 weights (quantize.quantize_columns)


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


class _Writer:
    """Nodes for contract.rows' callbacks: each `ops(nodes, path)` appends to its own list (an If
    branch's or the graph's); constants are added to the graph's initializers once, where every
    branch reads them."""

    def __init__(self, graph: "onnx.GraphProto"):
        self.graph = graph
        self._consts: dict[tuple, str] = {}
        self._names: set[str] = set()

    def const(self, value) -> str:
        from onnx import numpy_helper

        arr = np.asarray(value)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = f"/int8/const_{len(self._consts)}"
            self.graph.initializer.append(numpy_helper.from_array(arr, self._consts[key]))
        return self._consts[key]

    def ops(self, nodes: list, path: str) -> rows.Op:
        from onnx import helper

        def op(op_type: str, inputs: list[str], **attrs) -> str:
            name, i = f"{path}/{op_type}", 1
            while name in self._names:
                name, i = f"{path}/{op_type}_{i}", i + 1
            self._names.add(name)
            nodes.append(helper.make_node(op_type, inputs, [name + "/output_0"], name=name, **attrs))
            return name + "/output_0"
        return op


def _bias(node: "onnx.NodeProto") -> str | None:
    """onnxruntime's optimizer folds a following bias Add into MatMulNBits (input 5)."""
    return node.input[5] if len(node.input) > 5 and node.input[5] else None


def _as_rows(model: onnx.ModelProto, found, kernel: str, derived: Derived) -> None:
    """Replace each MatMulNBits of `found` by the rows kernel in `kernel`'s layout (same output
    name): x -> per-row uint8 + scale -> MatMulInteger -> float * row scale * column scale."""
    g = model.graph
    w = _Writer(g)
    quantized: dict[str, tuple[str, str]] = {}  # input -> (uint8 rows, row scales): q/k/v share one
    nodes, out = list(g.node), []
    del g.node[:]
    dropped = set()
    replace_by = {id(node): (stored, scales) for node, stored, scales in found}
    for node in nodes:
        if id(node) not in replace_by:
            out.append(node)
            continue
        stored, scales = replace_by.pop(id(node))
        x, p = node.input[0], node.name or node.output[0]
        dropped.update(node.input[1:4])
        if x not in quantized:
            quantized[x] = rows.quantize_rows(w.ops(out, f"{p}/quantize_rows"), w.const, x)
        xq, s = quantized[x]
        name = node.input[1].removesuffix(".qweight") + ".rows_qweight"  # the stored blocks' own name is dropped
        # one weight at a time in memory besides the derived ones (the file stays memory-mapped)
        weight = _derive_transposed(stored, kernel)
        col = scales * (np.float32(2) if kernel == "u8s7" else np.float32(1))
        col_name = name.removesuffix(".rows_qweight") + ".column_scales"
        for n_, a in ((name, weight), (col_name, col.astype(np.float32))):
            derived.names.append(n_)
            derived.arrays.append(a)
            g.initializer.append(_external(n_, a))
        op = w.ops(out, p)
        y = rows.rows_matmul(op, w.const, xq, s, name, col_name, uint8_weight=False)
        if (bias := _bias(node)) is not None:
            y = op("Add", [y, bias])
        out[-1].output[0] = node.output[0]  # the last op writes the replaced node's output
    g.node.extend(out)
    used = {i for n_ in g.node for i in n_.input}
    keep = [i for i in g.initializer if i.name not in dropped or i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _prefill_as_rows(model: onnx.ModelProto, found) -> None:
    """u8u8: each group of `found`'s MatMulNBits that share an input becomes If(more than one
    row) {the rows kernel over the same stored bytes} else {the nodes as they are}.

    On AVX2 MatMulInteger (uint8 x uint8, exact there) is 1.8x MatMulNBits at many rows, and the
    two are about as fast at one row (bench/results/avx2/int8_kernels.md). The prefill
    multiplies the stored blocks (N, K) as MatMulInteger's *first* operand, W @ x^T, so the
    weights are not copied into a transposed layout: (M, K) -> transposed (K, M) -> (N, M) ->
    transposed (M, N). onnxruntime keeps the stored bytes for this besides MatMulNBits' packed
    copy, so the weights are in memory twice, as the derived layouts of the other kernels are.

    Measured against the other way, a transposed uint8 copy derived at load for the rows kernel
    at every row count (as u8s8 does), in the 2B int8 decoder on a 2-core AVX2 EPYC: prefill of
    934 tokens 15.9 s warm here against 14.0 s, a decode step 111 against 114 ms, resident after
    load 4.0 against 3.9 GB, and opening the model 7.7 s against 16.6 s (the derivation). Every
    `ragvl ask` pays the opening, so this way is the default."""
    g = model.graph
    w = _Writer(g)
    inits = {i.name: i for i in g.initializer}
    groups: dict[str, list] = {}
    for item in found:
        groups.setdefault(item[0].input[0], []).append(item)
    first = {id(items[0][0]): x for x, items in groups.items()}
    members = {id(node) for node, _, _ in found}
    nodes, out = list(g.node), []
    del g.node[:]
    for node in nodes:
        if id(node) not in members:
            out.append(node)
        elif id(node) in first:  # the group's If, where its first node was (all read the same input)
            x = first[id(node)]
            _rows_if(w, out, x, groups[x], inits)
    g.node.extend(out)


def _rows_if(w: _Writer, out: list, x: str, items: list, inits: dict) -> None:
    """Append to `out` the If of one group of MatMulNBits reading `x` (`_prefill_as_rows`)."""
    from onnx import TensorProto, helper, numpy_helper

    head = items[0][0]
    p = (head.name or head.output[0]) + "/rows"
    k = int(next(a.i for a in head.attribute if a.name == "K"))
    op = w.ops(out, p)
    many = op("Greater", [op("Size", [x]), w.const(np.int64(k))])  # more than one row of K
    then_nodes: list = []
    op = w.ops(then_nodes, p + "/many")
    xq, s = rows.quantize_rows(op, w.const, x)  # (..., K)
    x2 = op("Reshape", [xq, w.const(np.array([-1, k], np.int64))])  # (M, K)
    stored_k = int(np.prod(inits[head.input[1]].dims[1:]))  # K padded to whole blocks
    if stored_k > k:  # the padding columns meet activations of zero (zero point 128)
        x2 = op("Pad", [x2, w.const(np.array([0, 0, 0, stored_k - k], np.int64)),
                        w.const(np.uint8(rows.ZERO_POINT))])
    xt = op("Transpose", [x2], perm=[1, 0])  # (K', M)
    # K' read at run time: a constant shape would let onnxruntime fold the Reshape of the stored
    # blocks into a third copy of the weights; read this way it is a view
    k_dim = op("Slice", [op("Shape", [xt]), w.const(np.array([0], np.int64)), w.const(np.array([1], np.int64))])
    lead = op("Shape", [x], end=-1)  # (...)
    zp = w.const(np.uint8(rows.ZERO_POINT))
    values = []
    for mm, _, scales in items:
        n = int(next(a.i for a in mm.attribute if a.name == "N"))
        col = mm.input[1].removesuffix(".qweight") + ".column_scales"
        w.graph.initializer.append(numpy_helper.from_array(scales.astype(np.float32), col))
        blocks = op("Reshape", [mm.input[1], op("Concat", [w.const(np.array([n], np.int64)), k_dim], axis=0)])
        acc = op("Transpose", [op("MatMulInteger", [blocks, xt, zp, zp])], perm=[1, 0])  # (N, M) -> (M, N)
        acc = op("Reshape", [acc, op("Concat", [lead, w.const(np.array([n], np.int64))], axis=0)])  # (..., N)
        y = rows.rescale(op, acc, s, col)
        if (bias := _bias(mm)) is not None:
            y = op("Add", [y, bias])
        values.append(y)
    else_nodes = []
    for mm, _, _ in items:
        one = type(mm)()
        one.CopyFrom(mm)
        one.output[0] = mm.output[0] + "/one_row"
        else_nodes.append(one)

    def branch(nodes: list, outputs: list[str], label: str):
        return helper.make_graph(nodes, f"{p}/{label}", [],
                                 [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in outputs])

    out.append(helper.make_node("If", [many], [mm.output[0] for mm, _, _ in items], name=p + "/If",
                                then_branch=branch(then_nodes, values, "many"),
                                else_branch=branch(else_nodes, [n_.output[0] for n_ in else_nodes], "one")))


def _derive_transposed(stored: np.ndarray, kernel: str, tile: int = 128) -> np.ndarray:
    """derive_weight of stored.T for stored (N, K): tile by tile, so that each transpose stays
    in the cache (with whole-array transposes, deriving a 2B decoder took 9-12 s; tiled, 4-6)."""
    n, k = stored.shape
    out = np.empty((k, n), np.int8)
    for i in range(0, n, tile):
        if kernel == "u8s8":  # derive_weight's u - 128 (bit 7 flipped), in one pass
            np.bitwise_xor(stored[i:i + tile].T, np.uint8(0x80), out=out.view(np.uint8)[:, i:i + tile])
        else:
            out[:, i:i + tile] = derive_weight(np.ascontiguousarray(stored[i:i + tile].T), kernel)
    return out


def _external(name: str, array: np.ndarray) -> "onnx.TensorProto":
    """An initializer whose bytes onnxruntime is handed in memory (add_external_initializers)."""
    import onnx
    from onnx import TensorProto

    t = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                         dims=array.shape, data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value="in-memory")
    return t


def derive(path: Path, kernel: str, *, many_runs: bool = True, has_blocks: bool = True
           ) -> tuple[str | None, Derived | None]:
    """The kernel `path`'s graph runs with and, unless it runs as stored, the graph rewritten for
    it: (None, None) for a graph without rows-kernel weights or column-scaled blocks.
    u8u8 keeps the rows kernel's own weights as stored and rewrites only the column-scaled
    blocks, for a prefill (`_prefill_as_rows`). It reads nothing at all (the file is loaded as
    it is, without importing onnx: `ragvl search` and `ragvl index` start faster) for a session
    opened without prepacking (`many_runs=False`, one short query) or a graph whose manifest
    says it has no such blocks (`has_blocks=False`)."""
    if kernel == "u8u8" and not (many_runs and has_blocks):
        return kernel, None
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)  # the structure: a few MB at 2B
    folder = path.parent
    blocks = column_blocks(model, folder)
    derived = Derived(b"")
    if kernel == "u8u8":
        if not blocks:
            return kernel, None
        _prefill_as_rows(model, blocks)
        derived.model = model.SerializeToString()
        return kernel, derived
    found = rows_weights(model)
    if not found and not blocks:
        return None, None
    inits = {i.name: i for i in model.graph.initializer}
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
