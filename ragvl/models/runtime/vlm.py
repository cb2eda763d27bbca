"""What a Qwen2-VL answerer and a ColQwen2 embedder share at run time.

Both are the same vision tower and token embedding in front of a language model: a converted
folder's manifest, tokenizer and preprocessor settings, the vision and embed sessions, and the
step that splices image features into the token embeddings.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ...errors import RagvlError
from ..contract import column_scaled_blocks, model_config, optimized_status, read_manifest
from .preprocess import ImageConfig, ImageInput, num_image_tokens, preprocess
from .session import create_session, default_device, providers_for
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class ImageFeatures:
    """One image's vision tower output, computed earlier (e.g. stored at indexing).

    Passed in place of an image, it is spliced into the prompt as is: the vision tower does not
    run for it. Valid only for a model whose `vision_hash` and preprocessing produced it.
    """

    features: np.ndarray  # (n_tokens, H) float16 or float32: the merged visual tokens
    grid: tuple[int, int, int]  # (t, h, w) in patches, before the 2x2 merge


ImageOrFeatures = Union[ImageInput, ImageFeatures]


@dataclass
class Prompt:
    """A tokenized prompt with its images' pixel rows (None where features were given) and patch grids."""

    ids: np.ndarray  # (S,) int64, image pads expanded
    pixel_values: list[np.ndarray | None]  # per image (N_i, C*T*P*P)
    grids: list[tuple[int, int, int]]
    given: list[np.ndarray | None] = field(default_factory=list)  # per image: precomputed (n_i, H) or None

    @property
    def n_given(self) -> int:
        return sum(g is not None for g in self.given)


def image_config_key(cfg: ImageConfig) -> str:
    """A short hash of every preprocessing setting: equal keys, equal pixel rows for one image."""
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]


