"""The Qwen2-VL language model as ONNX graphs, built from checkpoint tensors (`model.*`, `lm_head`).

- embed:   input_ids (B, S) -> inputs_embeds (B, S, H)
- decoder: inputs_embeds (B, S, H), attention_mask (B, P+S), position_ids (3, B, S), past KV
           -> logits (B, V) at the last position, last_hidden_state (B, S, H) after the final norm,
              present KV (B, n_kv, P+S, head_dim) per layer.

Image features are spliced into inputs_embeds by the runtime, which is why the decoder takes
embeddings rather than ids.
"""

from __future__ import annotations

import numpy as np

from .checkpoint import TensorSource
from ..contract import TextConfig, VECTOR_DIM, kv_names, mrope_inv_freq
from .onnx_builder import FLOAT, INT64, MS_DOMAIN, GraphBuilder
from .quantize import WeightFormat, linear, quantize_blockwise
from .vision_graph import rotate

LAYER_TENSORS = ("input_layernorm.weight", "post_attention_layernorm.weight",
                 "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
                 "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
NEG_INF = np.float32(np.finfo(np.float32).min)  # HF's mask value: finite, so no NaN on empty rows


def text_tensor_names(cfg: TextConfig, tied: bool, lm_head: bool = True) -> list[str]:
    """Every checkpoint tensor the language model reads (ColQwen2 has no lm_head)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(cfg.num_hidden_layers):
        names += [f"model.layers.{i}.{t}" for t in LAYER_TENSORS]
    if lm_head and not tied:
        names.append("lm_head.weight")
    return names


def build_embed(g: GraphBuilder, src: TensorSource, cfg: TextConfig, fmt: WeightFormat) -> None:
    """input_ids -> inputs_embeds: a Gather over model.embed_tokens.weight.

    Quantized formats store the table like MatMulNBits (row blocks along H) and gather with
    GatherBlockQuantized: at the 2B shape the fp32 table alone is 0.93 GB, most of an int4 model.
    """
    ids = g.input("input_ids", INT64, ["batch", "seq"])
    name, p = "model.embed_tokens.weight", "/model/embed_tokens"
    table = src.get(name, (cfg.vocab_size, cfg.hidden_size))
    if fmt.quantized and cfg.hidden_size % fmt.block_size == 0:
        packed, scales, zp = quantize_blockwise(table, fmt.bits, fmt.block_size)
        v = cfg.vocab_size
        y = g.op("GatherBlockQuantized", [g.weight(name + ".qweight", packed.reshape(v, -1)), ids,
                                          g.weight(name + ".scales", scales.reshape(v, -1)),
                                          g.weight(name + ".zero_points", zp.reshape(v, -1))], p,
                 domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=fmt.block_size, bits=fmt.bits)
    else:
        y = g.gather(g.weight(name, table), ids, 0, p)
    g.output(y, "inputs_embeds", FLOAT, ["batch", "seq", cfg.hidden_size])


def _rope(g: GraphBuilder, position_ids: str, cfg: TextConfig) -> tuple[str, str]:
    """cos, sin (B, 1, S, head_dim) from M-RoPE position ids (3, B, S)."""
    p = "/model/rotary_emb"
    inv_freq, rows = mrope_inv_freq(cfg)
    pos = g.gather(g.cast(position_ids, FLOAT, p), g.const(rows), 0, p)  # (hd/2, B, S)
    freqs = g.mul(g.transpose(pos, (1, 2, 0), p), g.const(inv_freq, np.float32), p + "/freqs")  # (B, S, hd/2)
    emb = g.concat([freqs, freqs], -1, p + "/emb")  # (B, S, hd)
    return g.unsqueeze(g.cos(emb, p), [1], p + "/cos"), g.unsqueeze(g.sin(emb, p), [1], p + "/sin")


def _mask_bias(g: GraphBuilder, attention_mask: str, embeds: str) -> str:
    """Additive mask (B, 1, S, T): causal over absolute positions, and padding from attention_mask."""
    p = "/model/attn_mask"
    t = g.shape(attention_mask, p + "/total", start=1, end=2)  # (1,)
    s = g.shape(embeds, p + "/seq", start=1, end=2)
    past = g.sub(t, s, p + "/past")
    t0, past0 = g.squeeze(t, [0], p + "/total"), g.squeeze(past, [0], p + "/past")
    q_pos = g.unsqueeze(g.range(past0, t0, g.const(1), p + "/q_pos"), [1], p + "/q_pos")  # (S, 1)
    k_pos = g.range(g.const(0), t0, g.const(1), p + "/k_pos")  # (T,)
    causal = g.op("LessOrEqual", [k_pos, q_pos], p + "/causal")  # (S, T)
    keep = g.unsqueeze(g.cast(attention_mask, 9, p + "/keep"), [1, 2], p + "/keep")  # (B, 1, 1, T) bool
    allowed = g.op("And", [causal, keep], p)  # (B, 1, S, T)
    return g.where(allowed, g.const(np.float32(0), np.float32), g.const(NEG_INF, np.float32), p)


def _prefill_condition(g: GraphBuilder, x: str, mask: str) -> tuple[str, str, str]:
    """(use GroupQueryAttention, its seqlens_k (B,) int32, its total length () int32), computed
    once per graph: true for a prefill (S > 1) of one sequence with no padding, the only inputs
    for which GroupQueryAttention's implicit causal mask equals the attention mask."""
    if "gqa" not in g.memo:
        p = "/model/gqa"
        b, s = g.shape(x, p + "/batch", 0, 1), g.shape(x, p + "/seq", 1, 2)
        t = g.shape(mask, p + "/total", 1, 2)
        one = g.const([1])
        many = g.op("Greater", [s, one], p + "/many")
        single = g.op("Equal", [b, one], p + "/single")
        unpadded = g.op("Equal", [g.op("ReduceMin", [mask], p + "/min", keepdims=0), g.const(1)], p + "/unpadded")
        cond = g.squeeze(g.op("And", [g.op("And", [many, single], p), g.unsqueeze(unpadded, [0], p)], p + "/all"),
                         [0], p + "/cond")
        t32 = g.cast(t, 6, p + "/total")  # INT32
        g.memo["gqa"] = (cond, g.sub(t32, g.const([1], np.int32), p + "/seqlens_k"), g.squeeze(t32, [0], p + "/total"))
    return g.memo["gqa"]


def _attention(g: GraphBuilder, src: TensorSource, x: str, i: int, cos: str, sin: str, bias: str,
               cfg: TextConfig, fmt: WeightFormat, kv_cache: bool, mask: str, fused: bool) -> str:
    p, n = f"/model/layers.{i}/self_attn", f"model.layers.{i}.self_attn."
    H, nh, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def proj(name: str, heads: int) -> str:
        y = linear(g, x, n + name + ".weight", src.get(n + name + ".weight", (heads * hd, H)),
                   src.get(n + name + ".bias", (heads * hd,)), f"{p}/{name}", fmt)
        return g.transpose(g.reshape(y, [0, 0, heads, hd], f"{p}/{name}"), (0, 2, 1, 3), f"{p}/{name}")

    q = rotate(g, proj("q_proj", nh), cos, sin, hd // 2, f"{p}/q_rot")  # (B, nh, S, hd)
    k = rotate(g, proj("k_proj", nkv), cos, sin, hd // 2, f"{p}/k_rot")  # (B, nkv, S, hd)
    v = proj("v_proj", nkv)
    if not kv_cache:
        o = _grouped_attention(g, p, q, k, v, bias, nh, nkv, hd)
    else:
        past_k, past_v, present_k, present_v = kv_names(i)
        for name in (past_k, past_v):
            g.input(name, FLOAT, ["batch", nkv, "past_seq", hd])

        if fused:
            cond, seqlens, total = _prefill_condition(g, x, mask)

        def step(b: GraphBuilder) -> list[str]:
            kc = b.concat([past_k, k], 2, f"{p}/k_cache")  # (B, nkv, T, hd)
            vc = b.concat([past_v, v], 2, f"{p}/v_cache")
            return [_grouped_attention(b, p, q, kc, vc, bias, nh, nkv, hd), kc, vc]

        def prefill(b: GraphBuilder) -> list[str]:
            # onnxruntime's GroupQueryAttention: 1.5x faster than step's graph at a 934-token
            # prefill, 2.3x at 2,537, but 3x slower for one token (bench/results/*/attention.md)
            def bsh(t: str, heads: int, c: str) -> str:  # (B, heads, S, hd) -> (B, S, heads*hd)
                return b.reshape(b.transpose(t, (0, 2, 1, 3), f"{p}/gqa/{c}"), [0, 0, heads * hd], f"{p}/gqa/{c}")
            return b.op("GroupQueryAttention", [bsh(q, nh, "q"), bsh(k, nkv, "k"), bsh(v, nkv, "v"), past_k, past_v,
                                                seqlens, total], f"{p}/gqa", n_out=3, domain=MS_DOMAIN,
                        num_heads=nh, kv_num_heads=nkv, scale=float(hd ** -0.5))

        if fused:
            o, kc, vc = g.if_else(cond, prefill, step, f"{p}/attention", 3)
        else:
            o, kc, vc = step(g)
        g.output(kc, present_k, FLOAT, ["batch", nkv, "total_seq", hd])
        g.output(vc, present_v, FLOAT, ["batch", nkv, "total_seq", hd])
    return linear(g, o, n + "o_proj.weight", src.get(n + "o_proj.weight", (H, H)), None, f"{p}/o_proj", fmt)


def _grouped_attention(g: GraphBuilder, p: str, q: str, k: str, v: str, bias: str, nh: int, nkv: int,
                       hd: int) -> str:
    """Softmax(q k^T / sqrt(hd) + bias) v for q (B, nh, S, hd), k / v (B, nkv, T, hd) -> (B, S, H).

    Grouped-query attention without copying K/V per head: the rep query heads that share one
    KV head are stacked along the sequence axis, a free reshape of (B, nh, S, hd)."""
    q = g.mul(q, g.const(np.float32(hd ** -0.5), np.float32), f"{p}/scale")
    qg = g.reshape(q, [0, nkv, -1, hd], f"{p}/q_groups")  # (B, nkv, rep*S, hd)
    scores = g.matmul(qg, g.transpose(k, (0, 1, 3, 2), f"{p}/k_t"), f"{p}/qk")  # (B, nkv, rep*S, T)
    scores = g.reshape(scores, g.concat([g.const([0, nh]), g.const([-1]), g.shape(k, f"{p}/t", 2, 3)], 0,
                                        f"{p}/scores_shape"), f"{p}/scores")  # (B, nh, S, T)
    probs = g.softmax(g.add(scores, bias, f"{p}/mask"), f"{p}")
    probs = g.reshape(probs, g.concat([g.const([0, nkv]), g.const([-1]), g.shape(k, f"{p}/t2", 2, 3)], 0,
                                      f"{p}/probs_shape"), f"{p}/probs")  # (B, nkv, rep*S, T)
    o = g.matmul(probs, v, f"{p}/pv")  # (B, nkv, rep*S, hd)
    o = g.reshape(o, [0, nh, -1, hd], f"{p}/o_heads")  # (B, nh, S, hd)
    return g.reshape(g.transpose(o, (0, 2, 1, 3), f"{p}/o"), [0, 0, nh * hd], f"{p}/o")  # (B, S, H)


def _mlp(g: GraphBuilder, src: TensorSource, x: str, i: int, cfg: TextConfig, fmt: WeightFormat) -> str:
    p, n = f"/model/layers.{i}/mlp", f"model.layers.{i}.mlp."
    H, inter = cfg.hidden_size, cfg.intermediate_size
    gate = linear(g, x, n + "gate_proj.weight", src.get(n + "gate_proj.weight", (inter, H)), None,
                  f"{p}/gate_proj", fmt)
    up = linear(g, x, n + "up_proj.weight", src.get(n + "up_proj.weight", (inter, H)), None, f"{p}/up_proj", fmt)
    act = g.mul(gate, g.sigmoid(gate, f"{p}/act_fn"), f"{p}/act_fn")  # SiLU
    return linear(g, g.mul(act, up, p), n + "down_proj.weight", src.get(n + "down_proj.weight", (H, inter)),
                  None, f"{p}/down_proj", fmt)


def build_decoder(g: GraphBuilder, src: TensorSource, cfg: TextConfig, tied: bool, fmt: WeightFormat,
                  head: str = "lm", fused_attention: bool = True) -> None:
    """Add the language model to an empty graph builder.

    head="lm": the answerer's decoder, with KV cache; outputs last-position logits, the final
    hidden states and the presents. head="colbert": ColQwen2's page/query encoder, no cache;
    outputs `embeddings` (B, S, 128): custom_text_proj of the final hidden states, L2-normalised
    per token and multiplied by the attention mask, as colpali-engine's ColQwen2.forward.
    `fused_attention` (head="lm"): an unpadded one-sequence prefill takes onnxruntime's
    GroupQueryAttention, every other call (one token, padding) the MatMul + Softmax graph.
    """
    kv_cache = head == "lm"
    H = cfg.hidden_size
    x = g.input("inputs_embeds", FLOAT, ["batch", "seq", H])
    mask = g.input("attention_mask", INT64, ["batch", "total_seq"])
    pos = g.input("position_ids", INT64, [3, "batch", "seq"])
    cos, sin = _rope(g, pos, cfg)
    bias = _mask_bias(g, mask, x)
    eps = cfg.rms_norm_eps
    for i in range(cfg.num_hidden_layers):
        n, p = f"model.layers.{i}.", f"/model/layers.{i}"
        h = g.rms_norm(x, g.weight(n + "input_layernorm.weight", src.get(n + "input_layernorm.weight", (H,))),
                       eps, p + "/input_layernorm")
        x = g.add(x, _attention(g, src, h, i, cos, sin, bias, cfg, fmt, kv_cache, mask, fused_attention),
                  p + "/attn_residual")
        h = g.rms_norm(x, g.weight(n + "post_attention_layernorm.weight",
                                   src.get(n + "post_attention_layernorm.weight", (H,))),
                       eps, p + "/post_attention_layernorm")
        x = g.add(x, _mlp(g, src, h, i, cfg, fmt), p + "/mlp_residual")
    x = g.rms_norm(x, g.weight("model.norm.weight", src.get("model.norm.weight", (H,))), eps, "/model/norm")
    if head == "colbert":
        _colbert_head(g, src, x, mask, cfg)
        return
    g.output(x, "last_hidden_state", FLOAT, ["batch", "seq", H])
    last = g.squeeze(g.slice(x, [-1], [np.iinfo(np.int64).max], [1], "/model/last"), [1], "/model/last")  # (B, H)
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    w = src.get(head, (cfg.vocab_size, H))
    logits = linear(g, last, "lm_head.weight", w, None, "/lm_head", fmt)
    g.output(logits, "logits", FLOAT, ["batch", cfg.vocab_size])




def _colbert_head(g: GraphBuilder, src: TensorSource, x: str, mask: str, cfg: TextConfig) -> None:
    """embeddings = normalize(custom_text_proj(x)) * mask; the projection stays fp32 (it is tiny)."""
    p, n = "/custom_text_proj", "custom_text_proj."
    y = linear(g, x, n + "weight", src.get(n + "weight", (VECTOR_DIM, cfg.hidden_size)),
               src.get(n + "bias", (VECTOR_DIM,)), p, WeightFormat())  # (B, S, 128)
    norm = g.op("ReduceL2", [y, g.const([-1])], "/l2norm", keepdims=1)  # (B, S, 1)
    y = g.div(y, norm, "/l2norm")
    keep = g.unsqueeze(g.cast(mask, FLOAT, "/mask"), [-1], "/mask")  # (B, S, 1)
    g.output(g.mul(y, keep, "/mask"), "embeddings", FLOAT, ["batch", "seq", VECTOR_DIM])


def colbert_tensor_names() -> list[str]:
    return ["custom_text_proj.weight", "custom_text_proj.bias"]
