"""Connecting to Ray for ``--engine ray`` (both stages).

Ray is optional (``pip install 'featcache[ray]'``) and heavy, so it is imported here, only when a
command asks for it. The mistakes a user can make at this door (Ray not installed, an address
where no cluster answers) become one-line ``UsageError``s: ``ray.init`` on a dead address retries
for minutes, so a plain TCP connect is tried first.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Iterator

from .errors import UsageError

RETRIES = 3  # Ray restarts a lost actor and reruns a lost task this many times
CONNECT_TIMEOUT_S = 5.0
LOCAL_ADDRESSES = ("auto", "local")


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray: Ray is not installed; pip install 'featcache[ray]' (or pip install ray)") \
            from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    try:
        return host, int(port)
    except ValueError:
        raise UsageError(f"--address {address}: the port {port!r} is not a number") from None


def check_reachable(address: str | None) -> None:
    """A UsageError at once when nothing listens at ``address`` (None, auto, local: nothing to check)."""
    if not address or address in LOCAL_ADDRESSES:
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"--address {address}: no Ray cluster answers there ({reason})") from None


def _init(ray: ModuleType, address: str | None) -> None:
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING, "log_to_driver": False}
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        raise UsageError(f"--engine ray: could not start or join Ray at {where}: {exc}") from None


@contextmanager
def connected(address: str | None) -> Iterator[ModuleType]:
    """Ray, joined to ``address`` (None: ``RAY_ADDRESS`` if set, as under ``ray job submit``, else
    a new local instance), shut down afterwards. A session the caller already started (a
    notebook, the tests) is used as it is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_reachable(address)
    _init(ray, address)
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_counts(ray: ModuleType) -> tuple[int, int]:
    """(CPUs, GPUs) of the cluster Ray sees now."""
    res = ray.cluster_resources()
    return int(res.get("CPU", 0)), int(res.get("GPU", 0))
