"""How a distributed run is laid out: where the cluster is and what each worker gets."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import RagvlError


@dataclass(frozen=True)
class RayOptions:
    """`--workers`, `--ray-address`, `--threads-per-worker`, `--gpus-per-worker`.

    - `address` None starts a fresh local Ray instance (whatever RAY_ADDRESS says); "auto" follows
      Ray's own rules (RAY_ADDRESS, else the cluster last started on this machine); "host:port"
      joins that cluster.
    - `workers` None: as many as the cluster's CPUs allow at `threads_per_worker` each.
    - `threads_per_worker`: onnxruntime intra-op threads per worker, also the CPUs it reserves.
      None: this machine's cores split among the workers (local), else 1.
    - `gpus_per_worker` > 0 reserves GPUs and runs the embedder on the CUDA provider (untested here).
    """

    workers: int | None = None
    address: str | None = None
    threads_per_worker: int | None = None
    gpus_per_worker: float = 0.0

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise RagvlError(f"--workers {self.workers}: must be 1 or more")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise RagvlError(f"--threads-per-worker {self.threads_per_worker}: must be 1 or more")
        if self.gpus_per_worker < 0:
            raise RagvlError(f"--gpus-per-worker {self.gpus_per_worker}: must be 0 or more")
