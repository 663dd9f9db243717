"""Before any partition: the configured source opened, the teachers built, and the output store
created or reopened and checked to be the same extraction, by rank 0 alone under torchrun.

Rank 0 opens the source from the configured files (a webdataset source walks the tar headers of
every shard the store's index does not cover: on object storage about one request per sample),
creates or checks the store and keeps the source's index in it; the other ranks open the source
after a barrier from that stored index, so every shard is walked once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch

from featcache.cache_tools import CacheNotFoundError, FeatureCache, FingerprintMismatch, \
    dataset_fingerprint
from featcache.cache_tools.locate import creation_cut_off
from featcache.cache_tools.verify import recheck_newest
from featcache.plumbing import storage
from featcache.plumbing.config import ConfigError
from featcache.plumbing.distributed import Dist, all_sum
from featcache.plumbing.errors import UsageError
from featcache.rawdata import Source
from featcache.rawdata.configured import open_source_config
from featcache.rawdata.views import VIEW_PARAMS

from .config import ExtractConfig, backend_of
from .teachers import Teacher, best_device, build_teacher


MAIN_RANK_WAIT = timedelta(hours=48)  # how long the other ranks wait for rank 0's walk (and teacher load)


def _existing_store(cfg: ExtractConfig, backend: str | None) -> FeatureCache | None:
    """The output store to resume (open for writing), or None: none there, overwrite asked, or a
    creation cut off before its attributes (started again)."""
    out = cfg.output
    # a new s3:// prefix holds no key yet: nothing exists there
    if out.overwrite or not storage.exists(out.store):
        return None
    try:
        return FeatureCache.open(out.store, mode="r+", backend=backend)
    except CacheNotFoundError:
        if not creation_cut_off(out.store, backend):
            raise UsageError(f"{out.store}: exists and is not a featcache store; "
                             "choose another output.store") from None
        return None


def _check_same_extraction(cache: FeatureCache, cfg: ExtractConfig, source: Source) -> None:
    out = cfg.output
    fp = dataset_fingerprint(source.sample_ids, source.labels)
    if cache.dataset_fingerprint != fp:
        raise FingerprintMismatch(
            f"{out.store}: holds another dataset (fingerprint {cache.dataset_fingerprint[:12]}, this "
            f"source {fp[:12]}); use another output.store, or output.overwrite = true")
    if cache.source != source.describe():
        raise FingerprintMismatch(
            f"{out.store}: was built from source {cache.source}, this config reads {source.describe()}; "
            "use another output.store, or output.overwrite = true")
    if cache.views != cfg.views:
        raise FingerprintMismatch(f"{out.store}: holds {cache.views} views per row, this config "
                                  f"asks for {cfg.views}")


def _checked_or_created(cfg: ExtractConfig, existing: FeatureCache | None, kept: dict[str, Any] | None,
                        source: Source, backend: str | None) -> FeatureCache:
    """``existing`` checked against the source (and given the source's index if it changed from
    ``kept``, the index read from it), or a new store for the source, holding its index."""
    if existing is not None:
        _check_same_extraction(existing, cfg, source)
        if source.reopen_index is not None and source.reopen_index != kept:
            existing.set_source_index(source.reopen_index)  # a store made before shard indexes, or a shard re-walked
        return existing
    names = list(VIEW_PARAMS) if cfg.views > 1 else []
    return FeatureCache.create(cfg.output.store, sample_ids=source.sample_ids, labels=source.labels,
                               views=cfg.views, view_param_names=names, partition_rows=cfg.output.partition_rows,
                               split=cfg.source.split, source=source.describe(), source_index=source.reopen_index,
                               backend=backend, overwrite=True)


def open_on_main(cfg: ExtractConfig, add_teacher: bool, dist_: Dist, log) -> tuple[Source, list[Teacher]]:
    """Rank 0 (or the only process): the source, read from the store's index when resuming (the
    index is read once), the teachers, and the store created or checked, left closed."""
    backend = backend_of(cfg)
    existing = _existing_store(cfg, backend)
    try:
        kept = existing.source_index() if existing is not None else None
        source = open_source_config(cfg.source, kept)
        teachers = _teachers_for(cfg, source, dist_, log)
        cache = _checked_or_created(cfg, existing, kept, source, backend)
    except BaseException:
        if existing is not None:
            existing.close()
        raise
    try:
        _check_or_add_teachers(cache, cfg, teachers, add_teacher)
        _recheck_last_written(cache, log)
        if cache.budget_problem(cfg.max_invalid_fraction) is None:  # else the run stops, changing nothing
            cache.set_max_invalid_fraction(cfg.max_invalid_fraction)
    finally:
        cache.close()
    return source, teachers


def open_on_other_rank(cfg: ExtractConfig, dist_: Dist) -> tuple[Source, list[Teacher]]:
    """A rank other than 0, after rank 0 prepared the store: the source from the index it keeps."""
    with FeatureCache.open(cfg.output.store, backend=backend_of(cfg)) as cache:
        kept = cache.source_index()
    source = open_source_config(cfg.source, kept)
    return source, _teachers_for(cfg, source, dist_, lambda _m: None)


def _teachers_for(cfg: ExtractConfig, source: Source, dist_: Dist, log) -> list[Teacher]:
    """The teachers on this rank's device, built once the source's modality is known; says what
    runs where, and how the source was opened (walked, or from the store's index)."""
    if source.modality == "text" and cfg.views > 1:
        raise ConfigError("views: recorded views are image crops; text sources take views = 1")
    device = best_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_.local_rank)
    teachers = [build_teacher(t, device, source.modality) for t in cfg.teachers]
    names = ", ".join(f"{t.name} (dim {t.dim})" for t in teachers) or "none (index only)"
    log(f"source {source.kind} ({source.modality}): {len(source)} rows; teachers: {names}; device {device}")
    if note := _index_note(source.reopen_index, source.walked, dist_.rank if dist_.world > 1 else None):
        log(note)
    return teachers


