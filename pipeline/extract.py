"""featcache-extract's engine: read each input once, run every teacher, write partitions.

Partitions are the unit of work and of crash safety: each is computed whole,
written, then marked done. A rerun skips done partitions; under torchrun each
rank takes every world-th partition of one Zarr store. View parameters are drawn
from a generator seeded by (seed, row), so the store does not depend on how the
work was split or resumed.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.locate import capabilities_of, detect_backend
from featcache.plumbing import storage
from featcache.plumbing.config import ConfigError
from featcache.plumbing.errors import UsageError
from featcache.plumbing.distributed import Dist, all_sum, barrier, patient_group, setup, teardown
from featcache.rawdata import InputError, Source, clean_reason
from featcache.rawdata.views import EVAL_VIEW, apply_view, sample_view

from .config import ExtractConfig, backend_of
from .outcome import ExtractError, Summary, invalid_log_path, stop_over_budget, write_invalid_log
from .prepare import MAIN_RANK_WAIT, open_on_main, open_on_other_rank, report_other_ranks
from .teachers import Teacher
from .workers import clear_prepared, hold_if_asked, mark_prepared, partitions_to_do, prepare_once


# -- one partition ------------------------------------------------------------------------
def _decode(source: Source, i: int) -> tuple[Any, str | None]:
    """One row's input, or why not: whatever its decoder raises is about this row only, so it
    marks the row invalid (errors that are not about one row come from writing, not from here)."""
    try:
        return source.load(i), None
    except InputError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return None, f"{source.sample_ids[i]}: {clean_reason(exc)}"


def _view_params(cfg: ExtractConfig, row: int, raw: Any) -> np.ndarray:
    params = np.tile(EVAL_VIEW, (cfg.views, 1))
    if cfg.views > 1 and raw is not None:
        rng = np.random.default_rng([cfg.seed, row])
        for v in range(1, cfg.views):
            params[v] = sample_view(rng, raw.size[0], raw.size[1], scale=(cfg.view_scale_min, 1.0))
    return params


def _decoded_batches(source: Source, start: int, stop: int, batch: int,
                     pool: ThreadPoolExecutor) -> Iterator[tuple[int, list[tuple[Any, str | None]]]]:
    """Decoded batches, the next one decoding while the caller runs the teachers."""
    starts = list(range(start, stop, batch))
    pending = None
    for k, a in enumerate(starts):
        if pending is None:
            pending = pool.map(lambda i: _decode(source, i), range(a, min(a + batch, stop)))
        current = list(pending)
        pending = (pool.map(lambda i: _decode(source, i), range(starts[k + 1], min(starts[k + 1] + batch, stop)))
                   if k + 1 < len(starts) else None)
        yield a, current


def extract_partition(cfg: ExtractConfig, cache: FeatureCache, source: Source, teachers: list[Teacher], p: int,
                      done: dict[str, set[int]], pool: ThreadPoolExecutor, bar: tqdm) -> int:
    """Compute and write partition p for the teachers that lack it (``done``: markers read at start);
    return its invalid row count."""
    hold_if_asked(p)
    a, b = cache.partition_range(p)
    need = [t for t in teachers if p not in done[t.name]]
    index_done = p in done[cache.index.key]
    k = cfg.views
    valid = cache.valid[a:b].copy() if index_done else np.ones(b - a, bool)
    params = (cache.view_params[a:b].copy() if index_done and k > 1 else
              np.tile(EVAL_VIEW, (b - a, k, 1)))
    feats = {t.name: np.zeros((b - a, k, t.dim) if k > 1 else (b - a, t.dim), np.float32) for t in need}
    reasons: dict[str, str] = {}
    for start, decoded in _decoded_batches(source, a, b, cfg.batch_size, pool):
        ok_rows, items = [], []
        for j, (raw, err) in enumerate(decoded):
            r = start + j - a
            if err is not None:
                if index_done and valid[r]:
                    raise ExtractError(f"{source.sample_ids[start + j]}: decoded before, fails now ({err}); "
                                       "the inputs changed since this store was started")
                valid[r] = False
                reasons[source.sample_ids[start + j]] = err
                continue
            if not valid[r]:
                continue
            if not index_done:
                params[r] = _view_params(cfg, start + j, raw)
            ok_rows.append(r)
            items.extend(apply_view(raw, params[r, v]) if v else raw for v in range(k))
        for t in need:
            if ok_rows:
                out = t.encode(t.prepare(items)).numpy()
                feats[t.name][ok_rows] = out.reshape(len(ok_rows), k, t.dim) if k > 1 else out
        bar.update(len(decoded))
    index = {} if index_done else {"valid": valid, **({"view_params": params} if k > 1 else {}),
                                   "notes": {"invalid": reasons}}
    cache.write_partition(p, features=feats, **index)
    return 0 if index_done else int((~valid).sum())


def run_extract(cfg: ExtractConfig, *, add_teacher: bool = False, log=print,
                worker: tuple[int, int] | None = None) -> Summary | None:
    """The run's summary; None on the other ranks under torchrun (rank 0 reports for all).
    ``worker=(i, n)``: this process takes the i-th of n shares of the partitions, with no process
    group (workers.py); the store is complete once every share has run."""
    storage.set_options(cfg.output.storage)
    if worker is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--worker splits the work without torchrun: start one process per worker")
    dist_ = setup()
    try:
        summary = _run(cfg, add_teacher, dist_, log if dist_.is_main else (lambda _m: None), worker)
        return summary if dist_.is_main else None
    finally:
        teardown()


def run_prepare(cfg: ExtractConfig, *, add_teacher: bool = False, log=print) -> tuple[Source, list[Teacher]]:
    """Create (or check) the store, add the teachers and keep the source's index, then mark it
    prepared, so that ``--worker`` processes start on it at once. Returns the source and teachers
    it opened, for a caller that goes on to extract with them (a Ray actor)."""
    storage.set_options(cfg.output.storage)
    clear_prepared(cfg.output.store)
    opened = open_on_main(cfg, add_teacher, Dist(), log)
    mark_prepared(cfg.output.store)
    return opened


def _open_as_worker(cfg: ExtractConfig, add_teacher: bool, index: int, log) -> tuple[Source, list[Teacher]]:
    """The store prepared by exactly one worker (or --prepare), then the source and teachers."""
    opened: list[tuple[Source, list[Teacher]]] = []
    prepare_once(cfg.output.store, index, lambda: opened.append(open_on_main(cfg, add_teacher, Dist(), log)), log)
    if opened:
        return opened[0]
    source, teachers = open_on_other_rank(cfg, Dist())
    with FeatureCache.open(cfg.output.store, backend=backend_of(cfg)) as cache:
        missing = [t.name for t in teachers if t.name not in cache.teachers]
    if missing:
        raise UsageError(f"{cfg.output.store}: was prepared without teachers {missing}; run "
                         "featcache-extract CONFIG --prepare (with --add-teacher to add them) before the workers")
    return source, teachers


def _run(cfg: ExtractConfig, add_teacher: bool, dist_: Dist, log, worker: tuple[int, int] | None = None) -> Summary:
    share, shares = worker or (dist_.rank, dist_.world)
    if shares > 1 and not capabilities_of(cfg.output.store, backend_of(cfg)).concurrent_writers:
        raise ConfigError(f"output.backend: {backend_of(cfg) or detect_backend(cfg.output.store)} allows one writer "
                          "per store; use Zarr under torchrun or with --worker I/N for N > 1")
    if worker is not None:
        source, teachers = _open_as_worker(cfg, add_teacher, share, log)
    else:
        waiting = patient_group(MAIN_RANK_WAIT) if dist_.world > 1 else None
        if dist_.is_main:
            source, teachers = open_on_main(cfg, add_teacher, dist_, log)
        barrier(waiting)  # the store exists now, holding the source's index
        if not dist_.is_main:
            source, teachers = open_on_other_rank(cfg, dist_)
        report_other_ranks(source, dist_, log)
    cache = FeatureCache.open(cfg.output.store, mode="r+", backend=backend_of(cfg))
    done, todo = partitions_to_do(cache, [t.name for t in teachers], log)
    mine = [p for p in todo if p % shares == share]  # by partition id: the same share on every rerun
    rows_mine = sum(cache.partition_range(p)[1] - cache.partition_range(p)[0] for p in mine)
    # a rerun of a run that stopped over budget stops the same way: the rows it found are marked done
    invalid_so_far = cache.invalid_rows()
    stop_over_budget(cfg, cache, invalid_so_far, len(source))
    t0 = time.time()
    bar = tqdm(total=rows_mine, unit="rows", desc="extract", disable=None if dist_.is_main else True)
    with ThreadPoolExecutor(max_workers=max(1, cfg.decode_threads)) as pool:
        for p in mine:
            invalid_so_far += extract_partition(cfg, cache, source, teachers, p, done, pool, bar)
            if invalid_so_far > cfg.max_invalid_fraction * len(source):
                bar.close()
                stop_over_budget(cfg, cache, invalid_so_far, len(source))
    bar.close()
    seconds = time.time() - t0
    barrier()
    final = FeatureCache.open(cfg.output.store, backend=backend_of(cfg))
    logged = write_invalid_log(final, invalid_log_path(cfg.output.store)) if dist_.is_main else None
    rows_done = int(all_sum(torch.tensor([rows_mine], dtype=torch.int64)).item())
    summary = Summary(final.path, final.rows, int(final.valid.sum()), {t.name: t.dim for t in teachers},
                      rows_done, seconds, final.size_on_disk(), final.is_complete, logged)
    final.close()
    return summary
