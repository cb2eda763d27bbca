"""What this CPU can multiply in integers, and so which int8 kernel a graph runs with here.

onnxruntime's MatMulInteger (MLAS) multiplies uint8 activations by int8 weights with the CPU's
integer dot-product instructions where it has them: AVX-512 VNNI, AVX-VNNI, AMX on x86, the
dot-product instructions on ARM. Those sum u8 x s8 products straight into int32, so the result
is exact. An AVX2 CPU without them sums each pair of u8 x s8 products in a saturating int16
first (vpmaddubsw): 255 x 127 x 2 overflows it, so full 8-bit weights are not exact there.

The int8 kernels, for one stored layout (uint8 = int8 + 128, zero point 128; quantize.py):

* ``u8s8``: int8 weights (the stored bytes minus 128: exact), where the CPU has a dot product.
  Chosen there.
* ``u8u8``: the stored layout itself, exact on every CPU (MLAS widens u8 x u8 to 16 bits
  before it adds). Chosen on AVX2 CPUs without a dot product: the same numbers as u8s8.
* ``u8s7``: the weights halved to 7 bits (|q| <= 64, scales doubled), so no pair of products
  can reach int16's limit (255 x 64 x 2 = 32,640 < 32,767) and AVX2's fast u8 x s8 kernel
  stays exact; it costs a bit of weight precision (on the tiny test model the minimum cosine
  of a page vector to fp32's falls from 0.99 to 0.97), so it is never chosen by itself: set
  RAGVL_INT8_KERNEL=u8s7 on an AVX2 CPU to trade that for its speed
  (bench/results/int8_kernels.md).

`RAGVL_INT8_KERNEL` names one of them to override the choice (tests run every path this way).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass

from ...errors import RagvlError

INT8_KERNELS = ("u8s8", "u8s7", "u8u8")
ENV_KERNEL = "RAGVL_INT8_KERNEL"

# Flag names as Linux's /proc/cpuinfo spells them, in the order a summary lists them.
X86_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve")
# Any of these: u8 x s8 is summed exactly into int32 by the CPU.
INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU this process runs on: its model name, architecture and the features ragvl uses."""

    model: str
    arch: str  # platform.machine(): x86_64, aarch64, arm64, AMD64
    features: tuple[str, ...]  # of X86_FEATURES / ARM_FEATURES, in their order

    @property
    def int8_dot(self) -> str | None:
        """The integer dot-product feature onnxruntime can use here (None: AVX2 or less)."""
        return next((f for f in INT8_DOT if f in self.features), None)

    @property
    def kind(self) -> str:
        """A short name for the CPU kind, e.g. 'x86_64 avx512_vnni' or 'x86_64 avx2'."""
        best = self.int8_dot or next((f for f in ("avx512f", "avx2", "asimd") if f in self.features), "baseline")
        return f"{self.arch} {best}"

    def as_dict(self) -> dict:
        return {"model": self.model, "arch": self.arch, "features": list(self.features), "kind": self.kind,
                "int8_kernel": best_int8_kernel(self)}


def _linux_cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once per process)."""
    arch = platform.machine() or "unknown"
    model, flags = "", set()
    if platform.system() == "Linux":
        model, flags = _linux_cpuinfo()
    elif platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
        if arch == "arm64":  # every Apple silicon CPU has NEON; the others are reported by sysctl
            flags = {"asimd"} | {f for f, key in (("asimddp", "hw.optional.arm.FEAT_DotProd"),
                                                   ("i8mm", "hw.optional.arm.FEAT_I8MM")) if _sysctl(key) == "1"}
    names = X86_FEATURES if arch.lower() in ("x86_64", "amd64", "i686") else ARM_FEATURES
    return CpuFeatures(model or platform.processor() or "unknown", arch, tuple(f for f in names if f in flags))


def best_int8_kernel(cpu: CpuFeatures | None = None) -> str:
    """The int8 kernel for `cpu` (this one by default) that is exact there and fastest."""
    cpu = cpu or cpu_features()
    return "u8s8" if cpu.int8_dot else "u8u8"


def int8_kernel() -> str:
    """The int8 kernel graphs run with in this process: `RAGVL_INT8_KERNEL`, else this CPU's best."""
    name = os.environ.get(ENV_KERNEL, "").strip()
    if not name:
        return best_int8_kernel()
    if name not in INT8_KERNELS:
        raise RagvlError(f"{ENV_KERNEL}={name}: expected one of {', '.join(INT8_KERNELS)}")
    return name


def stored_blocks_first(kernel: str | None = None) -> bool:
    """Whether the decoder's column-scaled MatMulNBits multiply many rows by the rows kernel over
    the stored blocks, as MatMulInteger's first operand (W @ x^T), and one row as stored: u8u8
    (runtime/int8.py `_prefill_as_rows`). Elsewhere the rows kernel's weights are derived at
    load and run every row count."""
    return (kernel or int8_kernel()) == "u8u8"


def column_scaled_blocks(manifest: dict, graph: str) -> bool:
    """Whether `graph` stores the rows kernel's numbers in MatMulNBits' blocks (the int8
    answerer's decoder, quantize.quantize_column_blocks): the graphs runtime/int8.py rewrites
    for this CPU even on u8u8."""
    f = (manifest.get("weight_format") or {}).get(graph) or {}
    return f.get("kernel") == "nbits" and f.get("weights") == "per output column" and graph != "embed"


def graph_kernels(manifest: dict, kernel: str | None = None) -> dict[str, str]:
    """What each graph of a converted folder multiplies with on this machine, e.g.
    {"vision": "int8 u8s7 (MatMulInteger)", "embed": "int8 blocks of 64 (GatherBlockQuantized)"}.
    `kernel`: the rows kernel (default: `int8_kernel()`)."""
    kernel = kernel or int8_kernel()
    formats = manifest.get("weight_format") or {}
    out = {}
    for graph in manifest.get("graphs", {}):
        f = formats.get(graph)
        gather = graph == "embed"
        if not f:
            out[graph] = "fp32 (Gather)" if gather else "fp32 (MatMul)"
        elif f.get("kernel") == "rows":
            out[graph] = f"int8 {kernel} (MatMulInteger)"
        elif column_scaled_blocks(manifest, graph):  # rewritten at load (runtime/int8.py)
            out[graph] = (f"int8 {kernel} (MatMulInteger) for many rows, blocks of {f['block_size']} "
                          "(MatMulNBits) for one" if stored_blocks_first(kernel) else f"int8 {kernel} (MatMulInteger)")
        else:
            out[graph] = (f"int{f['bits']} blocks of {f['block_size']} "
                          f"({'GatherBlockQuantized' if gather else 'MatMulNBits'})")
    return out
