"""onnxruntime's optimized graphs, saved at conversion so that loading a model skips that work.

Measured at the 2B shape (int8): the decoder session takes 5.1 s to open with onnxruntime's
graph optimizations on and 1.8 s with them off. So the converter lets onnxruntime optimize each
graph once and save the result (`decoder.opt.onnx`), and the runtime loads that copy with
optimizations off. The level is "extended", not "all": the extra level only adds layout changes
for the CPU it runs on.

One copy of the weights: onnxruntime writes every weight of the optimized graph again, so after
it saves, `share_weights` points each weight whose dtype, dims and bytes equal the plain graph's
(`decoder.onnx.data`) at those bytes, and the optimized copy's own data file
(`decoder.opt.onnx.data`) keeps only the tensors the optimizer made or changed; none at all, no
file. A folder then holds each weight once, and a process that opens both graphs of one model
maps the same pages.

A saved graph is valid for the onnxruntime version, provider and CPU that made it, which the
manifest's `optimized` section records (contract/optimized.py); anywhere else the runtime loads
the plain graph and optimizes it in memory. Nothing is ever written into a model folder at load
time (it may be read-only, and a shared vision graph is hard-linked into two folders).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import onnx
from onnx import TensorProto

from ...errors import RagvlError
from ..contract import external_location, optimized_graph, optimized_key, optimized_record

PROVIDER = "CPUExecutionProvider"
LEVEL = "extended"
ALIGN = 4096  # page-aligned offsets, as onnx_builder writes them: onnxruntime memory-maps the weights
CHUNK = 16 << 20  # bytes compared, hashed or copied at a time: conversion memory stays bounded


def save_optimized(graph: Path, share: bool = True) -> Path:
    """Write onnxruntime's optimized copy of `graph` beside it; returns its path. `share`: its
    weights equal to the plain graph's are read from the plain graph's data file (`share_weights`);
    False writes them all again, as converters before it did (benchmarks compare the two)."""
    import onnxruntime as ort

    out = graph.with_name(optimized_graph(graph.name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(graph), so, providers=[PROVIDER])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RagvlError(f"{graph}: onnxruntime could not optimize the graph ({str(e).splitlines()[0]})") from None
    if share:
        share_weights(graph, out)
    return out


def key() -> str:
    """The `optimized.key` of graphs saved by this onnxruntime."""
    return optimized_key(PROVIDER)


def record() -> dict:
    """The manifest's `optimized` section for the copies this process saves ("graphs" to fill)."""
    return optimized_record(PROVIDER, LEVEL)


# -- external data ------------------------------------------------------------------------------


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor of `graph` that may hold external data, its subgraphs' included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def _point(t: TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v


def external_files(graph: Path) -> list[str]:
    """The data files (names in the graph's folder) that `graph`'s external tensors are read from."""
    model = onnx.load(str(graph), load_external_data=False)
    return sorted({w[0] for t in _tensors(model.graph) if (w := external_location(t))})


class _Files:
    """The folder's data files, opened for reading on first use and closed together. Read with
    pread, not memory-mapped: mapped pages would count as the converter's resident memory."""

    def __init__(self, folder: Path):
        self.folder, self.fds, self.sizes = folder, {}, {}

    def __enter__(self) -> "_Files":
        return self

    def __exit__(self, *exc) -> None:
        for fd in self.fds.values():
            os.close(fd)

    def chunks(self, where: tuple[str, int, int]) -> Iterator[bytes]:
        """The tensor's bytes, CHUNK at a time."""
        loc, off, n = where
        fd = self.fds.get(loc)
        path = self.folder / loc
        if fd is None:
            try:
                fd = self.fds[loc] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise RagvlError(f"{path}: cannot read the graph's external data ({e.strerror})") from None
            self.sizes[loc] = os.fstat(fd).st_size
        if off + n > self.sizes[loc]:
            raise RagvlError(f"{path}: a tensor ends past the end of the file (truncated?)")
        for i in range(off, off + n, CHUNK):
            yield os.pread(fd, min(CHUNK, off + n - i), i)

    def equal(self, a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
        return a[2] == b[2] and all(x == y for x, y in zip(self.chunks(a), self.chunks(b)))

    def digest(self, where: tuple[str, int, int]) -> bytes:
        h = hashlib.sha256()
        for c in self.chunks(where):
            h.update(c)
        return h.digest()


def share_weights(graph: Path, opt: Path) -> dict:
    """Rewrite the optimized copy `opt` of `graph` so that each external tensor equal to one of
    `graph`'s (same dtype, dims and bytes: a name alone proves nothing) is read from `graph`'s
    data file, and `opt`'s own data file holds only the others (removed when there are none).

    The tensor of the same name is tried first; a renamed one is found by the sha256 of the
    plain tensors of its dtype and dims (each hashed at most once). Tensors stream CHUNK bytes
    at a time. Returns {"shared": n, "shared_bytes", "own", "own_bytes"}.
    """
    folder = opt.parent
    plain = onnx.load(str(graph), load_external_data=False)
    model = onnx.load(str(opt), load_external_data=False)
    ref = {t.name: (t, w) for t in _tensors(plain.graph) if (w := external_location(t))}
    by_kind: dict[tuple, list[str]] = defaultdict(list)
    for name, (t, _) in ref.items():
        by_kind[(t.data_type, tuple(t.dims))].append(name)
    digests: dict[str, bytes] = {}
    data = opt.with_name(opt.name + ".data")
    tmp = data.with_name(f".{data.name}.{os.getpid()}.tmp")
    stats = {"shared": 0, "shared_bytes": 0, "own": 0, "own_bytes": 0}
    own: list[tuple[TensorProto, tuple[str, int, int]]] = []
    try:
        with _Files(folder) as files:
            for t in _tensors(model.graph):
                w = external_location(t)
                if w is None:
                    continue
                kind = (t.data_type, tuple(t.dims))
                same = ref.get(t.name)
                match = same[1] if same and (same[0].data_type, tuple(same[0].dims)) == kind and \
                    files.equal(w, same[1]) else None
                others = [n for n in by_kind.get(kind, ()) if n != t.name]
                if match is None and others:  # renamed by the optimizer, perhaps
                    mine = files.digest(w)
                    for name in others:
                        if name not in digests:
                            digests[name] = files.digest(ref[name][1])
                        if digests[name] == mine:
                            match = ref[name][1]
                            break
                if match is not None:
                    _point(t, *match)
                    stats["shared"] += 1
                    stats["shared_bytes"] += w[2]
                else:
                    own.append((t, w))
            if own:
                with open(tmp, "wb") as f:
                    for t, w in own:
                        f.write(b"\0" * (-f.tell() % ALIGN))
                        offset = f.tell()
                        for c in files.chunks(w):
                            f.write(c)
                        _point(t, data.name, offset, w[2])
                        stats["own"] += 1
                        stats["own_bytes"] += w[2]
        # the files are closed: the old data file can be replaced
        if own:
            os.replace(tmp, data)
        else:
            data.unlink(missing_ok=True)
        onnx.save(model, str(opt))  # the structure only: every tensor's bytes stay where they point
    finally:
        tmp.unlink(missing_ok=True)
    return stats
