"""``featcache-train sweep ... --engine ray``: each run of the grid is a Ray task.

A task reserves its own CPUs (and GPUs when asked) and Ray places it wherever they are free; its
run writes into the same sweep directory as a sequential sweep, so ``compare`` reads it the same
way. A run is resumable (its checkpoint) and skipped once finished (``results.json``), so a task
whose worker dies is simply run again by Ray (``max_retries``): it continues from the checkpoint.
Ray is imported only here, and only when a sweep asks for it (``import featcache.train`` stays light).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Sequence

from featcache.plumbing import storage
from featcache.plumbing.errors import UsageError
from featcache.plumbing.ray_cluster import RETRIES, connected

from .sweep import Engine, PlannedRun, run_one, status


def _task(run: PlannedRun, threads: int, layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One run on a Ray worker; resumed if an earlier attempt left a checkpoint."""
    storage.install(layers)
    return run_one(run.config, status(run) == "resume", threads)


def ray_results(todo: Sequence[PlannedRun], address: str | None = None, cpus: int = 1,
                gpus: float = 0) -> Iterator[tuple[PlannedRun, dict[str, Any]]]:
    """Every run of ``todo`` as a Ray task (``cpus`` CPUs, used as torch threads, ``gpus`` GPUs
    each; ``ray_engine`` checks them); (run, result) pairs as they finish. A run whose worker was
    lost after every retry comes back failed, like a run that raised."""
    if not todo:
        return
    with connected(address) as ray:
        task = ray.remote(_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES)
        layers = storage.snapshot()
        pending = {task.remote(r, cpus, layers): r for r in todo}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                result = {"ok": False, "error": f"lost on Ray after {RETRIES} retries: {first}"}
            yield run, result


def ray_engine(address: str | None = None, cpus: int = 1, gpus: float = 0) -> Engine:
    """A sweep's runs as Ray tasks (``--engine ray``), its options checked now, before any run."""
    if cpus < 1 or gpus < 0:
        raise UsageError("--ray-cpus (ray_cpus) must be >= 1 and --ray-gpus (ray_gpus) >= 0")
    return partial(ray_results, address=address, cpus=cpus, gpus=gpus)
