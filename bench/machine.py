"""This machine's physical floors, measured with onnxruntime the way ragvl's graphs use it.

Two kinds of floor, both measured at the thread count the engines run with:

* **MatMul rates at the shapes that matter.** Every matmul of a stage (vision tower, prefill,
  page embedding) is listed with its real shape (:func:`vision_items`, :func:`prefill_items`);
  each distinct shape is timed alone in onnxruntime, as ragvl's graphs run it: fp32 ``MatMul``
  with the weight a constant initializer (so MLAS may prepack it), or ``MatMulNBits`` (block 64
  int8 / block 128 int4, ``accuracy_level`` 4, exactly ragvl's ``quantize.FORMATS``) for the
  linears ragvl quantizes, or for int8 in the many-row graphs (vision tower, ColQwen2's
  encoder) the converter's own ``rows`` kernel (per-row int8 activations, MatMulInteger); the
  vision attention as ragvl's ``MultiHeadAttention`` node, the decoder attention as its two
  batched MatMuls. A stage's floor is then the sum over its
  matmuls of FLOPs / the rate measured at that shape and format (:func:`stage_floor`): the time
  the matmuls alone would take, with everything else (norms, softmax, copies) free. A stage
  can only beat its floor if a kernel runs faster inside the model than alone.
* **Memory bandwidth** for decode (one token reads every weight once): streaming reads much
  larger than the last-level cache, at the thread count used: a chain of decode-shaped
  (1 x 1536 -> 8960 -> 1536, as the MLP) onnxruntime MatMuls over ~1.5 GB of distinct constant
  weights in fp32 and MatMulNBits int8 / int4 (exactly a decode step's access pattern), an
  onnxruntime ReduceSum and a threaded numpy sum over the same bytes. The fastest of these is the
  bandwidth the floors use: each one really read that many bytes in that time.

The engine benchmarks run :func:`task_floors` in a child (bench_qwen2vl.py's "machine" task)
with the shapes of their own inputs, after the engines, and report every stage against it.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from results import fmt, log  # noqa: E402

PATCH_DIM = 3 * 2 * 14 * 14  # Conv3d kernel (2, 14, 14) over 3 channels, one flattened patch


# =============================================================================================
# The matmuls of each stage
# =============================================================================================


def _lin(group: str, op: str, m: int, k: int, n: int, count: int, quantized: bool = True,
         many_rows: bool = False) -> dict:
    """A Linear (m x k) @ (k x n), `count` times per forward; `quantized`: ragvl quantizes it in the
    int8 / int4 formats (patch embedding and merger stay fp32); `many_rows`: it sits in a graph
    whose int8 form takes the rows kernel (quantize.WeightFormat.for_many_rows)."""
    return {"group": group, "op": op, "kind": "linear", "m": m, "k": k, "n": n, "batch": 1, "count": count,
            "quantized": quantized, "many_rows": many_rows}


def vision_items(spec, grid_thw: list[int]) -> list[dict]:
    """The vision tower's matmuls for one image of grid (t, h, w): N = t*h*w patches.

    Patch embedding, per block qkv / proj / fc1 / fc2 and attention (QK^T + PV over the full
    N x N: one image attends to itself only; one MultiHeadAttention node in ragvl), the merger's
    two Linear layers over N/4 merged tokens.
    """
    t, h, w = grid_thw
    n = t * h * w
    d = spec.vision_embed_dim
    mlp = d * spec.vision_mlp_ratio
    wide = d * 4  # 2x2 merge
    depth = spec.vision_depth
    return [
        _lin("patch_embed", "patch_embed", n, PATCH_DIM, d, 1, quantized=False),
        _lin("blocks_linear", "qkv", n, d, 3 * d, depth, many_rows=True),
        _lin("blocks_linear", "proj", n, d, d, depth, many_rows=True),
        _lin("blocks_linear", "fc1", n, d, mlp, depth, many_rows=True),
        _lin("blocks_linear", "fc2", n, mlp, d, depth, many_rows=True),
        {"group": "blocks_attention", "op": "mha", "kind": "mha", "m": n, "k": d, "n": n, "batch": 1,
         "heads": spec.vision_num_heads, "count": depth, "quantized": False},
        _lin("merger", "merger.0", n // 4, wide, wide, 1, quantized=False),
        _lin("merger", "merger.2", n // 4, wide, spec.hidden_size, 1, quantized=False),
    ]


def prefill_items(spec, seq: int, lm_head: bool = True, many_rows: bool = False) -> list[dict]:
    """One prefill over `seq` tokens: q / k / v / o and the MLP per layer, attention as ragvl's
    MatMul graph computes it (grouped-query: (nkv, rep*S, hd) @ (nkv, hd, S), full S x S before
    masking; a prefill now runs GroupQueryAttention, which bench/experiments/attention.py times
    against it), and lm_head on the last position only (a GEMV: bandwidth-bound, see
    :func:`stage_floor`). int8 takes the rows kernel in both graphs: `many_rows` is ColQwen2's
    encoder (stored so); the answerer's decoder has it from its column-scaled MatMulNBits at
    load (runtime/int8.py), over the stored blocks as the first operand where
    contract.stored_blocks_first() says so."""
    from ragvl.models.contract import stored_blocks_first

    first = not many_rows and stored_blocks_first()  # the encoder stores the rows kernel's own layout
    H, inter, L = spec.hidden_size, spec.intermediate_size, spec.num_layers
    kv = spec.num_kv_heads * spec.head_dim
    rep = spec.num_heads // spec.num_kv_heads
    hd = spec.head_dim

    def linear(op: str, k: int, n: int, count: int) -> dict:
        return {**_lin("linear", op, seq, k, n, count, many_rows=True), "weights_first": first}

    items = [
        linear("q/o", H, H, 2 * L),
        linear("k/v", H, kv, 2 * L),
        linear("gate/up", H, inter, 2 * L),
        linear("down", inter, H, L),
        {"group": "attention", "op": "qk", "kind": "bmm", "m": rep * seq, "k": hd, "n": seq,
         "batch": spec.num_kv_heads, "count": L, "quantized": False},
        {"group": "attention", "op": "pv", "kind": "bmm", "m": rep * seq, "k": seq, "n": hd,
         "batch": spec.num_kv_heads, "count": L, "quantized": False},
    ]
    if lm_head:
        items.append({**_lin("lm_head", "lm_head", 1, H, spec.vocab_size, 1), "kind": "gemv"})
    return items


def item_flops(it: dict) -> float:
    """2 FLOPs per multiply-add; MultiHeadAttention = QK^T + PV over all heads."""
    per = 2.0 * it["m"] * it["k"] * it["n"] * it["batch"]
    return per * (2 if it["kind"] == "mha" else 1) * it["count"]


def group_flops(items: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for it in items:
        out[it["group"]] = out.get(it["group"], 0.0) + item_flops(it)
    out["total"] = sum(out.values())
    return out


def shape_key(it: dict, dtype: str) -> str:
    """The measured kernel for one item in one weight format (fp32 for what ragvl keeps fp32)."""
    base = dtype.split("-")[0]  # "int8-nbits": int8 converted with MatMulNBits in every graph
    fmt = base if (it["quantized"] and base in ("int8", "int4")) else "fp32"
    if fmt == "int8" and it.get("many_rows") and dtype == "int8":
        fmt = "int8-rows-first" if it.get("weights_first") else "int8-rows"
    extra = f"h{it['heads']}" if it["kind"] == "mha" else f"b{it['batch']}"
    return f"{it['kind']}:{fmt}:{it['m']}x{it['k']}x{it['n']}:{extra}"


def shapes_to_measure(item_lists: list[list[dict]], dtypes: list[str]) -> list[dict]:
    """Distinct (shape, format) pairs over the given stages; GEMVs are left to the bandwidth."""
    seen: dict[str, dict] = {}
    for items in item_lists:
        for it in items:
            if it["kind"] == "gemv":
                continue
            for dt in dtypes:
                key = shape_key(it, dt)
                if key not in seen:
                    fmt = key.split(":")[1]
                    seen[key] = {**{k: it[k] for k in ("kind", "m", "k", "n", "batch")}, "heads": it.get("heads"),
                                 "format": fmt, "key": key, "op": it["op"]}
    return list(seen.values())


def stage_floor(items: list[dict], dtype: str, floors: dict) -> dict | None:
    """Floor of one stage in one weight format: the sum of each matmul's FLOPs at the rate measured
    for its shape and format, plus GEMV weights (lm_head) at the streaming bandwidth.
    Returns {"floor_s", "gflop", "by_group": {group: seconds}} or None when a shape is missing."""
    rates = {r["key"]: r["gflops"] for r in floors.get("gemm", []) if r.get("gflops")}
    bw = (floors.get("bandwidth") or {}).get("floor_gbs")
    by: dict[str, float] = {}
    for it in items:
        if it["kind"] == "gemv":
            if not bw:
                return None
            s = weight_bytes(it["k"], it["n"], dtype) * it["count"] / (bw * 1e9)
        else:
            rate = rates.get(shape_key(it, dtype))
            if not rate:
                return None
            s = item_flops(it) / (rate * 1e9)
        by[it["group"]] = by.get(it["group"], 0.0) + s
    return {"floor_s": sum(by.values()), "gflop": sum(item_flops(it) for it in items) / 1e9, "by_group": by}


# =============================================================================================
# Bytes
# =============================================================================================


def quant_format(dtype: str):
    """ragvl's own weight format for `dtype` (bits, block size, accuracy level, kernel);
    "int8-rows" is int8 as the many-row graphs store it."""
    from ragvl.models.converter.quantize import FORMATS

    if dtype in ("int8-rows", "int8-rows-first"):
        return FORMATS["int8"].for_many_rows()
    return FORMATS[dtype.split("-")[0]]


def weight_bytes(k: int, n: int, dtype: str) -> float:
    """Bytes of one (k in, n out) Linear weight as ragvl stores it: fp32 4 B/weight; MatMulNBits
    bits/8 B per weight + a 4-byte scale and a bits-wide zero point per block of block_size."""
    if dtype in ("fp32", "hf-fp32"):
        return 4.0 * n * k
    f = quant_format(dtype)
    if f.kernel == "rows":
        return 1.0 * n * k + 4.0 * n  # int8 weights and one scale per output column
    nb = -(-k // f.block_size)
    zp = n * nb if f.bits == 8 else n * -(-nb // 2)
    return n * nb * f.block_size * f.bits / 8 + 4.0 * n * nb + zp


# =============================================================================================
# Measurements (child process: imports onnxruntime)
# =============================================================================================


def _session(model, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _best(fn, reps: int) -> float:
    fn()  # warm-up (prepacking, arena growth)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _model(nodes, inputs, outputs, inits, opset: int = 21):
    from onnx import helper

    g = helper.make_graph(nodes, "floor", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


@functools.lru_cache(maxsize=8)
def _weights(k: int, n: int, fmt: str) -> tuple:
    """Random weights for one (k in, n out) Linear in ragvl's stored layout, as numpy arrays:
    fp32 (k, n) for MatMul; (packed, scales, zero points) for MatMulNBits. Cached: the bandwidth
    chains give every node its own copy of these values (:func:`distinct`)."""
    import numpy as np

    w = np.random.default_rng(k * 7919 + n).standard_normal((n, k), dtype=np.float32) * 0.02  # HF (out, in)
    if fmt == "fp32":
        return (np.ascontiguousarray(w.T),)
    from ragvl.models.converter.quantize import quantize_blockwise

    f = quant_format(fmt)
    if f.kernel == "rows":
        return (w,)  # quantized by the converter's own linear (see _rows_linear_model)
    return quantize_blockwise(w, f.bits, f.block_size)


def distinct(a, i: int):
    """Copy `i` of array `a`: its values rolled by i places (copy 0 is `a` itself). onnxruntime
    shares equal constant weights, so a chain of equal copies would be read from the cache (30
    equal copies of a uint8 weight ran a one-row MatMulInteger at 64 GB/s on a 2-core EPYC, 30
    distinct ones at 25 GB/s)."""
    import numpy as np

    return a if i == 0 or a.size < 2 else np.roll(a.reshape(-1), i).reshape(a.shape)


def _linear_node(x: str, y: str, k: int, n: int, fmt: str, name: str, copy: int = 0):
    """One Linear as ragvl's converter emits it (converter/quantize.linear): (node, initializers);
    `copy` > 0: distinct weights of the same values (:func:`distinct`)."""
    from onnx import helper, numpy_helper

    arrays = [distinct(a, copy) for a in _weights(k, n, fmt)]
    if fmt == "fp32":
        return helper.make_node("MatMul", [x, name], [y]), [numpy_helper.from_array(arrays[0], name)]
    f = quant_format(fmt)
    names = [name + ".q", name + ".s", name + ".z"]
    node = helper.make_node("MatMulNBits", [x, *names], [y], domain="com.microsoft",
                            K=k, N=n, bits=f.bits, block_size=f.block_size, accuracy_level=f.accuracy_level)
    return node, [numpy_helper.from_array(a, nm) for a, nm in zip(arrays, names)]


def _rows_linear_model(k: int, n: int, weights_first: bool = False):
    """The rows kernel's matmul alone, in the layout this CPU runs it with (runtime/int8.py:
    u8s8, u8s7 or u8u8, as `int8_kernel()` chooses), with the converter's weights
    (quantize_columns) on activations already quantized. The per-row activation quantization
    and the rescaling around it are left out of the limit: the graphs share one quantization
    between q/k/v and between gate/up, so counting it per Linear overstated it.
    `weights_first`: the stored (N, K) blocks times the activations transposed, (K, m), as the
    decoder's prefill runs it on u8u8; its two transposes are left out too."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from ragvl.models.contract import int8_kernel
    from ragvl.models.converter.quantize import quantize_columns
    from ragvl.models.runtime.int8 import derive_weight

    q, _ = quantize_columns(_weights(k, n, "int8-rows")[0])  # (K, N)
    kernel = int8_kernel()
    zp = numpy_helper.from_array(np.array(128, np.uint8), "zp")
    if weights_first:
        return _model([helper.make_node("MatMulInteger", ["W", "A", "zp", "zp"], ["Y"])],
                      [helper.make_tensor_value_info("A", TensorProto.UINT8, [k, "m"])],
                      [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, "m"])],
                      [numpy_helper.from_array(np.ascontiguousarray(q.T), "W"), zp])
    w, inputs = (q, ["A", "W", "zp", "zp"]) if kernel == "u8u8" else (derive_weight(q, kernel), ["A", "W", "zp"])
    return _model([helper.make_node("MatMulInteger", inputs, ["Y"])],
                  [helper.make_tensor_value_info("A", TensorProto.UINT8, ["m", k])],
                  [helper.make_tensor_value_info("Y", TensorProto.INT32, ["m", n])],
                  [numpy_helper.from_array(w, "W"), zp])


