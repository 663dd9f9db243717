"""Find stores and open the right backend for a path."""

from __future__ import annotations

import os
from typing import Any, Iterator

from featcache.plumbing import storage
from featcache.plumbing.errors import UsageError
from ._hdf5 import HDF5_SIGNATURE, HDF5Store
from ._zarr import ZarrStore
from .errors import CacheError, CacheNotFoundError
from .store import Capabilities, Store

BACKENDS = ("zarr", "hdf5")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def _is_url(path: str) -> bool:
    return "://" in path


def detect_backend(path: str) -> str:
    """The backend of an existing store, or the default for a new path (HDF5 by suffix)."""
    path = str(path)
    if not _is_url(path) and os.path.isfile(path):
        with open(path, "rb") as fh:
            if fh.read(8) == HDF5_SIGNATURE:
                return "hdf5"
        if path.endswith(HDF5_SUFFIXES):
            return "hdf5"
        raise CacheNotFoundError(f"{path}: not a featcache store (a file that is not HDF5)")
    if not _is_url(path) and path.endswith(HDF5_SUFFIXES) and not os.path.isdir(path):
        return "hdf5"
    return "zarr"


def capabilities_of(path: str, backend: str | None = None) -> Capabilities:
    """What the backend of ``path`` (or ``backend``) allows, before any store is opened."""
    name = backend or detect_backend(path)
    classes = {"zarr": ZarrStore, "hdf5": HDF5Store}
    if name not in classes:
        raise UsageError(f"backend must be one of {BACKENDS}, got {name!r}")
    return classes[name].capabilities


def open_backend(path: str, *, read_only: bool = True, create: bool = False, overwrite: bool = False,
                 backend: str | None = None, storage_options: dict[str, Any] | None = None) -> Store:
    path = os.fspath(path)
    if not create and not _is_url(path) and not os.path.exists(path):
        raise CacheNotFoundError(f"{path}: no such file or directory")
    backend = backend or detect_backend(path)
    if backend == "zarr":
        return ZarrStore(path, read_only=read_only, create=create, overwrite=overwrite,
                         storage_options=storage.options_for(path, storage_options))
    if backend == "hdf5":
        if _is_url(path):
            raise UsageError(f"{path}: the HDF5 backend needs a local file; use backend='zarr' for URLs")
        return HDF5Store(path, read_only=read_only, create=create, overwrite=overwrite)
    raise UsageError(f"backend must be one of {BACKENDS}, got {backend!r}")


def creation_cut_off(path: str, backend: str | None = None) -> bool:
    """True when ``path`` holds the first arrays of a featcache store but not yet its attributes."""
    try:
        with open_backend(path, read_only=True, backend=backend) as store:
            return "sample_id" in store.children("index")
    except (CacheError, KeyError, OSError, ValueError):
        return False


def find_stores(root: str) -> list[str]:
    """Sorted paths of candidate stores under ``root``: Zarr groups and HDF5 files, not descending into stores.

    A URL (``s3://bucket/prefix``) is walked through fsspec one listing per level; only Zarr
    stores count there (HDF5 needs a local file).
    """
    if storage.is_remote(root):
        fs, base = storage.filesystem(root)
        if not fs.isdir(base):
            raise NotADirectoryError(f"{root}: no such bucket or prefix")
        url = str(root).rstrip("/")  # found stores spelled like the URL the user gave
        return sorted(url + p[len(base):] for p in _walk_remote(fs, base))
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root}: not a directory")
    return sorted(_walk_stores(root))


def _walk_remote(fs: Any, path: str) -> Iterator[str]:
    entries = sorted(fs.ls(path, detail=True), key=lambda e: e["name"])
    if any(e["name"].rstrip("/").rsplit("/", 1)[-1] == "zarr.json" for e in entries):
        yield path
        return
    for entry in entries:
        if entry["type"] == "directory":
            yield from _walk_remote(fs, entry["name"].rstrip("/"))


def _walk_stores(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "zarr.json" in filenames:
            dirnames[:] = []
            yield dirpath
            continue
        for name in sorted(filenames):
            if name.endswith(HDF5_SUFFIXES):
                yield os.path.join(dirpath, name)
