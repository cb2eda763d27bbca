#!/usr/bin/env python
"""Which int8 kernel is fast and exact on this CPU? One Linear at the 2B shapes, every layout.

For (M x 1536) @ (1536 x 8960) (the language model's gate/up at a 921-token prefill, and one
decode row) and (2944 x 1280) @ (1280 x 5120) (the vision tower's fc1 at a 1024x683 page), it
times, in one onnxruntime session each, warm, best of `--reps`:

* fp32 MatMul; MatMulNBits int8 (blocks of 64, accuracy level 4) and int4 (blocks of 128);
* MatMulInteger in each rows-kernel layout (ragvl/models/runtime/int8.py): u8u8 (as stored),
  u8s7 (7-bit weights), u8s8 (int8 weights), on activations already quantized,

and checks each MatMulInteger against numpy's exact product on full-range weights, 8 rows (exact
or not on this CPU: u8s8 is exact only with an integer dot product). Writes
bench/results/int8_kernels.md and .json; the CPU's features are in the caption.

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--reps", type=int, default=5, help="timed runs of each kernel (the best is kept)")
    return p


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
        cells = {}
        for fmt in ("fp32", "int8", "int4"):
            node, inits = _linear_node("A", "Y", k, n, fmt, "W")
            model = _model([node], [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                           [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], inits)
            t = _best(_bound_run(_session(model, args.threads), {"A": x}), args.reps)
            cells[{"fp32": "fp32 MatMul", "int8": "MatMulNBits int8", "int4": "MatMulNBits int4"}[fmt]] = (t, None)
        for kernel in ("u8u8", "u8s7", "u8s8"):
            model, wk = integer_model(q, kernel)
            sess = _session(model, args.threads)
            # exactness on 8 rows (numpy's int64 matmul has no BLAS: the whole product takes minutes);
            # float64 holds these sums (< 2^53) exactly and is fast
            ref = (a[:8].astype(np.float64) - 128) @ (wk.astype(np.float64) - (128 if kernel == "u8u8" else 0))
            exact = bool(np.array_equal(sess.run(None, {"A": a[:8]})[0].astype(np.float64), ref))
            cells[f"MatMulInteger {kernel}"] = (_best(_bound_run(sess, {"A": a}), args.reps), exact)
        fp32 = cells["fp32 MatMul"][0]
        for name, (t, exact) in cells.items():
            raw.append({"shape": label, "m": m, "k": k, "n": n, "kernel": name, "best_s": t,
                        "gops": 2 * m * k * n / t / 1e9, "exact": exact})
            rows.append(f"| {label} | {m} x {k} x {n} | {name} | {2 * m * k * n / t / 1e9:,.0f} | {fp32 / t:.2f}x | "
                        f"{'—' if exact is None else ('yes' if exact else '**no**')} |")
    cpu = cpu_features()
    table = ("Each Linear alone, warm, best of the runs; GOP/s counts 2·M·K·N; `exact`: the int32 result equals "
             f"numpy's exact product on full-range weights (8 rows). This CPU: {cpu.model} ({cpu.kind}); "
             f"ragvl chooses `{cpu.as_dict()['int8_kernel']}` here.\n\n"
             "| shape | M x K x N | kernel | GOP/s | vs fp32 | exact |\n|---|---|---|---|---|---|\n" + "\n".join(rows))
    run.add("main", table)
    run.save({"cpu": cpu.as_dict(), "rows": raw})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
