"""Copy a store to another backend (Zarr <-> HDF5) and prove the copy equal."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from featcache.plumbing import atomic

from .cache import INDEX_PART, ROOT_KEY, FeatureCache
from .errors import CacheError
from .locate import detect_backend

Progress = Callable[[int, int], None]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a.shape == b.shape and np.array_equal(a, b)


def _copy_partitions(src: FeatureCache, dst: FeatureCache, progress: Progress | None) -> None:
    done = src.done_partitions()
    total = src.num_partitions
    for p in range(total):
        start, stop = src.partition_range(p)
        index = {}
        if p in done[INDEX_PART]:
            index["valid"] = src.store.read("index/valid", start, stop)
            if src.view_param_names:
                index["view_params"] = src.store.read("views/params", start, stop)
        feats = {t: src.read(t, start, stop) for t in src.teachers if p in done[t]}
        dst.write_partition(p, features=feats, **index)
        for name, values in feats.items():
            if not _same(values, dst.read(name, start, stop)):
                raise CacheError(f"{dst.path}: {name} rows {start}:{stop} differ from the source after copy")
        if progress:
            progress(p + 1, total)
    for name in src.inputs:
        _copy_inputs(src, dst, name)


def _copy_inputs(src: FeatureCache, dst: FeatureCache, name: str) -> None:
    """A cached input set, same spec (so the same fingerprint) and the partitions it has marked:
    a pulled copy trains without the raw inputs, as the original does."""
    info = src.inputs_info(name)
    arrays = {a: (tuple(m["shape"][1:]), m["dtype"]) for a, m in info["arrays"].items()}
    compressor = next(iter(info["arrays"].values()))["compressor"]
    dst.add_inputs(name, arrays, info["spec"], compressor=compressor)
    dst.store.set_attrs(f"inputs/{name}", src.store.get_attrs(f"inputs/{name}"))  # added_at/by kept
    for p in sorted(src.inputs_done(name)):
        start, stop = src.partition_range(p)
        dst.write_inputs_partition(p, name, {a: src.store.read(f"inputs/{name}/{a}", start, stop) for a in arrays})


def _check_equal(src: FeatureCache, dst: FeatureCache) -> None:
    if src.meta != dst.meta or src.max_invalid_fraction != dst.max_invalid_fraction:
        raise CacheError(f"{dst.path}: root metadata differs from {src.path} after copy")
    for node in ("index/sample_id", "index/label", "index/valid"):
        if not _same(src.store.read(node, 0, src.rows), dst.store.read(node, 0, dst.rows)):
            raise CacheError(f"{dst.path}: {node} differs from {src.path} after copy")
    for name in src.teachers:
        a, b = src.teacher_info(name), dst.teacher_info(name)
        if {k: a[k] for k in ("fingerprint", "spec", "dim", "dtype", "shape")} != \
           {k: b[k] for k in ("fingerprint", "spec", "dim", "dtype", "shape")}:
            raise CacheError(f"{dst.path}: teacher {name!r} metadata differs from {src.path} after copy")
    src_m = {k: v["checksum"] for k, v in src.store.markers().items()}
    dst_m = {k: v["checksum"] for k, v in dst.store.markers().items()}
    if src_m != dst_m:
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
            dst.store.set_attrs("", {ROOT_KEY: src.meta})
            dst.store.set_attrs("index", src.store.get_attrs("index"))  # the invalid-row budget
            for name in src.teachers:
                info = src.teacher_info(name)
                dst.add_teacher(name, info["dim"], info["spec"], dtype=info["dtype"],
                                compressor=compressor or info["compressor"],
                                teacher_fingerprint=info["fingerprint"])
                dst.store.set_attrs(f"teachers/{name}", src.store.get_attrs(f"teachers/{name}"))
            dst = FeatureCache(dst.store)  # re-read the copied root metadata
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