def _bound_run(sess, feeds: dict):
    """A zero-argument run of `sess` on `feeds` into outputs allocated once (IOBinding): the
    timing then holds the op alone, not a copy of its output into a fresh numpy array, which an
    op inside a graph never pays."""
    import numpy as np
    import onnxruntime as ort

    io = sess.io_binding()
    for name, arr in feeds.items():
        io.bind_cpu_input(name, arr)
    outs = [np.empty_like(a) for a in sess.run(None, feeds)]
    for o, arr in zip(sess.get_outputs(), outs):
        io.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(arr))

    def run():
        sess.run_with_iobinding(io)
        return outs  # keeps the bound buffers alive

    return run


def measure_gemm(shape: dict, threads: int, reps: int) -> dict:
    """Time one matmul of `shape` alone in onnxruntime; returns shape + best_s + gflops."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    m, k, n, b = shape["m"], shape["k"], shape["n"], shape["batch"]
    F = TensorProto.FLOAT
    if shape["kind"] == "linear":
        if shape["format"] in ("int8-rows", "int8-rows-first"):
            first = shape["format"] == "int8-rows-first"
            model = _rows_linear_model(k, n, weights_first=first)
            feeds = {"A": rng.integers(0, 256, (k, m) if first else (m, k), dtype=np.uint8)}
        else:
            node, inits = _linear_node("A", "Y", k, n, shape["format"], "W")
            model = _model([node], [helper.make_tensor_value_info("A", F, [m, k])],
                           [helper.make_tensor_value_info("Y", F, [m, n])], inits)
            feeds = {"A": rng.standard_normal((m, k), dtype=np.float32)}
        flops = 2.0 * m * k * n
    elif shape["kind"] == "bmm":  # activations x activations (decoder attention)
        model = _model([helper.make_node("MatMul", ["A", "B"], ["Y"])],
                       [helper.make_tensor_value_info("A", F, [b, m, k]),
                        helper.make_tensor_value_info("B", F, [b, k, n])],
                       [helper.make_tensor_value_info("Y", F, [b, m, n])], [])
        feeds = {"A": rng.standard_normal((b, m, k), dtype=np.float32),
                 "B": rng.standard_normal((b, k, n), dtype=np.float32)}
        flops = 2.0 * b * m * k * n
    else:  # mha: ragvl's vision attention node, (1, N, d) q / k / v
        d, nh = k, shape["heads"]
        model = _model([helper.make_node("MultiHeadAttention", ["Q", "K", "V"], ["Y"], domain="com.microsoft",
                                         num_heads=nh, scale=float((d // nh) ** -0.5))],
                       [helper.make_tensor_value_info(x, F, [1, m, d]) for x in "QKV"],
                       [helper.make_tensor_value_info("Y", F, [1, m, d])], [])
        feeds = {x: rng.standard_normal((1, m, d), dtype=np.float32) for x in "QKV"}
        flops = 2.0 * 2 * m * m * d
    sess = _session(model, threads)
    t = _best(_bound_run(sess, feeds), reps)
    out = {**shape, "best_s": round(t, 5), "gflops": round(flops / t / 1e9, 1)}
    if shape["kind"] == "linear" and shape["format"] in ("int8-rows", "int8-rows-first"):
        from ragvl.models.contract import int8_kernel

        out["kernel"] = int8_kernel()
    return out


def measure_bandwidth(threads: int, mem_gb: float, reps: int, dtypes: list[str], hidden: int = 1536,
                      inter: int = 8960) -> dict:
    """Streaming reads of ~mem_gb GB (>> the last-level cache) at `threads` threads, in GB/s."""
    import concurrent.futures

    import numpy as np
    from onnx import TensorProto, helper

    res: dict[str, Any] = {"threads": threads}
    rng = np.random.default_rng(0)
    F = TensorProto.FLOAT
    # Decode-shaped GEMV chains: x (1, hidden) -> up (hidden -> inter) -> down (inter -> hidden) -> ...
    # over distinct constant weights, as a decode step reads the MLP of every layer.
    for wfmt in ["fp32"] + [d for d in dtypes if d != "fp32"]:
        per_pair = weight_bytes(hidden, inter, wfmt) + weight_bytes(inter, hidden, wfmt)
        pairs = max(2, int(min(mem_gb, 1.6) * 1e9 // per_pair))  # a serialized model must stay under 2 GB
        nodes, inits, x = [], [], "X"
        for i in range(pairs):
            for j, (k, n) in enumerate(((hidden, inter), (inter, hidden))):
                y = f"h{i}_{j}"
                node, w = _linear_node(x, y, k, n, wfmt, f"W{i}_{j}", copy=i)
                nodes.append(node)
                inits += w
                x = y
        nodes.append(helper.make_node("Identity", [x], ["Y"]))
        model = _model(nodes, [helper.make_tensor_value_info("X", F, [1, hidden])],
                       [helper.make_tensor_value_info("Y", F, [1, hidden])], inits)
        del inits
        sess = _session(model, threads)
        del model
        xv = rng.standard_normal((1, hidden), dtype=np.float32)
        t = _best(functools.partial(sess.run, None, {"X": xv}), reps)
        nbytes = pairs * per_pair
        res[f"gemv_{wfmt}"] = {"bytes": int(nbytes), "best_s": round(t, 5), "gbs": round(nbytes / t / 1e9, 2),
                              "pairs": pairs}
        del sess
        log(f"  GEMV chain {wfmt}: {nbytes / 1e9:.2f} GB at {res[f'gemv_{wfmt}']['gbs']} GB/s")
    # Plain reads of one large float32 array: ORT ReduceSum and numpy's sum, one slice per thread.
    count = int(mem_gb * 1e9) // 4
    arr = np.ones(count, np.float32)
    model = _model([helper.make_node("ReduceSum", ["X"], ["Y"], keepdims=0)],
                   [helper.make_tensor_value_info("X", F, [count])], [helper.make_tensor_value_info("Y", F, [])], [])
    sess = _session(model, threads)
    t = _best(functools.partial(sess.run, None, {"X": arr}), reps)
    res["ort_reducesum"] = {"bytes": arr.nbytes, "best_s": round(t, 5), "gbs": round(arr.nbytes / t / 1e9, 2)}
    del sess
    parts = np.array_split(arr, threads)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        t = _best(functools.partial(lambda ps: list(pool.map(np.sum, ps)), parts), reps)
    res["numpy_sum"] = {"bytes": arr.nbytes, "best_s": round(t, 5), "gbs": round(arr.nbytes / t / 1e9, 2)}
    del arr, parts
    reads = {k: v["gbs"] for k, v in res.items() if isinstance(v, dict)}
    res["floor_source"] = max(reads, key=reads.get)
    res["floor_gbs"] = reads[res["floor_source"]]
    log(f"  memory read: {reads} -> floor {res['floor_gbs']} GB/s ({res['floor_source']})")
    return res


def task_floors(threads: int, shapes: list[dict], dtypes: list[str], reps: int, mem_gb: float,
                hidden: int = 1536, inter: int = 8960) -> dict:
    """Child task: every (shape, format) rate and the streaming bandwidth."""
    import onnxruntime as ort

    res: dict[str, Any] = {"threads": threads, "onnxruntime": ort.__version__, "reps": reps, "gemm": []}
    t0 = time.perf_counter()
    for s in shapes:
        r = measure_gemm(s, threads, reps)
        res["gemm"].append(r)
        log(f"  {r['key']} ({r['op']}): {r['gflops']} GFLOP/s")
    if mem_gb > 0:
        res["bandwidth"] = measure_bandwidth(threads, mem_gb, reps, dtypes, hidden, inter)
    res["measure_s"] = round(time.perf_counter() - t0, 1)
    return res


# =============================================================================================
# Tables
# =============================================================================================


def floors_tables(floors: dict) -> str:
    """Markdown: the measured rate of every shape, then the streaming reads."""
    if not floors or "error" in floors:
        return f"Floors not measured ({(floors or {}).get('error', 'skipped')}).\n"
    out = ["| matmul (as ragvl runs it) | format | M x K x N (batch) | GFLOP/s |", "|---|---|---|---|"]
    names = {"linear": "Linear", "bmm": "attention MatMul", "mha": "MultiHeadAttention"}
    for r in sorted(floors.get("gemm", []), key=lambda r: (r["kind"], r["format"], -r["m"], r["op"])):
        what = f"{names[r['kind']]} {r['op']}"
        if r["kind"] == "linear" and r["format"] == "int8-rows":
            fmt_s = f"int8 rows: MatMulInteger {r.get('kernel', 'u8u8')} (activations already quantized)"
        elif r["kind"] == "linear" and r["format"] == "int8-rows-first":
            fmt_s = (f"int8 rows: MatMulInteger {r.get('kernel', 'u8u8')}, stored blocks first (W @ x^T, "
                     "activations already quantized)")
        elif r["kind"] == "linear" and r["format"] != "fp32":
            f = quant_format(r["format"])
            fmt_s = f"MatMulNBits {f.bits}-bit, block {f.block_size}, accuracy_level {f.accuracy_level}"
        else:
            fmt_s = "fp32 MatMul" if r["kind"] != "mha" else "fp32"
        extra = f" ({r['heads']} heads)" if r["kind"] == "mha" else (f" (x{r['batch']})" if r["batch"] > 1 else "")
        out.append(f"| {what} | {fmt_s} | {r['m']} x {r['k']} x {r['n']}{extra} | {fmt(r['gflops'], '.1f')} |")
    bw = floors.get("bandwidth")
    if bw:
        out += ["", "| streaming read (at the engines' thread count) | bytes (GB) | GB/s |", "|---|---|---|"]
        labels = {"ort_reducesum": "onnxruntime ReduceSum over one float32 array",
                  "numpy_sum": "numpy sum, one slice per thread"}
        for k, v in bw.items():
            if not isinstance(v, dict):
                continue
            label = labels.get(k) or (f"decode-shaped GEMV chain, {k[5:]} (1x1536 -> 8960 -> 1536, "
                                      f"{v['pairs']} distinct weight pairs)")
            mark = "**" if k == bw["floor_source"] else ""
            out.append(f"| {mark}{label}{mark} | {v['bytes'] / 1e9:.2f} | {mark}{v['gbs']:.2f}{mark} |")
        out.append(f"\nBandwidth floor: **{bw['floor_gbs']:.2f} GB/s** (the fastest read above).")
    return "\n".join(out) + "\n"
