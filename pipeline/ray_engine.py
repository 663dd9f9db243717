"""``featcache-extract CONFIG --engine ray``: a pool of Ray actors takes the partitions as they free up.

The driver prepares the store once (the ``--prepare`` path: store, teachers, the source's index),
then starts one actor per GPU (or per group of CPUs). Each actor opens the source from the
store's index and loads the teachers once, then extracts whatever partition it is handed; an
actor that is free gets the next one, so a slow node does less and a lost node's work goes to the
others. A partition is written whole with its done marker, so it is safe to run twice: when an
actor's process dies, Ray restarts the actor and reruns its partition (``max_restarts``,
``max_task_retries``); nothing here retries by hand. A rerun of the command skips done partitions.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.locate import capabilities_of
from featcache.plumbing import atomic, storage
from featcache.plumbing.config import ConfigError
from featcache.plumbing.errors import UsageError
from featcache.plumbing.ray_cluster import RETRIES, cluster_counts, connected

from .config import ExtractConfig
from .extract import Summary, _stop_over_budget, _write_invalid_log, extract_partition, invalid_log_path, \
    run_prepare
from .prepare import backend_of

# A test hook: "P:DIR" makes the actor that starts partition P write its pid to DIR/held and wait
# there (once), so a test can kill it mid-partition. Read by the driver, handed to the actors.
HOLD_ENV = "FEATCACHE_TEST_HOLD_PARTITION"
HOLD_S = 300.0
CPUS_PER_ACTOR = 4  # a CPU-only actor's share: its teachers' forward passes use these threads


@dataclass(frozen=True)
class Pool:
    """How many actors, and what each reserves."""

    actors: int
    cpus: int
    gpus: int


def plan_pool(cluster_cpus: int, cluster_gpus: int, workers: int = 0, cpus: int = 0) -> Pool:
    """One actor per GPU when the cluster has GPUs (1 CPU each), else one per ``CPUS_PER_ACTOR``
    CPUs; ``workers`` / ``cpus`` (``--ray-workers`` / ``--ray-cpus``) override either."""
    if cluster_gpus > 0:
        return Pool(workers or cluster_gpus, cpus or 1, 1)
    if cpus:
        per = cpus
    elif workers:
        per = max(1, cluster_cpus // workers)
    else:
        per = max(1, min(CPUS_PER_ACTOR, cluster_cpus))
    return Pool(workers or max(1, cluster_cpus // per), per, 0)


class PartitionWorker:
    """One actor: the source and teachers loaded once, then any partition it is given."""

    def __init__(self, cfg: ExtractConfig, done: dict[str, set[int]], layers: dict[str, dict[str, Any]],
                 cwd: str, threads: int, hold: str) -> None:
        import torch

        from featcache.plumbing.distributed import Dist

        from .prepare import open_on_other_rank

        if os.path.isdir(cwd):  # relative paths in the config mean the driver's directory
            os.chdir(cwd)
        storage.install(layers)
        torch.set_num_threads(threads)
        self.cfg, self.done, self.hold = cfg, done, hold
        self.source, self.teachers = open_on_other_rank(cfg, Dist())
        self.cache = FeatureCache.open(cfg.output.store, mode="r+", backend=backend_of(cfg))
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.decode_threads))
        self.quiet = tqdm(disable=True)

    def ready(self) -> int:
        """Answered once the teachers are loaded: the driver hands out partitions only then."""
        return os.getpid()

    def extract(self, p: int) -> tuple[int, int, int]:
        """(partition, rows, invalid rows) once partition ``p`` is written and marked done."""
        self._maybe_hold(p)
        a, b = self.cache.partition_range(p)
        invalid = extract_partition(self.cfg, self.cache, self.source, self.teachers, p, self.done,
                                    self.pool, self.quiet)
        return p, b - a, invalid

    def _maybe_hold(self, p: int) -> None:
        if not self.hold:
            return
        part, folder = self.hold.split(":", 1)
        marker = os.path.join(folder, "held")
        if int(part) == p and not os.path.exists(marker):
            atomic.write_text(marker, str(os.getpid()))
            time.sleep(HOLD_S)


def run_extract_ray(cfg: ExtractConfig, *, add_teacher: bool = False, address: str | None = None,
                    workers: int = 0, cpus: int = 0, log=print) -> Summary:
    """Prepare the store here, extract every partition not done on a pool of Ray actors, and
    return the run's summary (the same store as ``run_extract``'s)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--engine ray: Ray starts its own workers; run one process, not torchrun")
    if workers < 0 or cpus < 0:
        raise UsageError("--ray-workers, --ray-cpus: must be >= 1 (0: the default)")
    storage.set_options(cfg.output.storage)
    with connected(address) as ray:
        pool = plan_pool(*cluster_counts(ray), workers, cpus)
        if pool.actors > 1 and not capabilities_of(cfg.output.store, backend_of(cfg)).concurrent_writers:
            raise ConfigError("output.backend: this store allows one writer; use Zarr with --engine ray, "
                              "or --ray-workers 1")
        run_prepare(cfg, add_teacher=add_teacher, log=log)
        with FeatureCache.open(cfg.output.store, backend=backend_of(cfg)) as cache:
            ours = [cache.index.key, *(cache.teacher(t.name).key for t in cfg.teachers)]
            done = cache.trusted_done(ours)
            todo = [p for p in range(cache.num_partitions) if any(p not in done[part] for part in ours)]
            if cache.num_partitions > len(todo):
                log(f"resuming: {cache.num_partitions - len(todo)} of {cache.num_partitions} partitions already done")
            invalid, limit = cache.invalid_rows(), cfg.max_invalid_fraction * cache.rows
            _stop_over_budget(cfg, cache, invalid, cache.rows)
        log(f"ray: {min(pool.actors, len(todo))} actors ({pool.cpus} CPU" + (f", {pool.gpus} GPU" if pool.gpus else "")
            + f" each) for {len(todo)} partitions")
        t0 = time.time()
        rows_done, invalid = _run_pool(ray, cfg, pool, todo, done, invalid, limit)
        seconds = time.time() - t0
    final = FeatureCache.open(cfg.output.store, backend=backend_of(cfg))
    try:
        _stop_over_budget(cfg, final, invalid, final.rows)
        logged = _write_invalid_log(final, invalid_log_path(cfg.output.store))
        dims = {t.name: int(final.teacher_info(t.name)["dim"]) for t in cfg.teachers}
        return Summary(final.path, final.rows, int(final.valid.sum()), dims, rows_done, seconds,
                       final.size_on_disk(), final.is_complete, logged)
    finally:
        final.close()


