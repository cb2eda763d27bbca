#!/usr/bin/env python
"""Which int8 kernel is fast and exact on this CPU? One Linear at the 2B shapes, every layout.

For (M x 1536) @ (1536 x 8960) (the language model's gate/up at a 921-token prefill, and one
decode row) and (2944 x 1280) @ (1280 x 5120) (the vision tower's fc1 at a 1024x683 page), it
times, in one onnxruntime session each, warm, best of `--reps`:

* fp32 MatMul; MatMulNBits int8 (blocks of 64, accuracy level 4) and int4 (blocks of 128);
* MatMulInteger in each rows-kernel layout (ragvl/models/runtime/int8.py): u8u8 (as stored),
  u8s7 (7-bit weights), u8s8 (int8 weights), on activations already quantized, and u8u8 with
  the decoder's stored (N, K) blocks as the first operand, W @ x^T (how an AVX2 CPU prefills
  with them: no transposed copy; the two transposes around it are timed too),

and checks each MatMulInteger against numpy's exact product on full-range weights, 8 rows (exact
or not on this CPU: u8s8 is exact only with an integer dot product). A one-row product reads
each weight once, as a decode step does from memory: it is timed over copies of the weight at
distinct addresses (at least `COLD_BYTES` in all, far past the last-level cache) and reported
per copy; one weight run again and again would be timed from the cache. Writes
bench/results/<cpu kind>/int8_kernels.md and .json; the CPU's features are in the caption.

    python bench/experiments/int8_kernels.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent  # results.py, machine.py
sys.path.insert(0, str(BENCH))
from results import Run  # noqa: E402

NAME = "int8_kernels"
SHAPES = [("prefill gate/up", 921, 1536, 8960), ("decode gate/up", 1, 1536, 8960), ("vision fc1", 2944, 1280, 5120)]
COLD_BYTES = 400e6  # one-row products read this many weight bytes per timed run


def copies(m: int, nbytes: int) -> int:
    """How many distinct copies of a weight of `nbytes` one timed run multiplies (1 for many rows)."""
    return 1 if m > 1 else max(1, int(-(-COLD_BYTES // nbytes)))


def replicate(node, init: list, r: int):
    """`r` copies of one node and its initializers, each with its own weights and output:
    (nodes, initializers, output names); every copy reads the same input, and its weights hold
    the same values at other places (machine.distinct: equal copies would be timed from the
    cache)."""
    from machine import distinct
    from onnx import numpy_helper

    nodes, inits, outs = [], [], []
    arrays = {t.name: numpy_helper.to_array(t) for t in init}
    for i in range(r):
        rename = {t.name: f"{t.name}#{i}" for t in init}
        c = type(node)()
        c.CopyFrom(node)
        c.input[:] = [rename.get(x, x) for x in node.input]
        c.output[:] = [f"{o}#{i}" for o in node.output]
        nodes.append(c)
        outs += list(c.output)
        inits += [numpy_helper.from_array(distinct(arrays[t.name], i), rename[t.name]) for t in init]
    return nodes, inits, outs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--reps", type=int, default=5, help="timed runs of each kernel (the best is kept)")
    return p


def blocks_first_model(q: np.ndarray):
    """u8u8 with the stored blocks first, as runtime/int8.py `_prefill_as_rows` runs it:
    x (M, K) -> x^T -> W (N, K) @ x^T -> (N, M) -> transposed back (M, N)."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = q.shape
    inits = [numpy_helper.from_array(np.ascontiguousarray(q.T), "W"), numpy_helper.from_array(np.uint8(128), "zp")]
    nodes = [helper.make_node("Transpose", ["A"], ["At"], perm=[1, 0]),
             helper.make_node("MatMulInteger", ["W", "At", "zp", "zp"], ["Yt"]),
             helper.make_node("Transpose", ["Yt"], ["Y"], perm=[1, 0])]
    g = helper.make_graph(nodes, "k", [helper.make_tensor_value_info("A", TensorProto.UINT8, ["m", k])],
                          [helper.make_tensor_value_info("Y", TensorProto.INT32, ["m", n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), q


def integer_model(q: np.ndarray, kernel: str):
    """MatMulInteger over activations already quantized, with `kernel`'s weights (K, N)."""
    from onnx import TensorProto, helper, numpy_helper

    from ragvl.models.runtime.int8 import derive_weight

    k, n = q.shape
    w = q if kernel == "u8u8" else derive_weight(q, kernel)
    inputs = ["A", "W", "azp"] + (["bzp"] if kernel == "u8u8" else [])
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.uint8(128), "azp")]
    if kernel == "u8u8":
        inits.append(numpy_helper.from_array(np.uint8(128), "bzp"))
    g = helper.make_graph([helper.make_node("MatMulInteger", inputs, ["Y"])], "k",
                          [helper.make_tensor_value_info("A", TensorProto.UINT8, ["m", k])],
                          [helper.make_tensor_value_info("Y", TensorProto.INT32, ["m", n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), w


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = Run("experiments/int8_kernels.py", NAME, threads=args.threads)
    from machine import _best, _bound_run, _linear_node, _model, _session
    from onnx import TensorProto, helper

    from ragvl.models.contract import cpu_features
    from ragvl.models.converter.quantize import quantize_columns

    rng = np.random.default_rng(0)
    rows, raw = [], []
    for label, m, k, n in SHAPES:
        w = rng.standard_normal((n, k), dtype=np.float32) * 0.02
        q, _ = quantize_columns(w)
        x = rng.standard_normal((m, k), dtype=np.float32)
        a = rng.integers(1, 256, (m, k), dtype=np.uint8)
        variants = []  # (name, model, feeds, exact, copies)
        for fmt in ("fp32", "int8", "int4"):
            node, inits = _linear_node("A", "Y", k, n, fmt, "W")
            r = copies(m, sum(len(t.raw_data) for t in inits))
            nodes, inits, outs = replicate(node, inits, r)
            model = _model(nodes, [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                           [helper.make_tensor_value_info(o, TensorProto.FLOAT, [m, n]) for o in outs], inits)
            name = {"fp32": "fp32 MatMul", "int8": "MatMulNBits int8", "int4": "MatMulNBits int4"}[fmt]
            variants.append((name, model, {"A": x}, None, r))
        for kernel in ("u8u8", "u8u8 stored blocks first", "u8s7", "u8s8"):
            if kernel.endswith("first") and m == 1:  # one row runs MatMulNBits there
                continue
            model, wk = blocks_first_model(q) if kernel.endswith("first") else integer_model(q, kernel)
            # exactness on 8 rows (numpy's int64 matmul has no BLAS: the whole product takes minutes);
            # float64 holds these sums (< 2^53) exactly and is fast
            ref = (a[:8].astype(np.float64) - 128) @ (wk.astype(np.float64) - (128 if kernel.startswith("u8u8") else 0))
            exact = bool(np.array_equal(_session(model, args.threads).run(None, {"A": a[:8]})[0].astype(np.float64), ref))
            r = copies(m, wk.nbytes)
            if r > 1:
                g = model.graph
                nodes, inits, outs = replicate(g.node[0], list(g.initializer), r)
                model = _model(nodes, list(g.input), [helper.make_tensor_value_info(o, TensorProto.INT32, [m, n])
                                                      for o in outs], inits)
            variants.append((f"MatMulInteger {kernel}", model, {"A": a}, exact, r))
        # Two rounds, the second in reverse order, best of both: on this shared machine a variant
        # timed late in a process was seen at half its speed once in a while.
        best: dict[str, float] = {}
        for order in (variants, variants[::-1]):
            for name, model, feeds, _, r in order:
                t = _best(_bound_run(_session(model, args.threads), feeds), args.reps) / r
                best[name] = min(best.get(name, t), t)
        cells = {name: (best[name], exact, r) for name, _, _, exact, r in variants}
        del variants
        fp32 = cells["fp32 MatMul"][0]
        for name, (t, exact, r) in cells.items():
            raw.append({"shape": label, "m": m, "k": k, "n": n, "kernel": name, "best_s": t,
                        "gops": 2 * m * k * n / t / 1e9, "exact": exact, "weight_copies": r})
            rows.append(f"| {label} | {m} x {k} x {n} | {name} | {2 * m * k * n / t / 1e9:,.0f} | {fp32 / t:.2f}x | "
                        f"{'—' if exact is None else ('yes' if exact else '**no**')} | {r} |")
    cpu = cpu_features()
    table = ("Each Linear alone, warm, best of the runs; GOP/s counts 2·M·K·N; `exact`: the int32 result equals "
             f"numpy's exact product on full-range weights (8 rows); `copies`: distinct copies of the weight one "
             f"run multiplies, one after the other (a single row reads each weight from memory, as a decode step "
             f"does; the time is per copy). This CPU: {cpu.model} ({cpu.kind}); "
             f"ragvl chooses `{cpu.as_dict()['int8_kernel']}` here.\n\n"
             "| shape | M x K x N | kernel | GOP/s | vs fp32 | exact | copies |\n|---|---|---|---|---|---|---|\n"
             + "\n".join(rows))
    run.add("main", table)
    run.save({"cpu": cpu.as_dict(), "rows": raw})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
