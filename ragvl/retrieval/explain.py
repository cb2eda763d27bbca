"""Similarity maps: where on a page a query matched, from the vectors already in the index.

A page's stored rows are the ColQwen2 document prompt's tokens (colqwen2.DOC_PROMPT), its image
tokens among them. Which rows are image tokens, and the merged patch grid they lie on, follow
from the stored image size and the embedder's max_pixels (smart_resize), so no re-indexing is
needed. For each query token, the dot product with every image token is a grid of the page's
merged patches: the same grids as colpali-engine's get_similarity_maps_from_embeddings (which
returns them transposed, (n_x, n_y)). The picture takes, per patch, the best similarity over
the query's tokens, upsamples it to the page and blends it in; the score goes in a corner.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import RagvlError
from ..models.runtime import ColQwen2, DOC_PROMPT, ImageConfig, smart_resize
from ..store import PageStore, page_row

# Heat colours from cold to hot (RGB): low similarity stays nearly transparent, see `overlay`.
_STOPS = np.array([[48, 18, 59], [40, 120, 240], [30, 200, 170], [160, 230, 50], [250, 190, 40],
                   [220, 40, 20]], np.float32)


def merged_grid(width: int, height: int, cfg: ImageConfig) -> tuple[int, int]:
    """(rows, cols) of merged patches (one image token each) for a width x height page image."""
    h, w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return h // cfg.factor, w // cfg.factor


def image_rows(embedder: ColQwen2, n_image: int) -> np.ndarray:
    """Bool mask over a page's stored rows: True at its `n_image` image tokens, in raster order."""
    if embedder.mask_non_image_embeddings:
        return np.ones(n_image, bool)
    ids = embedder.tokenizer.encode_prompt(DOC_PROMPT, [n_image])
    return np.asarray(ids) == embedder.config.image_token_id


def similarity_grids(query: np.ndarray, page: np.ndarray, mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per query token, its similarity with every image token: (n_query, rows, cols) float32."""
    if len(mask) != len(page) or int(mask.sum()) != grid[0] * grid[1]:
        raise RagvlError(f"the page has {len(page)} vectors, which do not fit a {grid[0]}x{grid[1]} patch grid "
                         f"with this embedder's settings (was it indexed with another --embedder?)")
    img = page[mask].astype(np.float32).reshape(grid[0], grid[1], -1)  # (rows, cols, 128)
    return np.einsum("nk,ijk->nij", query.astype(np.float32), img)  # (nq, rows, cols)


def _colorize(v: np.ndarray) -> np.ndarray:
    """v in [0, 1] (H, W) -> (H, W, 3) float32 colours along _STOPS."""
    x = np.clip(v, 0, 1) * (len(_STOPS) - 1)
    i = np.minimum(x.astype(int), len(_STOPS) - 2)
    f = (x - i)[..., None]
    return _STOPS[i] * (1 - f) + _STOPS[i + 1] * f


def overlay(image: Image.Image, grid: np.ndarray, label: str = "", strength: float = 0.65) -> Image.Image:
    """The page with `grid` (rows, cols) min-max normalised, upsampled bicubically and blended in.

    Hot patches are tinted strongly, cold ones hardly at all, so the page stays readable; `label`
    (e.g. the score) is drawn in the top-left corner.
    """
    page = np.asarray(image.convert("RGB"), np.float32)  # (H, W, 3)
    lo, hi = float(grid.min()), float(grid.max())
    norm = (grid - lo) / (hi - lo + 1e-10)
    up = Image.fromarray(norm.astype(np.float32)).resize(image.size, Image.Resampling.BICUBIC)
    v = np.clip(np.asarray(up, np.float32), 0, 1)  # (H, W)
    alpha = (strength * v)[..., None]  # the worst-matching patches leave the page untouched
    out = Image.fromarray((page * (1 - alpha) + _colorize(v) * alpha).clip(0, 255).astype(np.uint8))
    if label:
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default(size=max(14, image.width // 30))
        x0, y0, x1, y1 = draw.textbbox((8, 8), label, font=font)
        draw.rectangle((x0 - 5, y0 - 4, x1 + 5, y1 + 4), fill=(255, 255, 255), outline=(30, 30, 30))
        draw.text((8, 8), label, fill=(10, 10, 10), font=font)
    return out


@dataclass
class SimilarityMap:
    """Where `query` matched page `id`: `grid` (rows, cols) is, per merged patch, the best
    similarity over the query's tokens; `token_grids` (n_query, rows, cols) one grid per token."""

    id: str
    path: str
    page: int
    score: float  # the page's MaxSim score for the query (over all its rows, as search)
    grid: np.ndarray
    token_grids: np.ndarray
    tokens: list[str]
    page_image: Image.Image = field(repr=False)

    def image(self) -> Image.Image:
        """The blended picture with the score in a corner."""
        return overlay(self.page_image, self.grid, f"score {self.score:.2f}")

    def token_image(self, i: int) -> Image.Image:
        """The blended picture of query token `i` alone, labelled with the token."""
        return overlay(self.page_image, self.token_grids[i], f"{i}: {self.tokens[i]!r}")

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image().save(buf, format="PNG")
        return buf.getvalue()


def explain_page(store: PageStore, embedder: ColQwen2, query: np.ndarray, query_ids: np.ndarray,
                 page_id: str) -> SimilarityMap:
    """The similarity map of one page (by id) for one embedded query (n_query, 128)."""
    row = page_row(store, page_id, ["width", "height", "image_png", "vectors"])
    flat = np.asarray(row["vectors"], np.float32)  # (n_rows, 128)
    grid = merged_grid(row["width"], row["height"], embedder.image_config_for(embedder.max_pixels))
    mask = image_rows(embedder, grid[0] * grid[1])
    grids = similarity_grids(query, flat, mask, grid)
    score = float((query.astype(np.float32) @ flat.astype(np.float32).T).max(axis=1).sum())
    tokens = [embedder.tokenizer.decode([int(t)], skip_special_tokens=False) for t in query_ids]
    path = str(store.resolve(row["doc_path"]))  # stored relative to the index's parent folder
    return SimilarityMap(page_id, path, int(row["page"]), score, grids.max(axis=0), grids, tokens,
                         Image.open(io.BytesIO(row["image_png"])).convert("RGB"))

