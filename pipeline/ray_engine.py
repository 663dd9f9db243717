"""``featcache-extract CONFIG --engine ray``: a pool of Ray actors takes the partitions as they free up.

The driver starts one actor per GPU (or per group of CPUs) at once and loads nothing itself: the
first actor prepares the store (the ``--prepare`` path: source, teachers, the source's index) with
the teachers it then extracts with, so the teachers are never loaded only to size the store, and
the other actors' start-up overlaps that preparation. They then open the source from the store's
index and load the teachers once each, and whichever actor is free is handed the next partition,
so a slow node does less and a lost node's work goes to the others. A partition is written whole
with its done marker, so it is safe to run twice: when an actor's process dies, Ray restarts the
actor and reruns its call (``max_restarts``, ``max_task_retries``), the restarted actor loading
what it needs on its first call; nothing here retries by hand. A rerun skips done partitions.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.locate import capabilities_of
from featcache.plumbing import storage
from featcache.plumbing.config import ConfigError
from featcache.plumbing.errors import UsageError
from featcache.plumbing.ray_cluster import RETRIES, cluster_counts, connected

from .config import ExtractConfig, backend_of
from .outcome import Summary, invalid_log_path, stop_over_budget, write_invalid_log
from .workers import HOLD_ENV, partitions_to_do

if TYPE_CHECKING:
    from featcache.rawdata import Source

    from .teachers import Teacher

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
    """One actor: the source and teachers loaded once (by ``prepare`` or ``load``), then any
    partition it is given. The constructor loads nothing, so that a restarted actor is cheap and
    the driver learns of a wrong config from ``prepare``'s own error."""

    def __init__(self, cfg: ExtractConfig, layers: dict[str, dict[str, Any]], cwd: str, threads: int,
                 hold: str) -> None:
        import torch

        if os.path.isdir(cwd):  # relative paths in the config mean the driver's directory
            os.chdir(cwd)
        storage.install(layers)
        torch.set_num_threads(threads)
        if hold:  # the test hook of workers.py, read by the driver: an actor's environment is Ray's
            os.environ[HOLD_ENV] = hold
        self.cfg = cfg
        self.opened: tuple[Source, list[Teacher]] | None = None
        self.cache: FeatureCache | None = None
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.decode_threads))
        self.quiet = tqdm(disable=True)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        self.pool.shutdown()

    def prepare(self, add_teacher: bool) -> list[str]:
        """Create or check the store (as ``--prepare`` does) and keep the teachers it loaded; the
        lines it would have printed, for the driver to print."""
        from .extract import run_prepare

        lines: list[str] = []
        self.opened = run_prepare(self.cfg, add_teacher=add_teacher, log=lines.append)
        return lines

    def load(self) -> int:
        """The source (from the prepared store's index) and teachers, once; the actor's pid."""
        if self.opened is None:
            from featcache.plumbing.distributed import Dist

            from .prepare import open_on_other_rank

            self.opened = open_on_other_rank(self.cfg, Dist())
        return os.getpid()

    def extract(self, p: int, done: dict[str, set[int]]) -> tuple[int, int, int]:
        """(partition, rows, invalid rows) once partition ``p`` is written and marked done;
        ``done``: the done markers the driver read at the start, for ``p`` alone."""
        from .extract import extract_partition

        self.load()
        if self.cache is None:
            self.cache = FeatureCache.open(self.cfg.output.store, mode="r+", backend=backend_of(self.cfg))
        source, teachers = self.opened
        a, b = self.cache.partition_range(p)
        invalid = extract_partition(self.cfg, self.cache, source, teachers, p, done, self.pool, self.quiet)
        return p, b - a, invalid


