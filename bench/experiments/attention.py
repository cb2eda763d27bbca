#!/usr/bin/env python
"""Which attention is fastest on this CPU? onnxruntime's fused operators against MatMul + Softmax,
at the 2B shapes the graphs run.

* vision tower, one 1024x683 page (2,944 patches, 16 heads of 80): MatMul + Softmax (the full
  N x N scores) against MultiHeadAttention (what the converter writes, `fused_attention`) and
  ONNX's own Attention (opset 24);
* the answerer's decoder (12 query heads, 2 KV heads of 128), prefills of 934 and 2,537 tokens
  (one and three pages) and one decode step after each: ragvl's MatMul graph (the query heads
  of one KV head stacked along the sequence, MatMul + mask + Softmax) against
  GroupQueryAttention (com.microsoft, which applies the causal mask itself; what the converter
  writes for a prefill) and ONNX's Attention.

Each variant is one small graph of just the attention (inputs already projected and rotated),
timed warm in its own session, best of `--reps`; outputs are compared with each other (max
abs difference) so a faster variant that computes something else shows. Writes
bench/results/<cpu kind>/attention.md and .json.

    python bench/experiments/attention.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from results import Run  # noqa: E402

NAME = "attention"
F32 = 1  # TensorProto.FLOAT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--reps", type=int, default=5, help="timed runs of each variant (the best is kept)")
    return p


def _io(name, dtype, shape):
    from onnx import helper
    return helper.make_tensor_value_info(name, dtype, shape)


def _c(name, value):
    from onnx import numpy_helper
    return numpy_helper.from_array(np.asarray(value), name)


def vision_graphs(n: int, heads: int, hd: int):
    """(name, model) for each vision variant; inputs q, k, v (1, N, heads*hd)."""
    from onnx import helper
    d = heads * hd
    ins = [_io(x, F32, [1, n, d]) for x in "qkv"]
    out = [_io("o", F32, [1, n, d])]
    mha = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=heads,
                           scale=hd ** -0.5)
    nodes = []
    for x in "qkv":  # (1, N, d) -> (1, heads, N, hd)
        nodes += [helper.make_node("Reshape", [x, "split"], [x + "4"]),
                  helper.make_node("Transpose", [x + "4"], [x + "h"], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["qh", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s"]),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vh"], ["oh"]),
              helper.make_node("Transpose", ["oh"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merge"], ["o"])]
    inits = [_c("split", np.array([1, n, heads, hd], np.int64)), _c("merge", np.array([1, n, d], np.int64)),
             _c("scale", np.float32(hd ** -0.5))]
    onnx_att = helper.make_node("Attention", ["q", "k", "v"], ["o"], q_num_heads=heads, kv_num_heads=heads,
                                scale=hd ** -0.5)
    return [("MatMul + Softmax", _model(nodes, ins, out, inits)), ("MultiHeadAttention", _model([mha], ins, out, [])),
            ("Attention (ONNX opset 24)", _model([onnx_att], ins, out, []))]


def decoder_graphs(s: int, past: int, nh: int, nkv: int, hd: int):
    """(name, model) for each decoder variant over `s` new tokens after `past` cached ones;
    inputs q (1, S, nh*hd), k / v (1, S, nkv*hd), past_k / past_v (1, nkv, P, hd)."""
    from onnx import helper
    t = past + s
    ins = [_io("q", F32, [1, s, nh * hd]), _io("k", F32, [1, s, nkv * hd]), _io("v", F32, [1, s, nkv * hd]),
           _io("past_k", F32, [1, nkv, past, hd]), _io("past_v", F32, [1, nkv, past, hd])]
    out = [_io("o", F32, [1, s, nh * hd])]
    # ragvl's graph (converter/decoder_graph.py _attention)
    nodes = [helper.make_node("Reshape", ["q", "q4"], ["qr"]), helper.make_node("Transpose", ["qr"], ["qh"], perm=[0, 2, 1, 3]),
             helper.make_node("Mul", ["qh", "scale"], ["qs"]), helper.make_node("Reshape", ["qs", "qg_shape"], ["qg"])]
    for x in "kv":
        nodes += [helper.make_node("Reshape", [x, "kv4"], [x + "r"]),
                  helper.make_node("Transpose", [x + "r"], [x + "h"], perm=[0, 2, 1, 3]),
                  helper.make_node("Concat", ["past_" + x, x + "h"], [x + "c"], axis=2)]
    nodes += [helper.make_node("Transpose", ["kc"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["qg", "kt"], ["sg"]), helper.make_node("Reshape", ["sg", "s_shape"], ["s0"]),
              helper.make_node("Add", ["s0", "bias"], ["s1"]), helper.make_node("Softmax", ["s1"], ["p0"], axis=-1),
              helper.make_node("Reshape", ["p0", "pg_shape"], ["pg"]), helper.make_node("MatMul", ["pg", "vc"], ["og"]),
              helper.make_node("Reshape", ["og", "oh_shape"], ["oh"]),
              helper.make_node("Transpose", ["oh"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "o_shape"], ["o"])]
    causal = np.where(np.arange(t)[None, :] <= np.arange(past, t)[:, None], 0, np.finfo(np.float32).min)
    inits = [_c("q4", np.array([1, s, nh, hd], np.int64)), _c("kv4", np.array([1, s, nkv, hd], np.int64)),
             _c("qg_shape", np.array([1, nkv, -1, hd], np.int64)), _c("s_shape", np.array([1, nh, s, t], np.int64)),
             _c("pg_shape", np.array([1, nkv, -1, t], np.int64)), _c("oh_shape", np.array([1, nh, s, hd], np.int64)),
             _c("o_shape", np.array([1, s, nh * hd], np.int64)), _c("scale", np.float32(hd ** -0.5)),
             _c("bias", causal.astype(np.float32)[None, None])]
    gqa = helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total_len"],
                           ["o", "present_k", "present_v"], domain="com.microsoft", num_heads=nh, kv_num_heads=nkv,
                           scale=hd ** -0.5)
    g_inits = [_c("seqlens_k", np.array([t - 1], np.int32)), _c("total_len", np.int32(t))]
    onnx_att = helper.make_node("Attention", ["q", "k", "v", "mask", "past_k", "past_v"], ["o", "present_k", "present_v"],
                                q_num_heads=nh, kv_num_heads=nkv, scale=hd ** -0.5)
    return [("MatMul + Softmax (ragvl's decoder)", _model(nodes, ins, out, inits)),
            ("GroupQueryAttention", _model([gqa], ins, out, g_inits)),
            ("Attention (ONNX opset 24)", _model([onnx_att], ins, out, [_c("mask", causal.astype(np.float32))]))]


def _model(nodes, ins, outs, inits):
    from machine import _model as model
    return model(nodes, ins, outs, inits, opset=24)  # ONNX's Attention is opset 23+


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = Run("experiments/attention.py", NAME, threads=args.threads)
    from machine import _best, _bound_run, _session

    rng = np.random.default_rng(0)
    cases = [("vision, 1 page", dict(n=2944, heads=16, hd=80), vision_graphs),
             ("decoder prefill, 934 tokens", dict(s=934, past=0, nh=12, nkv=2, hd=128), decoder_graphs),
             ("decoder step after 934", dict(s=1, past=934, nh=12, nkv=2, hd=128), decoder_graphs),
             ("decoder prefill, 2537 tokens (3 pages)", dict(s=2537, past=0, nh=12, nkv=2, hd=128), decoder_graphs),
             ("decoder step after 2537", dict(s=1, past=2537, nh=12, nkv=2, hd=128), decoder_graphs)]
    rows, raw = [], []
    for label, shape, build in cases:
        if build is vision_graphs:
            d = shape["heads"] * shape["hd"]
            feeds = {x: rng.standard_normal((1, shape["n"], d), dtype=np.float32) for x in "qkv"}
            flops = 4 * shape["n"] ** 2 * d
        else:
            s, p, nh, nkv, hd = (shape[x] for x in ("s", "past", "nh", "nkv", "hd"))
            feeds = {"q": rng.standard_normal((1, s, nh * hd), dtype=np.float32),
                     "k": rng.standard_normal((1, s, nkv * hd), dtype=np.float32),
                     "v": rng.standard_normal((1, s, nkv * hd), dtype=np.float32),
                     "past_k": rng.standard_normal((1, nkv, p, hd), dtype=np.float32),
                     "past_v": rng.standard_normal((1, nkv, p, hd), dtype=np.float32)}
            flops = 4 * s * (p + s) * nh * hd  # every score computed, as ragvl's graph does
        outs, times = {}, {}
        for name, model in build(**shape):
            sess = _session(model, args.threads)
            outs[name] = sess.run(["o"], feeds)[0]
            times[name] = _best(_bound_run(sess, feeds), args.reps)
        first = next(iter(outs))
        for name, t in times.items():
            diff = float(np.abs(outs[name] - outs[first]).max())
            raw.append({"case": label, "variant": name, "best_s": t, "gflops": flops / t / 1e9, "max_abs_diff": diff})
            rows.append(f"| {label} | {name} | {t * 1e3:,.2f} | {flops / t / 1e9:,.0f} | {times[first] / t:.2f}x | "
                        f"{diff:.1e} |")
    table = ("Attention alone (inputs projected and rotated), warm, best of the runs; GFLOP/s counts every score "
             "(QK^T and PV over all heads, the full square before masking); speed-up and difference against the "
             "first variant of each case.\n\n| case | variant | ms | GFLOP/s | speed-up | max abs diff |\n"
             "|---|---|---|---|---|---|\n" + "\n".join(rows))
    run.add("main", table)
    run.save({"rows": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
