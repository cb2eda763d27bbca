"""The worker pool MaxSim shares: whole chunks handed to threads from a shared queue."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

__all__ = ["parallel"]

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def parallel(fn, items: Sequence, threads: int) -> None:
    """Call ``fn(item)`` for every item on up to `threads` threads, each pulling the next item
    from a shared iterator (a thread that gets less CPU simply does fewer items)."""
    n = min(int(threads), len(items))
    if n <= 1:
        for it in items:
            fn(it)
        return
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ragvl-maxsim")
    it = iter(range(len(items)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            fn(items[i])

    for f in [pool.submit(worker) for _ in range(n)]:
        f.result()                                                  # re-raises a worker's error
