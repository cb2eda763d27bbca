"""A lazy index of the tensors in a Hugging Face safetensors checkpoint, read without torch.

Like llama.cpp's converter, nothing is loaded until asked for: the headers are parsed up front,
each tensor is read from a memory map on demand, so conversion streams tensor by tensor and
peak memory stays near the size of the largest tensor.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import RagvlError

INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tags -> numpy storage dtype. bf16 has no numpy dtype: it is read as uint16
# and widened to float32 by shifting into the high half, which is exact.
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype tag, shape and byte range in the data section."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _read_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header; returns (header dict, offset of the data section)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in a {size}-byte file")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise RagvlError(f"{path}: missing safetensors file") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise RagvlError(f"{path}: not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise RagvlError(f"{path}: not a readable safetensors file (header is not a JSON object)")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info.get("data_offsets", (0, -1))
        if info.get("dtype") not in _DTYPES:
            raise RagvlError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        if not (0 <= begin <= end <= data_len):
            raise RagvlError(f"{path}: tensor {name} lies outside the file (truncated download?)")
        itemsize = np.dtype(_DTYPES[info["dtype"]]).itemsize
        if (end - begin) != itemsize * int(np.prod(info["shape"], dtype=np.int64)):
            raise RagvlError(f"{path}: tensor {name} has a byte size that does not match its shape")
    return header, 8 + n


class Checkpoint:
    """All tensors of one checkpoint folder, by name, loaded lazily.

    Reads every `*.safetensors` in the folder. When `model.safetensors.index.json` exists, the
    shards it names must exist and hold exactly the tensors its weight map says.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.tensors: dict[str, TensorInfo] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        index_path = self.folder / INDEX_FILE
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise RagvlError(f"{index_path}: unreadable shard index ({e})") from None
            files = sorted({self.folder / f for f in weight_map.values()})
        else:
            weight_map = None
            files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise RagvlError(f"{self.folder}: no *.safetensors files found")
        for file in files:
            header, data_start = _read_header(file)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self.tensors:
                    raise RagvlError(f"{file}: tensor {name} also appears in {self.tensors[name].file.name}")
                begin, end = info["data_offsets"]
                self.tensors[name] = TensorInfo(file, info["dtype"], tuple(info["shape"]),
                                                data_start + begin, data_start + end)
        if weight_map is not None:
            for name, fname in weight_map.items():
                got = self.tensors.get(name)
                if got is None:
                    raise RagvlError(f"{self.folder / fname}: tensor {name} listed in {INDEX_FILE} is missing")
                if got.file.name != Path(fname).name:
                    raise RagvlError(f"{got.file}: tensor {name} is in {got.file.name}, {INDEX_FILE} says {fname}")
            extra = sorted(set(self.tensors) - set(weight_map))
            if extra:
                raise RagvlError(f"{self.folder}: tensors not in {INDEX_FILE}: {', '.join(extra[:5])}")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def dtype(self, name: str) -> str:
        return self.tensors[name].dtype

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (floating types) or its own integer type; a fresh array."""
        info = self.tensors[name]
        mm = self._maps.get(info.file)
        if mm is None:
            with info.file.open("rb") as f:
                mm = self._maps[info.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        raw = np.frombuffer(mm, dtype=_DTYPES[info.dtype], count=(info.end - info.begin)
                            // np.dtype(_DTYPES[info.dtype]).itemsize, offset=info.begin)
        raw = raw.reshape(info.shape)
        if info.dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        elif raw.dtype.kind == "f":
            out = raw.astype(np.float32)
        else:
            out = raw.copy()
        del raw
        # The copy is all we keep: drop the mapped pages so a 4 GB checkpoint read end to end
        # does not stay resident (file-backed pages count towards the process's RSS).
        start = info.begin - info.begin % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, info.end - start)
        except (AttributeError, OSError, ValueError):
            pass
        return out

    def close(self) -> None:
        for mm in self._maps.values():
            mm.close()
        self._maps.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The one place where checkpoint names are mapped to the names the graph builders use (the hub's
# transformers-4.x layout). PEFT wraps everything in `base_model.model.`; transformers 5 and
# colpali-engine name the text model `language_model` inside the VLM.
_RENAMES = (
    ("base_model.model.", ""),
    ("model.language_model.", "model."),
    ("language_model.", "model."),
    ("model.visual.", "visual."),
)


def canonical_name(name: str) -> str:
    """A checkpoint tensor name in the hub's Qwen2-VL layout (`visual.*`, `model.layers.*`, ...)."""
    for old, new in _RENAMES:
        if name.startswith(old):
            name = new + name[len(old):]
    return name


class TensorSource:
    """Hands out a checkpoint's tensors under canonical names and records which were used.

    `check(expected)` fails before any work if tensors are missing or unexpected, naming them;
    `check_all_used()` is the safety net afterwards.
    """

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self._by_name: dict[str, str] = {}
        for raw in ckpt.names():
            name = canonical_name(raw)
            if name in self._by_name:
                raise RagvlError(f"{ckpt.folder}: tensors {self._by_name[name]} and {raw} both map to {name}")
            self._by_name[name] = raw
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def shape(self, name: str) -> tuple[int, ...]:
        return self.ckpt.shape(self._require(name))

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor `name` as float32; checks its shape when `shape` is given."""
        raw = self._require(name)
        self.used.add(name)
        arr = self.ckpt.get(raw)
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise RagvlError(f"{self.ckpt.tensors[raw].file}: tensor {raw} has shape {tuple(arr.shape)}, "
                             f"expected {tuple(shape)}")
        return arr

    def _require(self, name: str) -> str:
        raw = self._by_name.get(name)
        if raw is None:
            raise RagvlError(f"{self.ckpt.folder}: missing tensor {name}")
        return raw

    def check(self, expected: list[str]) -> None:
        """Fail before any work if tensors are missing or unexpected, naming them."""
        missing = [n for n in expected if n not in self._by_name]
        extra = sorted(set(self._by_name) - set(expected))
        problems = []
        if missing:
            problems.append("missing tensors: " + _names(missing))
        if extra:
            problems.append("unexpected tensors: " + _names(extra))
        if problems:
            raise RagvlError(f"{self.ckpt.folder}: " + "; ".join(problems))

    def check_all_used(self) -> None:
        extra = sorted(set(self._by_name) - self.used)
        if extra:
            raise RagvlError(f"{self.ckpt.folder}: tensors the converter did not use: {_names(extra)}")


def _names(names: list[str], most: int = 8) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more
