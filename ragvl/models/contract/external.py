"""Where a graph file's tensors keep their bytes: ONNX external data, as the converter writes it
and the runtime reads it (location, offset and length beside the graph)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnx import TensorProto


def external_location(t: "TensorProto") -> tuple[str, int, int] | None:
    """(file name in the graph's folder, offset, length in bytes) of a tensor stored as external
    data; None for one stored inside the graph. A missing length (optional in the format) is the
    tensor's dense size."""
    import numpy as np
    import onnx
    from onnx import TensorProto

    if t.data_location != TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in t.external_data}
    length = info.get("length")
    if length is None:
        length = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize * int(np.prod(t.dims))
    return info["location"], int(info.get("offset", 0)), int(length)
