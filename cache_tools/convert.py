"""Copy a store to another backend (Zarr <-> HDF5) and prove the copy equal."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from featcache.plumbing import atomic

from .cache import FeatureCache
from .errors import CacheError
from .locate import detect_backend
from .part import Part
from .part_kinds import IndexPart, InputsPart, TeacherPart

Progress = Callable[[int, int], None]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a.shape == b.shape and np.array_equal(a, b)


def _copy_partitions(src: FeatureCache, dst: FeatureCache, progress: Progress | None) -> None:
    """Every part's partitions that ``src`` has marked done, part by part through its own protocol
    (a cached input set too: a pulled copy trains without the raw inputs, as the original does),
    each read back and compared. A partition whose source marker is missing or fails the trust rule
    is not copied: the copy lacks it as the source does, and says so (``info``, ``verify``)."""
    markers = src.store.markers()
    parts = [(part, dst.part(part.key), part.done(markers)) for part in src.parts()]
    for p in range(src.num_partitions):
        for part, mine, done in parts:
            if p in done:
                values = part.read(p)
                mine.write(p, values, notes={} if isinstance(part, IndexPart) else None)
                back = mine.read(p)
                if any(not _same(v, back[k]) for k, v in values.items()):
                    start, stop = src.partition_range(p)
                    raise CacheError(f"{dst.path}: {part.label} rows {start}:{stop} differ from the source after copy")
        if progress:
            progress(p + 1, src.num_partitions)


def _add_like(dst: FeatureCache, part: Part, compressor: str | None) -> None:
    """``part`` of another store in ``dst``: the same description and fingerprint (``added_at``
    kept), empty; teachers take ``compressor`` when given."""
    if isinstance(part, TeacherPart):
        info = part.info()
        dst.add_teacher(part.name, info["dim"], info["spec"], dtype=info["dtype"],
                        compressor=compressor or info["compressor"], teacher_fingerprint=info["fingerprint"])
    elif isinstance(part, InputsPart):
        info = part.info()
        arrays = {a: (tuple(m["shape"][1:]), m["dtype"]) for a, m in info["arrays"].items()}
        dst.add_inputs(part.name, arrays, info["spec"], compressor=next(iter(info["arrays"].values()))["compressor"])
    dst.part(part.key).copy_definition(part)  # type: ignore[attr-defined]


def _check_equal(src: FeatureCache, dst: FeatureCache) -> None:
    if src.meta != dst.meta or src.max_invalid_fraction != dst.max_invalid_fraction:
        raise CacheError(f"{dst.path}: root metadata differs from {src.path} after copy")
    for what in ("sample_ids", "labels"):  # written at creation; the rest partition by partition, as copied
        if not _same(getattr(src, what), getattr(dst, what)):
            raise CacheError(f"{dst.path}: index {what} differs from {src.path} after copy")
    keys = ("fingerprint", "spec", "dim", "dtype", "shape")
    for name in src.teachers:
        a, b = src.teacher_info(name), dst.teacher_info(name)
        if {k: a[k] for k in keys} != {k: b[k] for k in keys}:
            raise CacheError(f"{dst.path}: teacher {name!r} metadata differs from {src.path} after copy")
    src_m, dst_m = src.store.markers(), dst.store.markers()
    sums = [{(part.key, p): doc["checksum"] for part in cache.parts() for p, doc in part.markers(m).items()}
            for cache, m in ((src, src_m), (dst, dst_m))]
    if sums[0] != sums[1]:
        raise CacheError(f"{dst.path}: partition checksums differ from {src.path} after copy")


def convert(src_path: str, dst_path: str, *, backend: str | None = None, compressor: str | None = None,
            overwrite: bool = False, progress: Progress | None = None) -> FeatureCache:
    """Write ``src`` into a new store at ``dst`` and check values and metadata match: the index,
    every teacher, every cached input set, and the stored source index.

    Local destinations are built beside ``dst`` under a temporary name and swapped into place
    only once complete and verified (``built_beside``): a kill at any moment leaves at ``dst``
    either the old store, whole, or the new one, whole. Remote destinations are written in place
    (an object store has no rename).
    """
    backend = backend or detect_backend(dst_path)
    if "://" in dst_path:
        _write_copy(src_path, dst_path, backend, compressor, progress, overwrite=True)
    else:
        with built_beside(dst_path, overwrite) as build_path:
            _write_copy(src_path, build_path, backend, compressor, progress, overwrite=False)
    return FeatureCache.open(dst_path, backend=backend)


def _write_copy(src_path: str, path: str, backend: str, compressor: str | None, progress: Progress | None, *,
                overwrite: bool) -> None:
    """The copy of ``src`` at ``path``, checked equal, and closed."""
    with FeatureCache.open(src_path) as src:
        dst = FeatureCache.create(path, sample_ids=src.sample_ids, labels=src.labels, views=src.views,
                                  view_param_names=src.view_param_names, partition_rows=src.partition_rows,
                                  split=src.split, source=src.source, backend=backend, overwrite=overwrite,
                                  source_index=src.source_index())
        try:
            dst.update_meta(src.meta, replace=True)
            for part in src.parts():  # the index's description (its budget), each teacher's, each input set's
                _add_like(dst, part, compressor)
            _copy_partitions(src, dst, progress)
            _check_equal(src, dst)
        finally:
            dst.close()


@contextmanager
def built_beside(dst_path: str, overwrite: bool) -> Iterator[str]:
    """A local store's build path beside ``dst_path``, swapped into place when the block ends
    (``atomic.swap_into``) and removed when it fails: ``overwrite`` never removes the old store
    before the new one is whole. ``convert``, ``subset`` and ``retrieve`` write through it."""
    if os.path.lexists(dst_path) and not overwrite:
        raise FileExistsError(f"{dst_path}: already exists (pass --overwrite to replace it)")
    build_path = build_name(dst_path)
    try:
        yield build_path
        atomic.swap_into(build_path, dst_path)
    except BaseException:
        atomic.remove_path(build_path)  # the old store, if any, is still at dst_path, whole
        raise


def build_name(dst_path: str) -> str:
    """Beside ``dst`` (same filesystem, so the swap is a rename), with ``dst``'s extension kept last:
    backend detection by name still sees ``.h5`` or ``.zarr``."""
    stem, ext = os.path.splitext(os.path.normpath(dst_path))
    return f"{stem}.partial-{uuid.uuid4().hex[:8]}{ext}"
