"""Worker I of N, for any scheduler (SLURM arrays, Kubernetes indexed jobs, a shell loop).

``featcache-extract CONFIG --worker I/N`` takes every N-th partition starting at I (of those not
done) and exits; workers need no process group, so they may start, stop and rerun in any order.
Before any partition the store must be prepared (created, teachers added, the source's index kept):
``--prepare`` does it, or the first worker that wins ``<store>.prepare.lock`` (an exclusive create,
which only one process can win on a local or shared POSIX filesystem). The others wait until
``<store>.prepared`` exists. On object storage there is no exclusive create here: worker 0
prepares and the others wait, so run ``--prepare`` first there.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Callable, Sequence

from featcache.cache_tools import FeatureCache
from featcache.plumbing import atomic, storage
from featcache.plumbing.cli import parse_worker  # noqa: F401 - pipeline.cli's and the tests' name for it
from featcache.plumbing.errors import UsageError

POLL_S = 0.5
# A test hook: "P:DIR" makes the process that starts partition P write its pid to DIR/held and
# wait there (once), so that a test kills it inside that partition, not before or after it.
HOLD_ENV = "FEATCACHE_TEST_HOLD_PARTITION"
HOLD_S = 300.0


def hold_if_asked(p: int) -> None:
    hold = os.environ.get(HOLD_ENV, "")
    if not hold:
        return
    part, folder = hold.split(":", 1)
    marker = os.path.join(folder, "held")
    if int(part) == p and not os.path.exists(marker):
        atomic.write_text(marker, str(os.getpid()))
        time.sleep(HOLD_S)


def partitions_to_do(cache: FeatureCache, teachers: Sequence[str], log) -> tuple[dict[str, set[int]], list[int]]:
    """This run's parts' done markers and the partitions any of them lacks; says how many were done.
    Only this run's parts: another process may be adding its own teacher to the store right now.
    Read once: during a run each partition has one writer."""
    ours = [cache.index.key, *(cache.teacher(name).key for name in teachers)]
    done = cache.trusted_done(ours)
    todo = [p for p in range(cache.num_partitions) if any(p not in done[part] for part in ours)]
    if cache.num_partitions > len(todo):
        log(f"resuming: {cache.num_partitions - len(todo)} of {cache.num_partitions} partitions already done")
    return done, todo


def ready_path(store: str) -> str:
    return store.rstrip("/") + ".prepared"


def lock_path(store: str) -> str:
    return store.rstrip("/") + ".prepare.lock"


def is_prepared(store: str) -> bool:
    return storage.exists(ready_path(store)) and storage.exists(store)


def mark_prepared(store: str) -> None:
    """Written last, after the store holds everything a worker needs."""
    text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    if storage.is_remote(store):
        fs, path = storage.filesystem(ready_path(store))
        fs.pipe(path, text.encode())
    else:
        atomic.write_text(ready_path(store), text)


def clear_prepared(store: str) -> None:
    """Before a (re)preparation that may overwrite the store: workers must wait for it again."""
    path = ready_path(store)
    if storage.exists(path):
        fs, p = storage.filesystem(path)
        fs.rm(p)


def _try_lock(store: str) -> bool:
    """True for the one process that creates the lock file."""
    try:
        fd = os.open(lock_path(store), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{socket.gethostname()} pid {os.getpid()}\n")
    return True


def prepare_once(store: str, worker: int, prepare: Callable[[], None], log,
                 wait_s: float = 48 * 3600) -> None:
    """Run ``prepare`` in exactly one of the workers unless the store is already prepared; every
    worker returns once it is."""
    if is_prepared(store):
        return
    if storage.is_remote(store):
        won = worker == 0
    else:
        os.makedirs(os.path.dirname(os.path.abspath(store)), exist_ok=True)
        won = _try_lock(store)
    if won:
        try:
            if not is_prepared(store):  # another winner may have prepared and let go of the lock since
                prepare()
                mark_prepared(store)
        finally:
            if not storage.is_remote(store):
                os.remove(lock_path(store))
        return
    log(f"waiting for another worker to prepare {store} "
        + ("(worker 0)" if storage.is_remote(store) else
           f"(it holds {lock_path(store)}; delete that file if its process is gone)"))
    deadline = time.time() + wait_s
    while not is_prepared(store):
        if not storage.is_remote(store) and not os.path.exists(lock_path(store)) and not is_prepared(store):
            return prepare_once(store, worker, prepare, log, deadline - time.time())  # its preparer failed
        if time.time() > deadline:
            raise UsageError(f"{store}: not prepared after {wait_s:.0f} s; run featcache-extract CONFIG --prepare")
        time.sleep(POLL_S)
