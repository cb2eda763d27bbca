"""A small ONNX graph builder in the style of onnxruntime-genai's model builder.

One helper per op; node names are paths (`/model/layers.0/self_attn/q_proj/MatMul`) so a
profile or a netron view reads like the checkpoint; small constants are de-duplicated; large
weights stream straight into one external-data file as they are added, so building a 2B graph
never holds more than one tensor in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21
MS_DOMAIN = "com.microsoft"
_ALIGN = 4096  # page-aligned offsets let onnxruntime memory-map the weights

_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.bool_): TensorProto.BOOL,
}
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


class ExternalData:
    """Appends tensors to one `.onnx.data` file and returns initializers that point into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = self.path.open("wb")
        self._offset = 0

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        pad = (-self._offset) % _ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self._offset += pad
        self._f.write(array.data)  # a view, not a copy: a 0.9 GB table stays 0.9 GB
        length = array.nbytes
        t = TensorProto()
        t.name = name
        t.data_type = _NP_TO_ONNX[array.dtype]
        t.dims.extend(array.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(self._offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        self._offset += length
        return t

    @property
    def size(self) -> int:
        return self._offset

    def close(self) -> None:
        self._f.close()


class GraphBuilder:
    """Builds one ONNX graph; weights larger than `inline_limit` bytes go to external data."""

    def __init__(self, name: str, path: Path, inline_limit: int = 1024):
        self.name = name
        self.path = Path(path)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[TensorProto] = []
        self._consts: dict[tuple, str] = {}
        self._names: set[str] = set()
        self._inline_limit = inline_limit
        self.memo: dict = {}  # values derived once from an input and shared by its users
        self.data = ExternalData(self.path.with_name(self.path.name + ".data"))

    # -- graph interface -------------------------------------------------------------------
    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list) -> str:
        """Expose `value` as graph output `name` (an Identity renames it)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"/output/{name}/Identity"))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add a named initializer (a checkpoint tensor, already in its ONNX layout)."""
        if name in self._names:
            raise ValueError(f"initializer {name} added twice")
        self._names.add(name)
        array = np.asarray(array)
        if array.nbytes <= self._inline_limit:
            self.initializers.append(numpy_helper.from_array(array, name))
        else:
            self.initializers.append(self.data.add(name, array))
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant, shared by every node that uses the same value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        name = self._consts.get(key)
        if name is None:
            name = f"/const/{arr.dtype.name}_{len(self._consts)}"
            self._consts[key] = name
            self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def const_like(self, value: np.ndarray) -> str:
        """`const` keeping the array's own dtype (contract.rows' callback)."""
        return self.const(value, np.asarray(value).dtype)

    def op(self, op_type: str, inputs: list[str], path: str, n_out: int = 1, domain: str = "",
           **attrs) -> str | list[str]:
        """Add a node named `{path}/{op_type}`; returns its output name(s)."""
        node_name = f"{path}/{op_type}"
        base = node_name
        i = 1
        while node_name in self._names:  # the same op twice under one path
            node_name = f"{base}_{i}"
            i += 1
        self._names.add(node_name)
        outs = [f"{node_name}/output_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def if_else(self, cond: str, then_fn, else_fn, path: str, n_out: int) -> list[str]:
        """An If node on `cond`: each branch is built by `fn(builder)` -> its n_out values, on a
        builder that shares this graph's names, constants and weights (a branch reads any value
        of the outer graph, and its constants and weights live there)."""
        branches = []
        for label, fn in (("then", then_fn), ("else", else_fn)):
            sub = GraphBuilder.__new__(GraphBuilder)
            sub.__dict__.update(self.__dict__, nodes=[], inputs=[], outputs=[], memo={})
            values = fn(sub)
            made = {o for node in sub.nodes for o in node.output}
            for j, v in enumerate(values):
                name = f"{path}/{label}/output_{j}"
                if v in made:  # renamed where it is made and read: an Identity would copy it
                    for node in sub.nodes:
                        for io in (node.input, node.output):
                            io[:] = [name if x == v else x for x in io]
                else:  # a value of the outer graph
                    sub.nodes.append(helper.make_node("Identity", [v], [name], name=f"{path}/{label}/Identity_{j}"))
                sub.outputs.append(helper.make_tensor_value_info(name, FLOAT, None))
            branches.append(helper.make_graph(sub.nodes, f"{path}/{label}", [], sub.outputs))
        outs = self.op("If", [cond], path, n_out=n_out, then_branch=branches[0], else_branch=branches[1])
        return outs if n_out > 1 else [outs]

    def save(self) -> tuple[Path, Path]:
        """Write the graph and close the weights file; returns (graph path, data path)."""
        self.data.close()
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="ragvl")
        model.ir_version = 10
        onnx.save_model(model, str(self.path))
        return self.path, self.data.path

    # -- one helper per op -----------------------------------------------------------------
    def add(self, a, b, path): return self.op("Add", [a, b], path)
    def sub(self, a, b, path): return self.op("Sub", [a, b], path)
    def mul(self, a, b, path): return self.op("Mul", [a, b], path)
    def div(self, a, b, path): return self.op("Div", [a, b], path)
    def neg(self, a, path): return self.op("Neg", [a], path)
    def matmul(self, a, b, path): return self.op("MatMul", [a, b], path)
    def cos(self, a, path): return self.op("Cos", [a], path)
    def sin(self, a, path): return self.op("Sin", [a], path)
    def sigmoid(self, a, path): return self.op("Sigmoid", [a], path)
    def softmax(self, a, path, axis=-1): return self.op("Softmax", [a], path, axis=axis)
    def shape(self, a, path, start=None, end=None):
        kw = {}
        if start is not None:
            kw["start"] = start
        if end is not None:
            kw["end"] = end
        return self.op("Shape", [a], path, **kw)
    def cast(self, a, to, path): return self.op("Cast", [a], path, to=to)
    def reshape(self, a, shape, path):
        return self.op("Reshape", [a, shape if isinstance(shape, str) else self.const(shape)], path)
    def transpose(self, a, perm, path): return self.op("Transpose", [a], path, perm=list(perm))
    def concat(self, xs, axis, path): return self.op("Concat", list(xs), path, axis=axis)
    def unsqueeze(self, a, axes, path): return self.op("Unsqueeze", [a, self.const(axes)], path)
    def squeeze(self, a, axes, path): return self.op("Squeeze", [a, self.const(axes)], path)
    def gather(self, a, idx, axis, path): return self.op("Gather", [a, idx], path, axis=axis)
    def expand(self, a, shape, path): return self.op("Expand", [a, shape], path)
    def where(self, c, a, b, path): return self.op("Where", [c, a, b], path)
    def range(self, start, limit, delta, path): return self.op("Range", [start, limit, delta], path)
    def split(self, a, sizes, axis, path):
        return self.op("Split", [a, self.const(sizes)], path, n_out=len(sizes), axis=axis)
    def slice(self, a, starts, ends, axes, path):
        return self.op("Slice", [a, self.const(starts), self.const(ends), self.const(axes)], path)
    def layer_norm(self, x, w, b, eps, path):
        return self.op("LayerNormalization", [x, w, b], path, axis=-1, epsilon=eps)
    def rms_norm(self, x, w, eps, path):
        # Registered by onnxruntime in the default domain; fuses HF's float32 RMSNorm.
        return self.op("SimplifiedLayerNormalization", [x, w], path, axis=-1, epsilon=eps, stash_type=1)
