"""The Qwen2-VL vision tower as an ONNX graph, built from checkpoint tensors (`visual.*`).

Graph: pixel_values (N, C*T*P*P) + grid_thw (3,) -> image_features (N / merge^2, hidden).
One image per run: attention never crosses images, so running them one at a time does exactly
the work of HF's block-diagonal attention and none of the masked-out part.
"""

from __future__ import annotations

import numpy as np

from .checkpoint import TensorSource
from ..contract import VisionConfig
from .onnx_builder import FLOAT, INT64, MS_DOMAIN, GraphBuilder
from .quantize import WeightFormat, linear


def vision_tensor_names(cfg: VisionConfig) -> list[str]:
    """Every checkpoint tensor the vision tower reads."""
    names = ["visual.patch_embed.proj.weight"]
    for i in range(cfg.depth):
        p = f"visual.blocks.{i}."
        for sub in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            names += [p + sub + ".weight", p + sub + ".bias"]
    for sub in ("ln_q", "mlp.0", "mlp.2"):
        names += [f"visual.merger.{sub}.weight", f"visual.merger.{sub}.bias"]
    return names


def _rotary(g: GraphBuilder, grid: str, cfg: VisionConfig) -> tuple[str, str]:
    """cos, sin (N, 1, head_dim) for patches in merge-window order, as HF's rot_pos_emb."""
    m = cfg.spatial_merge_size
    p = "/visual/rotary"
    t = g.gather(grid, g.const([0]), 0, p + "/t")  # (1,)
    h = g.gather(grid, g.const([1]), 0, p + "/h")
    w = g.gather(grid, g.const([2]), 0, p + "/w")
    hw = g.concat([h, w], 0, p + "/hw")
    window_shape = g.concat([g.div(h, g.const([m]), p + "/h_m"), g.const([m]),
                             g.div(w, g.const([m]), p + "/w_m"), g.const([m])], 0, p + "/window_shape")
    zero, one = g.const(0), g.const(1)

    def axis_ids(size: str, axes: list[int], name: str) -> str:
        r = g.range(zero, g.squeeze(size, [0], f"{p}/{name}"), one, f"{p}/{name}")  # (h,) or (w,)
        grid2d = g.expand(g.unsqueeze(r, axes, f"{p}/{name}"), hw, f"{p}/{name}")  # (h, w)
        win = g.transpose(g.reshape(grid2d, window_shape, f"{p}/{name}"), (0, 2, 1, 3), f"{p}/{name}")
        return g.reshape(win, [-1, 1], f"{p}/{name}/flat")  # (h*w, 1)

    pos = g.concat([axis_ids(h, [1], "hpos"), axis_ids(w, [0], "wpos")], 1, p + "/pos")  # (h*w, 2)
    pos = g.op("Tile", [pos, g.concat([t, g.const([1])], 0, p + "/reps")], p)  # (N, 2)
    rot_dim = cfg.head_dim // 2
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim))
    freqs = g.mul(g.unsqueeze(g.cast(pos, FLOAT, p), [2], p), g.const(inv_freq.astype(np.float32), np.float32),
                  p + "/freqs")  # (N, 2, hd/4)
    freqs = g.reshape(freqs, [0, -1], p + "/freqs")  # (N, hd/2): row freqs then column freqs
    emb = g.concat([freqs, freqs], -1, p + "/emb")  # (N, hd)
    return (g.unsqueeze(g.cos(emb, p), [1], p + "/cos"), g.unsqueeze(g.sin(emb, p), [1], p + "/sin"))