def run_extract_ray(cfg: ExtractConfig, *, add_teacher: bool = False, address: str | None = None,
                    workers: int = 0, cpus: int = 0, log=print) -> Summary:
    """Prepare the store on the first actor, extract every partition not done on the pool, and
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
        actors = _start_actors(ray, cfg, pool)
        try:
            preparer = _first_up(ray, actors)  # not actors[0]: that one may wait for a node that never comes
            for line in _get(ray, preparer.prepare.remote(add_teacher)):
                log(line)
            with FeatureCache.open(cfg.output.store, backend=backend_of(cfg)) as cache:
                done, todo = partitions_to_do(cache, [t.name for t in cfg.teachers], log)
                invalid, limit = cache.invalid_rows(), cfg.max_invalid_fraction * cache.rows
                stop_over_budget(cfg, cache, invalid, cache.rows)
            others = [a for a in actors if a is not preparer]
            used = [preparer, *others[:max(0, min(len(actors), len(todo)) - 1)]]
            for spare in others[len(used) - 1:]:
                ray.kill(spare)
            log(f"ray: {len(used) if todo else 0} actors ({pool.cpus} CPU" + (f", {pool.gpus} GPU" if pool.gpus else "")
                + f" each) for {len(todo)} partitions")
            t0 = time.time()
            work = Work(todo, done, invalid, limit)
            rows_done, invalid = _run_pool(ray, used, work)
            seconds = time.time() - t0
            _close(ray, used)  # their stores closed before the driver reopens it (HDF5: one writer)
        finally:
            for a in actors:
                ray.kill(a)
    final = FeatureCache.open(cfg.output.store, backend=backend_of(cfg))
    try:
        stop_over_budget(cfg, final, invalid, final.rows)
        logged = write_invalid_log(final, invalid_log_path(cfg.output.store))
        dims = {t.name: int(final.teacher_info(t.name)["dim"]) for t in cfg.teachers}
        return Summary(final.path, final.rows, int(final.valid.sum()), dims, rows_done, seconds,
                       final.size_on_disk(), final.is_complete, logged)
    finally:
        final.close()


@dataclass
class Work:
    """The partitions to hand out, the done markers read at the start, and the invalid-row budget."""

    todo: list[int]
    done: dict[str, set[int]]
    invalid: int
    limit: float

    def marks(self, p: int) -> dict[str, set[int]]:
        """``done`` for partition ``p`` alone: all an actor needs of it."""
        return {part: {p} & ps for part, ps in self.done.items()}


def _start_actors(ray, cfg: ExtractConfig, pool: Pool) -> list[Any]:
    """The pool's actors, started now; they load nothing until asked (``prepare``, ``load``)."""
    actor_cls = ray.remote(PartitionWorker).options(num_cpus=pool.cpus, num_gpus=pool.gpus,
                                                    max_restarts=RETRIES, max_task_retries=RETRIES)
    args = (cfg, storage.snapshot(), os.getcwd(), pool.cpus, os.environ.get(HOLD_ENV, ""))
    return [actor_cls.remote(*args) for _ in range(pool.actors)]


def _first_up(ray, actors: list[Any]) -> Any:
    """The first actor whose process is up (Ray places them in no promised order)."""
    pings = {a.pid.remote(): a for a in actors}
    (ref,), _ = ray.wait(list(pings), num_returns=1)
    _get(ray, ref)
    return pings[ref]


def _close(ray, actors: list[Any], wait_s: float = 60.0) -> None:
    """Each actor's store closed (waited for up to ``wait_s``); ``ray.kill`` alone does not wait."""
    ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=wait_s)


def _get(ray, ref) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        raise _failure(ray, exc) from None


def _run_pool(ray, actors: list[Any], work: Work) -> tuple[int, int]:
    """(rows done, invalid rows so far): the first actor (it prepared, so it is loaded) starts at once, the
    others once loaded; each is handed the next partition whenever it finishes one; handing out
    stops once the inputs that failed exceed the budget."""
    if not work.todo:
        return 0, work.invalid
    loading = {a.load.remote(): a for a in actors[1:]}
    running: dict[Any, Any] = {}
    queue, rows_done, invalid = deque(work.todo), 0, work.invalid
    first = queue.popleft()
    running[actors[0].extract.remote(first, work.marks(first))] = actors[0]
    bar = tqdm(total=len(work.todo), unit="partition", desc="extract (ray)", disable=None)
    try:
        while running or (queue and loading and invalid <= work.limit):
            (ref,), _ = ray.wait([*loading, *running], num_returns=1)
            actor = loading.pop(ref) if ref in loading else running.pop(ref)
            value = _get(ray, ref)
            if not isinstance(value, int):  # a partition, not an actor's load()
                _p, rows, bad = value
                rows_done, invalid = rows_done + rows, invalid + bad
                bar.update(1)
            if queue and invalid <= work.limit:
                p = queue.popleft()
                running[actor.extract.remote(p, work.marks(p))] = actor
    finally:
        bar.close()
    return rows_done, invalid


def _failure(ray, exc: Exception) -> Exception:
    """An actor's own error (a bad input, a store problem) as it was raised there, the actor's
    traceback added as a note (``--debug`` prints it); an actor lost for good (its restarts spent,
    or its constructor failed) as one line that says a rerun continues; anything else as the last
    line of what Ray reports."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and not type(cause).__module__.startswith("ray"):
        if hasattr(cause, "add_note"):
            cause.add_note(f"raised in a Ray actor:\n{str(exc).strip()}")
        return cause
    lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    if isinstance(exc, ray.exceptions.RayActorError):
        return ConnectionError(f"--engine ray: an actor died and Ray gave up on it ({lines[0]}); rerun the command: "
                               "done partitions are skipped")
    return RuntimeError(f"--engine ray: an actor failed: {lines[-1].strip()}")
