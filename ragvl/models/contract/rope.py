"""Multimodal RoPE (M-RoPE) position ids, as transformers' Qwen2VLModel.get_rope_index.

Text tokens get the same position on all three rows (temporal, height, width). An image block of
gh x gw merged tokens starting at position p gets temporal p, height p + row, width p + column,
and the text after it resumes at p + max(gh, gw).
"""

from __future__ import annotations

import numpy as np

from .config import TextConfig


def mrope_positions(input_ids: np.ndarray, image_token_id: int, grids: list[tuple[int, int, int]],
                    merge_size: int, attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Position ids (3, B, S) and rope deltas (B,) for a batch of prompts.

    `grids` lists every image's (t, h, w) patch grid in prompt order across the batch.
    Padding positions (attention_mask 0) get position 0, as in transformers 5.3.
    """
    batch, seq = input_ids.shape
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    positions = np.zeros((3, batch, seq), dtype=np.int64)
    deltas = np.zeros(batch, dtype=np.int64)
    grid_iter = iter(grids)
    for b in range(batch):
        keep = attention_mask[b].astype(bool)
        ids = input_ids[b][keep]
        is_image = ids == image_token_id
        parts = []
        pos = 0
        i = 0
        while i < len(ids):
            j = i
            while j < len(ids) and is_image[j] == is_image[i]:
                j += 1
            if not is_image[i]:
                parts.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
                pos += j - i
            else:
                t, h, w = next(grid_iter)
                gh, gw = h // merge_size, w // merge_size
                if t * gh * gw != j - i:
                    raise ValueError(f"image block of {j - i} tokens does not match grid {(t, h, w)}")
                parts.append(np.stack([
                    np.full(t * gh * gw, pos),
                    np.tile(np.repeat(np.arange(pos, pos + gh), gw), t),
                    np.tile(np.arange(pos, pos + gw), t * gh),
                ]))
                pos += max(gh, gw)
            i = j
        llm = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), np.int64)
        positions[:, b, keep] = llm
        deltas[b] = (llm.max() + 1 - len(ids)) if llm.size else 0
    return positions, deltas


def mrope_inv_freq(cfg: TextConfig) -> tuple[np.ndarray, np.ndarray]:
    """(inv_freq (hd/2,) float32, position row (hd/2,) int64) for multimodal RoPE.

    Frequency j takes its position from row j's section (temporal, height, width), as HF's
    apply_multimodal_rotary_pos_emb does by splitting cos/sin with mrope_section.
    """
    hd = cfg.head_dim
    inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))).astype(np.float32)
    rows = np.concatenate([np.full(n, i % 3) for i, n in enumerate(cfg.mrope_section)]).astype(np.int64)
    return inv_freq, rows
