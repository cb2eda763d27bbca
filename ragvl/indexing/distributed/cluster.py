"""Connecting to Ray: a fresh local instance, or an existing cluster; every failure one line."""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import Callable, Iterator

from ...errors import RagvlError, short
from ...fsutil import cpu_threads
from .options import RayOptions


def import_ray():
    try:
        import ray
    except ImportError:
        raise RagvlError("--workers / --ray-address need Ray: pip install \"ragvl[ray]\"") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when a host:port cluster address does not answer.

    (ray.init itself retries an unreachable GCS for about a minute before its long error.)
    """
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RagvlError(f"--ray-address {address}: not host:port (nor auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise RagvlError(f"Ray cluster at {address} cannot be reached ({e.strerror or e}); start it with "
                         f"`ray start --head` or check the address") from None


def _token_auth_as_auto() -> None:
    """Before joining an explicit address: turn Ray's token authentication on as `address="auto"` does.

    Ray 2.60's `ray start --head` enables token authentication whenever a token already lies in
    Ray's default place (~/.ray/auth_token: any local `ray.init()` writes one). `ray.init("auto")`
    then finds it and joins; an explicit address does not look, and fails with "Failed to connect
    to Ray cluster at <node ip>:PORT" unless RAY_AUTH_MODE=token is set. With RAY_AUTH_MODE unset,
    Ray's own check runs here: where a token is found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token) it sets RAY_AUTH_MODE=token for this process, as "auto" does. A
    RAY_AUTH_MODE the user set is left alone.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def local_threads(opts: RayOptions) -> int:
    """Threads per worker: as asked, else this machine's cores split among the local workers."""
    if opts.threads_per_worker:
        return opts.threads_per_worker
    if opts.address is None:
        return max(1, cpu_threads() // (opts.workers or 1))
    return 1


@contextmanager
def ray_session(opts: RayOptions, log: Callable[[str], None]) -> Iterator[object]:
    """Yield the `ray` module connected as `opts` says; shut down (and restore RAY_ADDRESS) after."""
    ray = import_ray()
    saved = os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if opts.address is None:
            # A fresh local instance: ray.init reads RAY_ADDRESS before its own argument.
            os.environ.pop("RAY_ADDRESS", None)
            threads = local_threads(opts)
            workers = opts.workers or 1
            try:
                ray.init(address="local", num_cpus=workers * threads, **kwargs)
            except Exception as e:
                raise RagvlError(f"cannot start a local Ray instance ({short(e, 200)})") from None
            log(f"ray: local instance, {workers} workers x {threads} threads")
        else:
            _check_reachable(opts.address)
            _token_auth_as_auto()
            try:
                ray.init(address=opts.address, **kwargs)
            except Exception as e:  # ConnectionError: no cluster found for "auto", version mismatch...
                hint = ("; a cluster with token authentication needs its token here: ~/.ray/auth_token (copy it "
                        "from the head: `ray get-auth-token`) or RAY_AUTH_TOKEN"
                        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" else
                        "; is this the cluster's token? (RAY_AUTH_TOKEN, else ~/.ray/auth_token)")
                raise RagvlError(f"Ray cluster {opts.address} cannot be joined ({short(e, 200)}){hint}") from None
            log(f"ray: joined cluster {opts.address} ({_resources(ray)})")
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def _resources(ray) -> str:
    r = ray.cluster_resources()
    gpus = f", {r['GPU']:g} GPUs" if r.get("GPU") else ""
    return f"{r.get('CPU', 0):g} CPUs{gpus}, {len([n for n in ray.nodes() if n.get('Alive')])} nodes"