def rotate(g: GraphBuilder, x: str, cos: str, sin: str, half: int, path: str) -> str:
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1) over the last axis."""
    x1, x2 = g.split(x, [half, half], -1, path + "/rotate_half")
    rot = g.concat([g.neg(x2, path + "/rotate_half"), x1], -1, path + "/rotate_half")
    return g.add(g.mul(x, cos, path + "/cos"), g.mul(rot, sin, path + "/sin"), path)


def _block(g: GraphBuilder, src: TensorSource, x: str, i: int, cos: str, sin: str, cfg: VisionConfig,
           fmt: WeightFormat, fused_attention: bool) -> str:
    p, n = f"/visual/blocks.{i}", f"visual.blocks.{i}."
    d, nh, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim

    def ln(name: str, inp: str) -> str:
        return g.layer_norm(inp, g.weight(n + name + ".weight", src.get(n + name + ".weight", (d,))),
                            g.weight(n + name + ".bias", src.get(n + name + ".bias", (d,))), 1e-6, f"{p}/{name}")

    def lin(name: str, inp: str, out_dim: int, in_dim: int) -> str:
        return linear(g, inp, n + name + ".weight", src.get(n + name + ".weight", (out_dim, in_dim)),
                      src.get(n + name + ".bias", (out_dim,)), f"{p}/{name}", fmt)

    h = ln("norm1", x)
    qkv = g.reshape(lin("attn.qkv", h, 3 * d, d), [0, 3, nh, hd], f"{p}/attn/qkv")  # (N, 3, nh, hd)
    q, k, v = (g.squeeze(t, [1], f"{p}/attn/{c}") for t, c in zip(g.split(qkv, [1, 1, 1], 1, f"{p}/attn"), "qkv"))
    q = rotate(g, q, cos, sin, hd // 2, f"{p}/attn/q_rot")  # (N, nh, hd)
    k = rotate(g, k, cos, sin, hd // 2, f"{p}/attn/k_rot")
    if fused_attention:
        # MultiHeadAttention wants (B, S, nh*hd); B = 1 image.
        q3, k3, v3 = (g.reshape(t, [1, -1, d], f"{p}/attn/{c}3") for t, c in ((q, "q"), (k, "k"), (v, "v")))
        o = g.op("MultiHeadAttention", [q3, k3, v3], f"{p}/attn", domain=MS_DOMAIN, num_heads=nh,
                 scale=float(hd ** -0.5))
        o = g.reshape(o, [-1, d], f"{p}/attn/out")
    else:
        q = g.mul(g.transpose(q, (1, 0, 2), f"{p}/attn/q"), g.const(np.float32(hd ** -0.5), np.float32),
                  f"{p}/attn/scale")  # (nh, N, hd)
        kt = g.transpose(k, (1, 2, 0), f"{p}/attn/k")  # (nh, hd, N)
        vt = g.transpose(v, (1, 0, 2), f"{p}/attn/v")  # (nh, N, hd)
        probs = g.softmax(g.matmul(q, kt, f"{p}/attn/qk"), f"{p}/attn")  # (nh, N, N)
        o = g.matmul(probs, vt, f"{p}/attn/pv")  # (nh, N, hd)
        o = g.reshape(g.transpose(o, (1, 0, 2), f"{p}/attn/o"), [0, d], f"{p}/attn/o")  # (N, d)
    x = g.add(x, lin("attn.proj", o, d, d), f"{p}/attn/residual")
    h = lin("mlp.fc1", ln("norm2", x), cfg.mlp_hidden, d)
    if cfg.hidden_act == "quick_gelu":
        h = g.op("QuickGelu", [h], f"{p}/mlp/act", domain=MS_DOMAIN, alpha=1.702)
    else:
        h = g.op("Gelu", [h], f"{p}/mlp/act")
    return g.add(x, lin("mlp.fc2", h, d, cfg.mlp_hidden), f"{p}/mlp/residual")


def build_vision(g: GraphBuilder, src: TensorSource, cfg: VisionConfig, fmt: WeightFormat,
                 fused_attention: bool = True) -> None:
    """Add the vision tower to an empty graph builder."""
    d = cfg.embed_dim
    pixels = g.input("pixel_values", FLOAT, ["num_patches", cfg.patch_dim])
    grid = g.input("grid_thw", INT64, [3])
    # Conv3d with stride == kernel over one flattened patch is a MatMul with the kernel as rows.
    w = src.get("visual.patch_embed.proj.weight").reshape(d, cfg.patch_dim)
    x = linear(g, pixels, "visual.patch_embed.proj.weight", w, None, "/visual/patch_embed/proj",
               WeightFormat())  # (N, d): kept fp32, it sees raw pixels
    cos, sin = _rotary(g, grid, cfg)
    for i in range(cfg.depth):
        x = _block(g, src, x, i, cos, sin, cfg, fmt, fused_attention)
    p, n = "/visual/merger", "visual.merger."
    x = g.layer_norm(x, g.weight(n + "ln_q.weight", src.get(n + "ln_q.weight", (d,))),
                     g.weight(n + "ln_q.bias", src.get(n + "ln_q.bias", (d,))), 1e-6, p + "/ln_q")
    wide = d * cfg.spatial_merge_size ** 2
    x = g.reshape(x, [-1, wide], p + "/merge")  # (N/4, 4d): each 2x2 window is contiguous
    x = linear(g, x, n + "mlp.0.weight", src.get(n + "mlp.0.weight", (wide, wide)),
               src.get(n + "mlp.0.bias", (wide,)), p + "/mlp.0", WeightFormat())
    x = g.op("Gelu", [x], p + "/mlp.1")
    x = linear(g, x, n + "mlp.2.weight", src.get(n + "mlp.2.weight", (cfg.hidden_size, wide)),
               src.get(n + "mlp.2.bias", (cfg.hidden_size,)), p + "/mlp.2", WeightFormat())
    g.output(x, "image_features", FLOAT, ["num_tokens", cfg.hidden_size])
