"""ColQwen2 page and query multi-vectors on onnxruntime, as colpali-engine's ColQwen2 computes them.

A page is embedded through the document prompt the checkpoints were trained with, a query as
"Query: " + text + 10 x <|endoftext|>; every non-padding token yields one L2-normalised
128-d vector (prompt text tokens included, unless `mask_non_image_embeddings`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import KIND_EMBEDDER, VECTOR_DIM, mrope_positions
from .preprocess import ImageInput
from .vlm import ImageFeatures, VisionLanguageModel, image_config_key

DOC_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>"
              "<|endoftext|>")
QUERY_PREFIX = "Query: "
QUERY_SUFFIX = "<|endoftext|>" * 10
# Training used at most 768 visual tokens per page; the checkpoints' preprocessor configs say more.
MAX_PIXELS = 768 * 28 * 28


def embedder_id(manifest: dict, max_pixels: int = MAX_PIXELS, mask_non_image_embeddings: bool = False) -> str:
    """ColQwen2.id from a model folder's manifest alone, without loading the model (a Ray driver
    plans with it while only its workers load the model)."""
    files = manifest["files"]
    # onnxruntime's optimized copies compute the same vectors: they do not change the id, so
    # an index stays valid when a model is converted again with or without them.
    opt = {n for g in ((manifest.get("optimized") or {}).get("graphs") or {}).values() for n in (g, g + ".data")}
    digest = hashlib.sha256("".join(files[k]["sha256"] for k in sorted(files) if k not in opt).encode()
                            ).hexdigest()[:12]
    masked = "-imageonly" if mask_non_image_embeddings else ""
    return f"colqwen2-{manifest['dtype']}-{digest}-px{max_pixels}{masked}"


class ColQwen2(VisionLanguageModel):
    """A ragvl model folder of kind colqwen2: `embed_images` and `embed_queries`.

    `prepack=False` for a process that embeds a query or two (`ragvl search`, `ask`): the
    weights stay memory-mapped, the model opens seconds sooner (session.create_session)."""

    dim = VECTOR_DIM

    def __init__(self, folder: str | Path, device: str | None = None, threads: int | None = None,
                 max_pixels: int = MAX_PIXELS, mask_non_image_embeddings: bool = False, *, prepack: bool = True):
        super().__init__(folder, KIND_EMBEDDER, device, threads, prepack=prepack)
        self.max_pixels = max_pixels
        self.mask_non_image_embeddings = mask_non_image_embeddings
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.endoftext_id

    @property
    def encoder(self):
        return self.session("encoder")

    @property
    def id(self) -> str:
        """Identifies the vectors this embedder makes: same id, comparable vectors."""
        return embedder_id(self.manifest, self.max_pixels, self.mask_non_image_embeddings)

    @property
    def image_key(self) -> str:
        """The preprocessing its page images go through (vlm.image_config_key)."""
        return image_config_key(self.image_config_for(self.max_pixels))

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 1, *,
                     vision_out: list[ImageFeatures] | None = None) -> list[np.ndarray]:
        """One (n_tokens, 128) float32 matrix per page image.

        With `vision_out`, each page's vision tower output is appended to it as ImageFeatures
        (float32): an answerer with the same `vision_hash` and preprocessing can reuse it.
        """
        cfg = self.image_config_for(self.max_pixels)
        out: list[np.ndarray] = []
        for i in range(0, len(images), batch_size):
            pixels, grids, counts = self.preprocess_images(images[i:i + batch_size], cfg)
            ids = [self.tokenizer.encode_prompt(DOC_PROMPT, [c]) for c in counts]
            feats = self.vision_features(pixels, grids)  # (sum of tokens, H)
            if vision_out is not None:
                ends = np.cumsum(counts)
                vision_out += [ImageFeatures(feats[e - c:e], g) for e, c, g in zip(ends, counts, grids)]
            out += self._encode(ids, feats, grids)
        return out

    def embed_queries(self, queries: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
        """One (n_tokens, 128) float32 matrix per query."""
        out: list[np.ndarray] = []
        for i in range(0, len(queries), batch_size):
            ids = [self.query_ids(q) for q in queries[i:i + batch_size]]
            out += self._encode(ids, self.vision_features([], []), [])
        return out

    def query_ids(self, query: str) -> np.ndarray:
        """The token ids a query is embedded from: one output row per id."""
        return self.tokenizer.encode_prompt(QUERY_PREFIX + query + QUERY_SUFFIX, [])

    def _encode(self, ids: list[np.ndarray], feats: np.ndarray, grids: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Run a left-padded batch through the encoder; return each item's real rows."""
        longest = max(len(x) for x in ids)
        batch = np.full((len(ids), longest), self.pad_id, np.int64)  # (B, S)
        mask = np.zeros((len(ids), longest), np.int64)
        for b, x in enumerate(ids):  # left padding, as colpali-engine's processor
            batch[b, longest - len(x):] = x
            mask[b, longest - len(x):] = 1
        embeds = self.embed_prompt(batch, feats)  # (B, S, H)
        positions, _ = mrope_positions(batch, self.config.image_token_id, grids,
                                       self.config.vision.spatial_merge_size, attention_mask=mask)
        vecs = self.encoder.run(None, {"inputs_embeds": embeds, "attention_mask": mask,
                                       "position_ids": positions})[0]  # (B, S, 128)
        keep = mask.astype(bool)
        if self.mask_non_image_embeddings and grids:
            keep &= batch == self.config.image_token_id
        return [np.ascontiguousarray(vecs[b][keep[b]]) for b in range(len(ids))]
