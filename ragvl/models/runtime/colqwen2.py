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

from ..contract.manifest import KIND_EMBEDDER
from ..contract.names import VECTOR_DIM
from .preprocess import ImageInput
from ..contract.rope import mrope_positions
from .vlm import VisionLanguageModel

DOC_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>"
              "<|endoftext|>")
QUERY_PREFIX = "Query: "
QUERY_SUFFIX = "<|endoftext|>" * 10
# Training used at most 768 visual tokens per page; the checkpoints' preprocessor configs say more.
MAX_PIXELS = 768 * 28 * 28


def embedder_id(manifest: dict, max_pixels: int = MAX_PIXELS, mask_non_image_embeddings: bool = False) -> str:
    """The id of the vectors a colqwen2 model folder makes (ColQwen2.id), from its manifest alone."""
    files = manifest["files"]
    digest = hashlib.sha256("".join(files[k]["sha256"] for k in sorted(files)).encode()).hexdigest()[:12]
    masked = "-imageonly" if mask_non_image_embeddings else ""
    return f"colqwen2-{manifest['dtype']}-{digest}-px{max_pixels}{masked}"


class ColQwen2(VisionLanguageModel):
    """A ragvl model folder of kind colqwen2: `embed_images` and `embed_queries`."""

    dim = VECTOR_DIM

    def __init__(self, folder: str | Path, device: str | None = None, threads: int | None = None,
                 max_pixels: int = MAX_PIXELS, mask_non_image_embeddings: bool = False):
        super().__init__(folder, KIND_EMBEDDER, device, threads)
        self.encoder = self.session("encoder")
        self.max_pixels = max_pixels
        self.mask_non_image_embeddings = mask_non_image_embeddings
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.endoftext_id

    @property
    def id(self) -> str:
        """Identifies the vectors this embedder makes: same id, comparable vectors."""
        return embedder_id(self.manifest, self.max_pixels, self.mask_non_image_embeddings)

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 1) -> list[np.ndarray]:
        """One (n_tokens, 128) float32 matrix per page image."""
        cfg = self.image_config_for(self.max_pixels)
        out: list[np.ndarray] = []
        for i in range(0, len(images), batch_size):
            pixels, grids, counts = self.preprocess_images(images[i:i + batch_size], cfg)
            ids = [self.tokenizer.encode_prompt(DOC_PROMPT, [c]) for c in counts]
            out += self._encode(ids, self.vision_features(pixels, grids), grids)
        return out

    def embed_queries(self, queries: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
        """One (n_tokens, 128) float32 matrix per query."""
        out: list[np.ndarray] = []
        for i in range(0, len(queries), batch_size):
            ids = [self.tokenizer.encode_prompt(QUERY_PREFIX + q + QUERY_SUFFIX, []) for q in queries[i:i + batch_size]]
            out += self._encode(ids, self.vision_features([], []), [])
        return out

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
