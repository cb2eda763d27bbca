"""Results files: each bench script writes its tables to bench/results/<name>.md and its raw numbers
to bench/results/<name>.json; bench/assemble.py builds bench/README.md (and README.md's speed table)
from them, so no number in either README is typed by hand.

A results .md holds named tables, each introduced by a marker line ``<!-- table: NAME -->`` and
running to the next marker. NAME is ``<results name>.<table>``, e.g. ``qwen2vl.main``; the template
bench/README.template.md asks for a table with the same marker. Every table is preceded by a line
saying when, on what machine and with which options it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"  # one folder per CPU kind inside (cpu_kind()); results of unknown CPU at the top
MARKER = re.compile(r"^<!-- table: ([\w.-]+) -->\s*$")
# Children log against the parent's clock (BENCH_EPOCH) and say who they are (BENCH_TASK).
T_START = float(os.environ.get("BENCH_EPOCH", time.time()))
TASK = os.environ.get("BENCH_TASK", "")


def log(msg: str) -> None:
    """A progress line on stderr: who logs, and seconds since the run (its parent) started."""
    who = f"bench:{TASK}" if TASK else "bench"
    print(f"[{who} {time.time() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def fmt(v, spec: str = ".3f", suffix: str = "") -> str:
    """A table cell: "—" for a missing value, yes/no for a flag, text as it is, numbers by `spec`."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    return f"{v:{spec}}{suffix}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# The CPU kinds results are kept apart by: the widest feature onnxruntime's kernels dispatch on.
KIND_LABELS = {"amx_int8": "AMX + AVX-512 VNNI", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
               "asimddp": "ARM dot product", "avx512f": "AVX-512 without VNNI", "avx2": "AVX2 only"}


def cpu_kind() -> str:
    """This CPU's kind as a folder name, e.g. "avx2" or "amx_int8" (ragvl's own reading of it)."""
    from ragvl.models.contract import cpu_features

    return cpu_features().kind.split()[-1]


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _simd() -> str:
    """The widest vector extensions the CPU reports (what MLAS dispatches on)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ""
    have = set(flags.split(":", 1)[1].split())
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in have)


def _mem_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "ragvl", "bench",
                                ":!bench/results", ":!bench/README.md", ":!README.md"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def shown_in_readme(meta: dict) -> tuple[bool, str]:
    """Whether a run's figures may appear in README.md, and why not: a figure a user reads is the
    median of at least 3 runs (`meta["median_of"]`), or comes from a quiet run, whose 1-minute
    load average stayed below its thread count + 1 at start and end (more: other jobs shared
    the cores and the figure says more about them than about ragvl)."""
    if int(meta.get("median_of") or 1) >= 3:
        return True, ""
    threads = meta.get("threads") or (meta.get("host") or {}).get("cores") or 1
    loads = [x[0] for x in (meta.get("loadavg_start"), meta.get("loadavg_end")) if x]
    if not loads:
        return False, "its load average was not recorded"
    if max(loads) >= threads + 1:
        return False, f"load average {max(loads):.1f} with {threads} thread(s), a single run"
    return True, ""


class Run:
    """Provenance of one bench run: start time, machine, options, load average at start and end.

    Create it first thing in a script's main (the start load average is then the machine's state
    before the run), add tables, then :meth:`save`.
    """

    def __init__(self, script: str, name: str, argv: list[str] | None = None, threads: int | None = None):
        self.script, self.name = script, name
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.t0 = time.time()
        self.meta: dict[str, Any] = {
            "script": script,
            "argv": self.argv,
            "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.t0)),
            "host": {"cpu": cpu_model(), "kind": cpu_kind(), "cores": usable_cores(), "cpu_count": os.cpu_count(),
                     "simd": _simd(), "memory_gb": _mem_gb(), "platform": platform.platform(),
                     "python": platform.python_version()},
            "threads": threads,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "commit": _git_commit(),
        }
        self.tables: list[tuple[str, str]] = []

    def add(self, table: str, md: str) -> None:
        """A named table (Markdown, may include a heading line or notes)."""
        self.tables.append((f"{self.name}.{table}", md.strip() + "\n"))

    def caption(self) -> str:
        m, h = self.meta, self.meta["host"]
        opts = " ".join(m["argv"]) or "(defaults)"
        la0, la1 = m["loadavg_start"][0], m.get("loadavg_end", [None])[0]
        return (f"*Measured {m['started_utc']} ({m.get('duration_min', '?')} min) on {h['cpu']}, {h['cores']} cores "
                f"({h['simd']}), {m['threads']} thread(s); 1-min load average {la0} at start, {la1} at end "
                f"(the run itself adds up to its thread count; more means other jobs shared the cores); "
                f"`python bench/{self.script} {opts}`; "
                f"commit {m['commit']}.*")

    def save(self, raw: dict, out_dir: Path | None = None) -> tuple[Path, Path]:
        """Write <out_dir>/<name>.md (every table with its caption) and <name>.json (meta + raw);
        `out_dir` defaults to this CPU kind's folder of bench/results."""
        out_dir = Path(out_dir or RESULTS / cpu_kind())
        out_dir.mkdir(parents=True, exist_ok=True)
        self.meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        self.meta["duration_min"] = round((time.time() - self.t0) / 60, 1)
        cap = self.caption()
        parts = [f"<!-- Written by bench/{self.script}; do not edit: rerun it and bench/assemble.py. -->", ""]
        for name, md in self.tables:
            parts += [f"<!-- table: {name} -->", cap, "", md]
        md_path, json_path = out_dir / f"{self.name}.md", out_dir / f"{self.name}.json"
        md_path.write_text("\n".join(parts))
        json_path.write_text(json.dumps({"meta": self.meta, **raw}, indent=1, default=list) + "\n")
        print("\n".join(md for _, md in self.tables), flush=True)
        print(f"results: {md_path} and {json_path.name}", file=sys.stderr, flush=True)
        return md_path, json_path


def kinds(root: Path | None = None) -> list[str]:
    """The CPU kinds measured: the folders of bench/results (or `root`), AVX2 first."""
    root = Path(root or RESULTS)
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    order = list(KIND_LABELS)[::-1]
    return sorted(found, key=lambda k: (order.index(k) if k in order else len(order), k))


def read_tables(folder: Path | None = None) -> dict[str, str]:
    """{table name: Markdown} from every results .md in `folder` (default bench/results, the
    results of no recorded CPU kind; a kind's own are in its folder)."""
    tables: dict[str, str] = {}
    for f in sorted(Path(folder or RESULTS).glob("*.md")):
        name, buf = None, []
        for line in f.read_text().splitlines() + ["<!-- table: __end__ -->"]:
            m = MARKER.match(line)
            if m:
                if name:
                    tables[name] = "\n".join(buf).strip() + "\n"
                name, buf = m.group(1), []
            elif name:
                buf.append(line)
    return tables


def read_json(name: str, folder: Path | None = None) -> dict | None:
    p = Path(folder or RESULTS) / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def default_results_dir(config: str, work: Path) -> Path:
    """This CPU kind's folder of bench/results for the 2B shape (what the README shows);
    <work>/results for other configs (a tiny run checks the harness, its numbers mean nothing)."""
    return RESULTS / cpu_kind() if config == "2b" else Path(work) / "results"