def _index_note(index: dict[str, Any] | None, walked: int, rank: int | None) -> str:
    """Whether this process walked the shard headers or read them from the store's index."""
    if not index or not isinstance(index.get("shards"), dict):
        return ""
    who, total = (f"rank {rank}: " if rank is not None else ""), len(index["shards"])
    if walked:
        return f"{who}walked the tar headers of {walked} of {total} shards (the store keeps their index)"
    return f"{who}{total} shards opened from the store's index (no header walked)"


def report_other_ranks(source: Source, dist_: Dist, log) -> None:
    """Rank 0 says how the other ranks opened the source (a collective: every rank calls it)."""
    if dist_.world == 1 or source.reopen_index is None:
        return
    walked = torch.zeros(dist_.world, dtype=torch.int64)
    walked[dist_.rank] = source.walked
    all_sum(walked)
    for r in range(1, dist_.world):
        log(_index_note(source.reopen_index, int(walked[r]), r))


def _recheck_last_written(cache: FeatureCache, log) -> None:
    """A crash (a power cut) can lose the last bytes written even though their markers are on
    disk: re-read the partitions the last run marked last, and redo those that do not match."""
    checked, problems = recheck_newest(cache)
    if not checked:
        return
    log(f"resume: re-checked the {len(checked)} partitions the last run marked last; "
        + (f"{len(problems)} do not match their markers and are redone: " + "; ".join(problems)
           if problems else "all match their markers"))


def _check_or_add_teachers(cache: FeatureCache, cfg: ExtractConfig, teachers: list[Teacher],
                           add_teacher: bool) -> None:
    present = set(cache.teachers)
    started = bool(present) and bool(cache.index.done())
    new = [t.name for t in teachers if t.name not in present]
    if new and started and not add_teacher:
        raise FingerprintMismatch(
            f"{cache.path}: holds teachers {sorted(present)}; this config adds {new}. Pass --add-teacher to "
            "add them to this store, or use another output.store")
    for t in teachers:  # same name, other model/preprocessing: FingerprintMismatch naming both
        cache.add_teacher(t.name, t.dim, t.spec(), dtype=cfg.output.dtype, compressor=cfg.output.compressor)
