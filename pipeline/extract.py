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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from featcache.cache_tools import (INDEX_PART, CacheError, CacheNotFoundError, FeatureCache, FingerprintMismatch,
                                   dataset_fingerprint)
from featcache.plumbing import atomic, storage
from featcache.plumbing.config import ConfigError
from featcache.plumbing.errors import UsageError
from featcache.plumbing.distributed import Dist, all_sum, barrier, patient_group, setup, teardown
from featcache.cache_tools.locate import detect_backend
from featcache.cache_tools.verify import recheck_newest
from featcache.rawdata import KINDS, InputError, Source, clean_reason, head
from featcache.rawdata.views import EVAL_VIEW, VIEW_PARAMS, apply_view, sample_view

from .config import ExtractConfig, SourceConfig
from featcache.plumbing.paths import resolve_path
from .teachers import Teacher, best_device, build_teacher


class ExtractError(CacheError):
    """The run cannot go on (too many undecodable inputs, inputs changed under a resume)."""


@dataclass(frozen=True)
class Summary:
    """What one extraction run did; ``featcache-extract`` prints it, the Python API returns it."""

    path: str
    rows: int
    valid_rows: int
    teachers: dict[str, int]
    rows_done: int
    seconds: float
    size_bytes: int
    complete: bool
    invalid_log: str | None

    @property
    def rows_per_second(self) -> float:
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0


def source_options(cfg: SourceConfig) -> dict[str, Any]:
    """fsspec options of the source's files: [output.storage] < [source.storage] < --storage-option."""
    return {**cfg.storage, **storage.snapshot()["flags"]}


def open_source_config(cfg: SourceConfig, index: dict[str, Any] | None = None) -> Source:
    """The configured source; ``index`` is what a store kept from opening it before (a resume)."""
    kw: dict[str, Any] = {}
    root = resolve_path(cfg.root)  # pkg:package/dir -> the folder inside the installed package
    if cfg.kind == "fashion_mnist":
        kw = {"root": root or None, "split": cfg.split, "download": cfg.download}
    elif cfg.kind == "manifest":
        if not cfg.path:
            raise ConfigError("source.path: a manifest source needs the manifest file")
        kw = {"path": resolve_path(cfg.path), "root": root or None, "encoding": cfg.encoding,
              "max_image_pixels": cfg.max_image_pixels}
    elif cfg.kind == "parquet":
        if not root:
            raise ConfigError("source.root: a parquet source needs a .parquet file or a folder of them")
        kw = {"root": root, "image_column": cfg.image_column, "path_column": cfg.path_column,
              "text_column": cfg.text_column, "label_column": cfg.label_column, "id_column": cfg.id_column,
              "max_image_pixels": cfg.max_image_pixels, "storage_options": source_options(cfg)}
    elif cfg.kind == "webdataset":
        if not (root or cfg.shards):
            raise ConfigError("source.root: a webdataset source needs its shards (a brace pattern, or source.shards)")
        kw = {"root": [resolve_path(s) for s in cfg.shards] if cfg.shards else root, "max_image_pixels":
              cfg.max_image_pixels, "extensions": list(cfg.extensions), "label_field": cfg.label_field,
              "modality": cfg.modality, "storage_options": source_options(cfg), "index": index}
    else:
        if not root:
            raise ConfigError(f"source.root: a {cfg.kind} source needs its folder")
        kw = {"root": root, **({"max_image_pixels": cfg.max_image_pixels} if cfg.kind == "image_folder" else {})}
    source = KINDS[cfg.kind](**kw)
    return head(source, cfg.limit) if cfg.limit else source


def invalid_log_path(store: str) -> str:
    if "://" in store:
        return os.path.abspath(f"featcache-invalid-{os.path.basename(store.rstrip('/'))}.log")
    return os.path.normpath(store) + ".invalid.log"


# -- the store: create, or reopen and check it is the same extraction -----------------------
# Under torchrun rank 0 alone opens the source from the configured files (a webdataset source walks
# the tar headers of every shard the store's index does not cover: on object storage about one
# request per sample), creates or checks the store and keeps the source's index in it; the other
# ranks open the source after the barrier from that stored index, so every shard is walked once.
MAIN_RANK_WAIT = timedelta(hours=48)  # how long the other ranks wait for rank 0's walk (and teacher load)


def _backend(cfg: ExtractConfig) -> str | None:
    return None if cfg.output.backend == "auto" else cfg.output.backend


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
        if not _cut_off_creation(out.store, backend):
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


def _open_on_main(cfg: ExtractConfig, add_teacher: bool, dist_: Dist, log) -> tuple[Source, list[Teacher]]:
    """Rank 0 (or the only process): the source, read from the store's index when resuming (the
    index is read once), the teachers, and the store created or checked, left closed."""
    backend = _backend(cfg)
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
    finally:
        cache.close()
    return source, teachers


def _open_on_other_rank(cfg: ExtractConfig, dist_: Dist) -> tuple[Source, list[Teacher]]:
    """A rank other than 0, after rank 0 prepared the store: the source from the index it keeps."""
    with FeatureCache.open(cfg.output.store, backend=_backend(cfg)) as cache:
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


def _report_other_ranks(source: Source, dist_: Dist, log) -> None:
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


