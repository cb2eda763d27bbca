"""What onnxruntime's optimized copy of a graph was made with, and whether this process may load it.

onnxruntime's graph-optimization guide asks that a model optimized offline run with the same
options and on the same hardware it was optimized for. The converter records in the manifest's
`optimized` section what it ran (`optimized_record`): the onnxruntime version, the provider,
the level and this CPU's kind and features (cpu.py). At load `optimized_status` compares that
with the running process; on any difference the plain graph is loaded and optimized in memory
instead (a model folder is never written at load), and the reason says what differed.

A folder converted before the CPU was recorded carries only {"key": ..., "graphs": ...}: its
copies are loaded by the same onnxruntime version and provider, as they always were.
"""

from __future__ import annotations

from .cpu import cpu_features
from .names import optimized_key


def optimized_record(provider: str, level: str) -> dict:
    """The manifest's `optimized` section for copies this process saves (its "graphs" still empty)."""
    import onnxruntime as ort

    cpu = cpu_features()
    return {"key": optimized_key(provider), "onnxruntime": ort.__version__, "provider": provider, "level": level,
            "cpu": {"kind": cpu.kind, "features": list(cpu.features)}, "graphs": {}}


def _same_run(a: dict, b: dict) -> bool:
    """Whether two records describe the same onnxruntime, provider, level and CPU."""
    keys = ("key", "onnxruntime", "provider", "level")
    return all(a.get(k) == b.get(k) for k in keys) and (a.get("cpu") or {}) == (b.get("cpu") or {})


def same_optimizer(record: dict | None, provider: str, level: str) -> bool:
    """Whether copies recorded as `record` are what this process would save (so may be reused)."""
    return bool(record) and "onnxruntime" in record and _same_run(record, optimized_record(provider, level))


def _made_by(record: dict, level: bool = True, features: bool = False) -> str:
    """E.g. "onnxruntime 1.32.0 (CPU, extended) on x86_64 avx2", the features listed on request."""
    cpu = record.get("cpu") or {}
    provider = str(record.get("provider", "?")).removesuffix("ExecutionProvider")
    how = f"{provider}, {record.get('level', '?')}" if level else provider
    listed = f" [{' '.join(cpu.get('features', []))}]" if features else ""
    return f"onnxruntime {record.get('onnxruntime', '?')} ({how}) on {cpu.get('kind', 'an unrecorded CPU')}{listed}"


def optimized_status(manifest: dict, provider: str) -> tuple[bool, str]:
    """(whether the folder's optimized copies may be loaded here for `provider`, why), the reason
    one line for `--json` output, e.g. "optimized by onnxruntime 1.31.0 (CPU, extended) on x86_64
    avx512_vnni; this is onnxruntime 1.32.0 (CPU) on x86_64 avx2: optimized at load"."""
    record = manifest.get("optimized") or {}
    if not record.get("graphs"):
        return False, "converted without optimized copies: optimized at load"
    mismatch = f"optimized by {record.get('key')}; this is {optimized_key(provider)}: optimized at load"
    if "onnxruntime" not in record:  # a folder converted before the CPU was recorded
        if record.get("key") == optimized_key(provider):
            return True, f"optimized at conversion by {record['key']} (CPU not recorded then)"
        return False, mismatch
    here = optimized_record(provider, record.get("level", ""))
    if _same_run(record, here):
        return True, f"optimized at conversion by {_made_by(record)}, as here"
    if _made_by(record, False, True) == _made_by(here, False, True):  # only the key differs
        return False, mismatch
    # CPUs of one kind may still differ in a feature: then the features say which
    listed = _made_by(record, False) == _made_by(here, False)
    return False, (f"optimized by {_made_by(record, True, listed)}; this is {_made_by(here, False, listed)}: "
                   "optimized at load")
