"""The long fuzz run of ingestion: mutated real PDFs and images through validation and rendering.

    python scripts/fuzz_ingest.py --seconds 600 --out /tmp/fuzz-out

Each execution mutates one seed (sample_pdfs/ and PDFs/images built by tests/fuzz_pdfs.py) with a
few random structure-aware mutations and runs `check_file` on it in a long-lived child process,
so that a MuPDF crash or hang is recorded instead of ending the run. Outcomes: rendered, refused
(one-line RagvlError), pages skipped (one-line causes), and the findings: bug (anything else,
with its traceback), crash (the child died), hang (no answer within --timeout). Each finding's
input is written to --out with its mutation list; the last line printed is a JSON summary.
Deterministic for a given --seed and execution count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fuzz_pdfs import OPS, apply_mutations, check_file, seed_corpus  # noqa: E402


def draw_mutations(rng: random.Random) -> list[tuple]:
    """1-6 mutations, drawn like the hypothesis strategy in tests/test_fuzz_ingest.py."""
    return [(rng.choice(OPS), rng.random(), rng.randrange(1 << 16), rng.randbytes(rng.randrange(17)))
            for _ in range(rng.randint(1, 6))]


def _child(conn, workdir: str) -> None:
    while True:
        try:
            name, data = conn.recv()
        except EOFError:
            return
        path = Path(workdir) / f"fuzz-{name}"
        path.write_bytes(data)
        try:
            causes: list[str] = []
            conn.send(("ok", (check_file(path, causes=causes), causes)))
        except BaseException:  # noqa: BLE001 - every escape is the finding
            conn.send(("bug", traceback.format_exc()))


class Child:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("fork")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child_conn, self.workdir), daemon=True)
        self.proc.start()
        child_conn.close()

    def run(self, name: str, data: bytes, timeout: float) -> tuple[str, str]:
        self.conn.send((name, data))
        if not self.conn.poll(timeout):
            self.restart()
            return "hang", f"no answer within {timeout} s"
        try:
            return self.conn.recv()  # ("ok", (outcome, causes)) or ("bug", traceback)
        except EOFError:
            code = self.restart()
            return "crash", f"child died (exit code {code})"

    def restart(self) -> int | None:
        self.proc.kill()
        self.proc.join()
        code = self.proc.exitcode
        self.start()
        return code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300, help="stop after this long (default 300)")
    ap.add_argument("--execs", type=int, default=0, help="stop after this many executions (0: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20, help="seconds per execution before it is a hang")
    ap.add_argument("--out", type=Path, default=Path("fuzz-findings"), help="folder for the findings")
    args = ap.parse_args()

    seeds = seed_corpus(ROOT)
    rng = random.Random(args.seed)
    counts: Counter[str] = Counter()
    causes: Counter[str] = Counter()  # files per cause of a refusal or a skipped page
    findings = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        child = Child(workdir)
        n = 0
        while time.monotonic() - t0 < args.seconds and (not args.execs or n < args.execs):
            name, data = seeds[rng.randrange(len(seeds))]
            mutations = draw_mutations(rng)
            status, detail = child.run(name, apply_mutations(data, mutations), args.timeout)
            n += 1
            if status == "ok":
                detail, found = detail
                causes.update(set(found))
            counts[detail if status == "ok" else status] += 1
            if status != "ok":
                args.out.mkdir(parents=True, exist_ok=True)
                stem = f"{status}-{n:06d}-{name}"
                (args.out / stem).write_bytes(apply_mutations(data, mutations))
                (args.out / f"{stem}.json").write_text(json.dumps(
                    {"seed_file": name, "mutations": [(o, w, k, p.hex()) for o, w, k, p in mutations],
                     "status": status, "detail": detail}, indent=1))
                findings.append(stem)
                print(f"{status}: {stem}\n{detail}", file=sys.stderr, flush=True)
            if n % 200 == 0:
                print(f"{n} executions, {time.monotonic() - t0:.0f} s: {dict(counts)}", file=sys.stderr, flush=True)
        child.proc.kill()
    print(json.dumps({"executions": n, "seconds": round(time.monotonic() - t0, 1), "seed": args.seed,
                      "outcomes": dict(counts), "causes": dict(causes.most_common()), "findings": findings}))


if __name__ == "__main__":
    main()