class VisionLanguageModel:
    """A converted model folder of `kind`, with its vision and embedding sessions open."""

    def __init__(self, folder: str | Path, kind: str, device: str | None = None, threads: int | None = None,
                 *, prepack: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, kind=kind)
        self.config = model_config(self.manifest)
        self.tokenizer = Tokenizer.from_dir(self.folder)
        pre = self.folder / "preprocessor_config.json"
        self.image_config = ImageConfig.from_file(pre) if pre.exists() else ImageConfig()
        self.device = device or default_device()
        self.threads = threads
        self.prepack = prepack  # False: weights stay memory-mapped (session.create_session)
        # Sessions open on first use: `ragvl search` embeds a text query and never needs the
        # vision graph, an answer from stored features may not either.
        self._sessions: dict = {}
        # Per open graph, the file it was loaded from and why: {"file", "optimized", "reason"}
        # (`--json` outputs carry it: an optimized copy made elsewhere is skipped, and says so).
        self.loaded: dict[str, dict] = {}
        self._opening = threading.Lock()  # one graph opens at a time: never two sessions of one graph

    def session(self, graph: str):
        """The onnxruntime session of one of the manifest's graphs, opened on first use."""
        sess = self._sessions.get(graph)
        if sess is None:
            with self._opening:
                sess = self._sessions.get(graph)
                if sess is None:
                    choice = self.graph_choice(graph)
                    sess = self._sessions[graph] = create_session(self.folder / choice["file"], self.device,
                                                                  self.threads, optimize=not choice["optimized"],
                                                                  prepack=self.prepack,
                                                                  column_blocks=column_scaled_blocks(self.manifest, graph))
                    self.loaded[graph] = choice
        return sess

    def graph_choice(self, graph: str) -> dict:
        """Which file `graph` loads from, and why: {"file", "optimized", "reason"}. The copy
        onnxruntime optimized at conversion where it is valid here (the same onnxruntime version,
        provider and CPU: contract.optimized_status), else the plain graph, optimized at load."""
        usable, reason = optimized_status(self.manifest, providers_for(self.device)[0])
        name = ((self.manifest.get("optimized") or {}).get("graphs") or {}).get(graph)
        if usable and name and (self.folder / name).exists():
            return {"file": name, "optimized": True, "reason": reason}
        if usable:
            reason = f"no optimized copy of the {graph} graph: optimized at load"
        return {"file": self.manifest["graphs"][graph], "optimized": False, "reason": reason}

    def graph_path(self, graph: str) -> tuple[Path, bool]:
        """The file to load for `graph` and whether it is a saved optimized copy (graph_choice)."""
        choice = self.graph_choice(graph)
        return self.folder / choice["file"], choice["optimized"]

    def open(self, *graphs: str) -> "VisionLanguageModel":
        """Open these graphs' sessions now (all of the manifest's by default), e.g. before timing."""
        for g in graphs or tuple(self.manifest["graphs"]):
            self.session(g)
        return self

    def ensure_open(self, *graphs: str) -> float:
        """Open these graphs' sessions where they are not open yet (all of the manifest's by
        default), waiting for any that `open_in_background` is opening; returns the seconds that
        took, 0.0 when all were open already.

        Every timed path calls it before its stage's timer starts and reports the seconds as
        `load_s`: a stage's time (vision, prefill, decode, retrieval) never includes opening a
        session, which for a 2B decoder takes seconds.
        """
        graphs = graphs or tuple(self.manifest["graphs"])
        if all(g in self._sessions for g in graphs):
            return 0.0
        t0 = time.perf_counter()
        self.open(*graphs)
        return time.perf_counter() - t0

    def open_in_background(self, *graphs: str) -> threading.Thread:
        """Start opening these graphs' sessions in a thread (onnxruntime releases the GIL while
        it loads), so that other start-up work overlaps it; `session()` waits for a graph being
        opened. An error is left for the caller's own `session()` call to raise."""

        def run():
            try:
                self.open(*graphs)
            except Exception:  # noqa: BLE001 - raised again, with its message, by the caller's session()
                pass

        t = threading.Thread(target=run, name=f"open {', '.join(graphs)}", daemon=True)
        t.start()
        return t

    @property
    def opened(self) -> list[str]:
        """The graphs whose sessions are open."""
        return sorted(self._sessions)

    @property
    def vision(self):
        return self.session("vision")

    @property
    def embed(self):
        return self.session("embed")

    @property
    def vision_hash(self) -> str:
        """The hash of the vision graph's files (from the manifest): equal hashes, equal features."""
        graph = self.manifest["graphs"]["vision"]
        files = self.manifest["files"]
        names = sorted(n for n in files if n == graph or n.startswith(graph + "."))  # graph + external data
        return hashlib.sha256("".join(files[n]["sha256"] for n in names).encode()).hexdigest()

    def image_config_for(self, max_pixels: int | None) -> ImageConfig:
        if max_pixels is None:
            return self.image_config
        return replace(self.image_config, max_pixels=max_pixels,
                       min_pixels=min(self.image_config.min_pixels, max_pixels))

    def preprocess_images(self, images: Sequence[ImageInput], cfg: ImageConfig
                          ) -> tuple[list[np.ndarray], list[tuple[int, int, int]], list[int]]:
        """Pixel rows, patch grids and token counts per image."""
        pixels, grids = [], []
        for image in images:
            pv, grid = preprocess(image, cfg)
            pixels.append(pv)
            grids.append(tuple(int(x) for x in grid))
        return pixels, grids, [num_image_tokens(g, cfg.merge_size) for g in grids]

    def prepare_images(self, images: Sequence[ImageOrFeatures], cfg: ImageConfig
                       ) -> tuple[list[np.ndarray | None], list[tuple[int, int, int]], list[int], list[np.ndarray | None]]:
        """As preprocess_images, where an ImageFeatures item is checked and passed through:
        (pixel rows or None, grids, token counts, given features or None) per image."""
        pixels, grids, counts, given = [], [], [], []
        hidden = self.config.text.hidden_size
        for i, image in enumerate(images):
            if isinstance(image, ImageFeatures):
                grid = tuple(int(x) for x in image.grid)
                n = num_image_tokens(grid, cfg.merge_size)
                if image.features.shape != (n, hidden):
                    raise RagvlError(f"image {i + 1}: precomputed features have shape {image.features.shape}, "
                                     f"but grid {grid} needs ({n}, {hidden})")
                pixels.append(None), grids.append(grid), counts.append(n), given.append(image.features)
            else:
                pv, g, c = self.preprocess_images([image], cfg)
                pixels += pv
                grids += g
                counts += c
                given.append(None)
        return pixels, grids, counts, given

    @staticmethod
    def needs_vision(prompt: Prompt) -> bool:
        """Whether encoding `prompt` runs the vision tower: some image has no given features."""
        return any(g is None for g in (prompt.given or [None] * len(prompt.grids)))

    def encode_images(self, prompt: Prompt) -> np.ndarray:
        """Vision features (sum of tokens, H) for every image of `prompt`, given ones used as they are."""
        given = prompt.given or [None] * len(prompt.grids)
        feats = [g.astype(np.float32) if g is not None else self.vision_features([pv], [grid])
                 for pv, grid, g in zip(prompt.pixel_values, prompt.grids, given)]
        if not feats:
            return np.zeros((0, self.config.text.hidden_size), np.float32)
        return np.concatenate(feats, axis=0)

    def vision_features(self, pixel_values: Sequence[np.ndarray], grids: Sequence[tuple[int, int, int]]
                        ) -> np.ndarray:
        """Vision features (sum of tokens, H), one vision run per image, in order."""
        feats = [self.vision.run(None, {"pixel_values": pv, "grid_thw": np.asarray(g, np.int64)})[0]
                 for pv, g in zip(pixel_values, grids)]
        if not feats:
            return np.zeros((0, self.config.text.hidden_size), np.float32)
        return np.concatenate(feats, axis=0)

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings (B, S, H) for ids (B, S)."""
        return self.embed.run(None, {"input_ids": ids})[0]

    def embed_prompt(self, ids: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Embeddings (B, S, H) for ids (B, S), image pads replaced by `feats` in order."""
        embeds = self.embed_ids(ids)
        embeds[ids == self.config.image_token_id] = feats
        return embeds
