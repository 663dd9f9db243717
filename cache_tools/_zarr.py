"""Zarr v3 backend: a local directory or any fsspec URL (s3://, gs://, memory://...).

Done markers are plain JSON files under ``_partitions/`` next to the arrays
(outside the Zarr hierarchy), so concurrent writers that own disjoint
partitions never rewrite a shared metadata document.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec

from .errors import CacheNotFoundError, CorruptCacheError
from .store import STR_DTYPE, ArrayMeta, Store

MARKER_DIR = "_partitions"


def _compressors(name: str):
    if name == "lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
    return None


def _compressor_name(arr: zarr.Array) -> str:
    codecs = arr.compressors
    if not codecs:
        return "none"
    codec = codecs[0]
    cname = getattr(codec, "cname", None)
    return str(getattr(cname, "value", cname) or type(codec).__name__).lower()


class ZarrStore(Store):
    backend = "zarr"

    def __init__(self, path: str, *, read_only: bool = True, create: bool = False,
                 overwrite: bool = False, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(str(path), read_only=read_only)
        self._arrays: dict[str, Any] = {}
        self._fs, self._root = fsspec.core.url_to_fs(self.path, **(storage_options or {}))
        exists = self._fs.exists(f"{self._root}/zarr.json")
        if create:
            if exists and not overwrite:
                raise FileExistsError(f"{self.path}: a store already exists here (pass overwrite to replace it)")
            if overwrite and self._fs.exists(self._root):
                self._fs.rm(self._root, recursive=True)
            mode = "w"
        else:
            if not exists:
                raise CacheNotFoundError(f"{self.path}: no Zarr store here (no zarr.json)")
            mode = "r" if read_only else "r+"
        opts = None if isinstance(self._fs, LocalFileSystem) else storage_options
        try:
            # Never consolidated metadata: a snapshot of the hierarchy would hide teachers added later.
            self._group = zarr.open_group(self.path, mode=mode, storage_options=opts, use_consolidated=False)
        except (ValueError, json.JSONDecodeError) as exc:
            raise CorruptCacheError(f"{self.path}: unreadable Zarr metadata ({exc})") from exc

    def _node(self, node: str):
        return self._group[node] if node else self._group

    def get_attrs(self, node: str) -> dict[str, Any]:
        return dict(self._node(node).attrs)

    def _set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        if node and node not in self._group:
            self._group.require_group(node)
        self._node(node).attrs.put(attrs)

    def _create_array(self, node, shape, dtype, chunk_rows, compressor) -> None:
        self._arrays.pop(node, None)
        chunks = (max(1, min(chunk_rows, shape[0] or 1)), *shape[1:]) if shape else ()
        self._group.create_array(node, shape=shape, dtype=str if dtype == STR_DTYPE else dtype,
                                 chunks=chunks, compressors=_compressors(compressor),
                                 fill_value="" if dtype == STR_DTYPE else 0, overwrite=True)

    def array_meta(self, node: str) -> ArrayMeta:
        arr = self._array(node)
        if not isinstance(arr, zarr.Array):
            raise KeyError(node)
        dtype = STR_DTYPE if arr.dtype.kind in ("T", "U", "O") else arr.dtype.name
        return ArrayMeta(tuple(arr.shape), dtype, int(arr.chunks[0]), _compressor_name(arr))

    def _array(self, node: str) -> zarr.Array:
        # Opening an array reads its zarr.json: one GET per call on object storage (~40% of a
        # chunk read on loopback S3). Arrays never change shape once created, so keep the handle.
        arr = self._arrays.get(node)
        if arr is None:
            arr = self._arrays[node] = self._group[node]
        return arr

    def read(self, node: str, start: int, stop: int) -> np.ndarray:
        try:
            out = self._array(node)[start:stop]
        except (ValueError, RuntimeError, OSError) as exc:
            raise CorruptCacheError(f"{self.path}: {node} rows {start}:{stop} do not decode ({exc})") from exc
        return out.astype(object) if out.dtype.kind == "T" else out

    def take(self, node: str, rows: np.ndarray) -> np.ndarray:
        # Zarr groups the rows by chunk itself and fetches the chunks concurrently.
        out = self._array(node).oindex[np.asarray(rows, dtype=np.int64)]
        return out.astype(object) if out.dtype.kind == "T" else out

    def _write(self, node: str, start: int, values: np.ndarray) -> None:
        self._array(node)[start:start + len(values)] = values

    def _forget_listings(self) -> None:
        """Other processes add teachers and markers: list again instead of trusting fsspec's cache."""
        self._fs.invalidate_cache()
        fs = getattr(self._group.store, "fs", None)
        if fs is not None:
            fs.invalidate_cache()

    def children(self, node: str) -> list[str]:
        self._forget_listings()
        with warnings.catch_warnings():  # the marker folder is ours, not a Zarr node
            warnings.filterwarnings("ignore", message=f".*{MARKER_DIR}.*not recognized")
            return sorted(k for k in self._node(node).keys() if k != MARKER_DIR)

    def _marker_path(self, key: str) -> str:
        return f"{self._root}/{MARKER_DIR}/{key}.json"

    def _put_marker(self, key: str, doc: dict[str, Any]) -> None:
        path, data = self._marker_path(key), json.dumps(doc, sort_keys=True).encode()
        if isinstance(self._fs, LocalFileSystem):
            # Write then rename: a reader never sees half a marker.
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            self._fs.pipe_file(path, data)  # object stores publish a PUT atomically

    def _delete_marker(self, key: str) -> None:
        path = self._marker_path(key)
        if self._fs.exists(path):
            self._fs.rm(path)

    def markers(self) -> dict[str, dict[str, Any]]:
        base = f"{self._root}/{MARKER_DIR}"
        self._forget_listings()
        try:
            paths = [p for p in self._fs.find(base) if p.endswith(".json")]
        except FileNotFoundError:
            return {}
        # a marker deleted between the listing and the read (its partition is being rewritten) is not done
        blobs = self._fs.cat(paths, on_error="omit") if paths else {}
        prefix = len(self._fs._strip_protocol(base)) + 1
        out = {}
        for path, blob in blobs.items():
            key = self._fs._strip_protocol(path)[prefix:-len(".json")]
            try:
                out[key] = json.loads(blob)
            except json.JSONDecodeError as exc:
                raise CorruptCacheError(f"{self.path}: marker {key} is not valid JSON") from exc
        return out

    def size_on_disk(self) -> int:
        # one listing with sizes: fsspec's du() re-reads each key's info, which fails on a key
        # another writer replaces (or an object store lists) between the two calls
        self._forget_listings()
        return int(sum(info.get("size") or 0 for info in self._fs.find(self._root, detail=True).values()))