def _cut_off_creation(path: str, backend: str | None) -> bool:
    """True when ``path`` holds the first arrays of a featcache store but not yet its attributes."""
    from featcache.cache_tools.locate import open_backend
    try:
        with open_backend(path, read_only=True, backend=backend) as store:
            return "sample_id" in store.children("index")
    except (CacheError, KeyError, OSError, ValueError):
        return False


def _check_or_add_teachers(cache: FeatureCache, cfg: ExtractConfig, teachers: list[Teacher],
                           add_teacher: bool) -> None:
    present = set(cache.teachers)
    started = bool(present) and any(cache.done_partitions()[INDEX_PART])
    new = [t.name for t in teachers if t.name not in present]
    if new and started and not add_teacher:
        raise FingerprintMismatch(
            f"{cache.path}: holds teachers {sorted(present)}; this config adds {new}. Pass --add-teacher to "
            "add them to this store, or use another output.store")
    for t in teachers:  # same name, other model/preprocessing: FingerprintMismatch naming both
        cache.add_teacher(t.name, t.dim, t.spec(), dtype=cfg.output.dtype, compressor=cfg.output.compressor)


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
    a, b = cache.partition_range(p)
    need = [t for t in teachers if p not in done[t.name]]
    index_done = p in done[INDEX_PART]
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


def _write_invalid_log(cache: FeatureCache, path: str) -> str | None:
    lines = []
    for key, doc in sorted(cache.store.markers().items()):
        if key.startswith(f"{INDEX_PART}/"):
            lines += [f"{sid}\t{why}" for sid, why in sorted(doc.get("notes", {}).get("invalid", {}).items())]
    if not lines:
        if os.path.exists(path):
            os.remove(path)
        return None
    atomic.write_text(path, "".join(line + "\n" for line in lines))
    return path


def run_extract(cfg: ExtractConfig, *, add_teacher: bool = False, log=print) -> Summary | None:
    """The run's summary; None on the other ranks under torchrun (rank 0 reports for all)."""
    storage.set_options(cfg.output.storage)
    dist_ = setup()
    try:
        summary = _run(cfg, add_teacher, dist_, log if dist_.is_main else (lambda _m: None))
        return summary if dist_.is_main else None
    finally:
        teardown()


def _run(cfg: ExtractConfig, add_teacher: bool, dist_: Dist, log) -> Summary:
    if dist_.world > 1 and (_backend(cfg) or detect_backend(cfg.output.store)) == "hdf5":
        raise ConfigError("output.backend: HDF5 allows one writer; use Zarr under torchrun")
    waiting = patient_group(MAIN_RANK_WAIT) if dist_.world > 1 else None
    if dist_.is_main:
        source, teachers = _open_on_main(cfg, add_teacher, dist_, log)
    barrier(waiting)  # the store exists now, holding the source's index
    if not dist_.is_main:
        source, teachers = _open_on_other_rank(cfg, dist_)
    _report_other_ranks(source, dist_, log)
    cache = FeatureCache.open(cfg.output.store, mode="r+", backend=_backend(cfg))
    done = cache.done_partitions()  # read once: during the run each partition has one writer, this process
    # only this run's parts: another process may be adding its own teacher to the store right now
    ours = [INDEX_PART, *(t.name for t in teachers)]
    todo = [p for p in range(cache.num_partitions) if any(p not in done[part] for part in ours)]
    mine = [p for p in todo if p % dist_.world == dist_.rank]
    skipped = cache.num_partitions - len(todo)
    if skipped:
        log(f"resuming: {skipped} of {cache.num_partitions} partitions already done")
    rows_mine = sum(cache.partition_range(p)[1] - cache.partition_range(p)[0] for p in mine)
    limit = cfg.max_invalid_fraction * len(source)
    invalid_so_far = sum(int(doc.get("invalid", 0)) for key, doc in cache.store.markers().items()
                         if key.startswith(f"{INDEX_PART}/"))
    t0 = time.time()
    bar = tqdm(total=rows_mine, unit="rows", desc="extract", disable=None if dist_.is_main else True)
    with ThreadPoolExecutor(max_workers=max(1, cfg.decode_threads)) as pool:
        for p in mine:
            invalid_so_far += extract_partition(cfg, cache, source, teachers, p, done, pool, bar)
            if invalid_so_far > limit:
                bar.close()
                logged = _write_invalid_log(cache, invalid_log_path(cfg.output.store))
                raise ExtractError(f"{invalid_so_far} inputs failed to decode, more than max_invalid_fraction="
                                   f"{cfg.max_invalid_fraction} of {len(source)}; see {logged}")
    bar.close()
    seconds = time.time() - t0
    barrier()
    final = FeatureCache.open(cfg.output.store, backend=_backend(cfg))
    logged = _write_invalid_log(final, invalid_log_path(cfg.output.store)) if dist_.is_main else None
    rows_done = int(all_sum(torch.tensor([rows_mine], dtype=torch.int64)).item())
    summary = Summary(final.path, final.rows, int(final.valid.sum()), {t.name: t.dim for t in teachers},
                      rows_done, seconds, final.store.size_on_disk(), final.is_complete, logged)
    final.close()
    return summary
