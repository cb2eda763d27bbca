"""The Ray actor that embeds rendered pages: one model load, many pages.

A worker gets each page as the PNG the index stores (rendered by the driver's run in
ragvl.ingest's worker process) and decodes it as the single-process run does (SourcePage.image),
so it embeds exactly the stored pixels.
"""

from __future__ import annotations

import os
import signal
import socket

import numpy as np

from ..source import SourcePage


class PageWorker:
    """Embeds pages; the actor class (wrapped with ray.remote by the driver)."""

    def __init__(self, embedder_folder: str, threads: int, max_pixels: int, device: str | None = None):
        from ...models.runtime import ColQwen2

        self.model = ColQwen2(embedder_folder, device=device, threads=threads, max_pixels=max_pixels)

    def info(self) -> dict:
        """Who this worker is: the embedder id (all must agree), its vision tower and preprocessing
        (what stored vision features are keyed by), pid and host."""
        return {"embedder_id": self.model.id, "vision_hash": self.model.vision_hash,
                "image_key": self.model.image_key, "pid": os.getpid(), "host": socket.gethostname()}

    def embed(self, png: bytes, vision: bool, die: bool = False) -> tuple:
        """One page: (vectors (n, 128) float16, its vision features (tokens, hidden) float16 or
        None, their grid or None, this worker's pid).

        `die` (the driver's test hook RAGVL_TEST_KILL_WORKER_AT_PAGE): the worker kills itself
        unless Ray has already restarted it, so a test loses a worker mid-task at a known page.
        """
        if die:
            import ray

            if not ray.get_runtime_context().was_current_actor_reconstructed:
                os.kill(os.getpid(), signal.SIGKILL)
        image = SourcePage(0, png).image
        feats: list = []
        vectors = (self.model.embed_images([image], vision_out=feats) if vision
                   else self.model.embed_images([image]))[0]
        if not feats:
            return vectors.astype(np.float16), None, None, os.getpid()
        return (vectors.astype(np.float16), np.ascontiguousarray(feats[0].features, np.float16),
                tuple(feats[0].grid), os.getpid())