def _run_pool(ray, cfg: ExtractConfig, pool: Pool, todo: list[int], done: dict[str, set[int]],
              invalid: int, limit: float) -> tuple[int, int]:
    """(rows done, invalid rows so far): each actor, once loaded, is handed the next partition
    whenever it finishes one; handing out stops once the inputs that failed exceed the budget."""
    if not todo:
        return 0, invalid
    actor_cls = ray.remote(PartitionWorker).options(num_cpus=pool.cpus, num_gpus=pool.gpus,
                                                    max_restarts=RETRIES, max_task_retries=RETRIES)
    args = (cfg, done, storage.snapshot(), os.getcwd(), pool.cpus, os.environ.get(HOLD_ENV, ""))
    actors = [actor_cls.remote(*args) for _ in range(min(pool.actors, len(todo)))]
    loading = {a.ready.remote(): a for a in actors}
    running: dict[Any, Any] = {}
    queue, rows_done = deque(todo), 0
    bar = tqdm(total=len(todo), unit="partition", desc="extract (ray)", disable=None)
    try:
        while running or (queue and loading and invalid <= limit):
            (ref,), _ = ray.wait([*loading, *running], num_returns=1)
            actor = loading.pop(ref) if ref in loading else running.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise _failure(exc) from None
            if not isinstance(value, int):  # a partition, not an actor's ready()
                _p, rows, bad = value
                rows_done, invalid = rows_done + rows, invalid + bad
                bar.update(1)
            if queue and invalid <= limit:
                running[actor.extract.remote(queue.popleft())] = actor
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    return rows_done, invalid


def _failure(exc: Exception) -> Exception:
    """An actor's own error (a bad input, a store problem) as it was raised there; an actor lost
    for good (its restarts spent, or its constructor failed) as one line that says a rerun continues."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and not type(cause).__module__.startswith("ray"):
        return cause
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConnectionError(f"--engine ray: an actor died and Ray gave up on it ({first}); rerun the command: "
                           "done partitions are skipped")
