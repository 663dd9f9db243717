"""Zarr v3 backend: a local directory or any fsspec URL (s3://, gs://, memory://...).

Done markers are Zarr groups of their own, ``_partitions/<part>/<partition>/zarr.json``, the
marker document as the group's attributes: one file each, so concurrent writers that own
disjoint partitions never rewrite a shared metadata document, and inside the Zarr hierarchy
(``_partitions`` and each part's folder are empty groups), so zarr-python lists a store without
warning about objects it does not recognise. Stores written before keep their markers as
``_partitions/<part>/<partition>.json`` files: they are read as before, and a marker rewritten
is written the new way.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync

from featcache.plumbing import atomic

from .errors import CacheNotFoundError, CorruptCacheError, MissingNodeError
from .store import STR_DTYPE, UNREADABLE, ArrayMeta, Capabilities, Store, chunk_groups

MARKER_DIR = "_partitions"
# the document of the groups that hold markers; written only where missing, with these same bytes by whoever does
GROUP_DOC = {"zarr_format": 3, "node_type": "group", "attributes": {}}


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    # each writer owns whole chunks (partitions) and one marker file each: no shared document
    capabilities = Capabilities(concurrent_writers=True, readers_while_writing=True)

    def __init__(self, path: str, *, read_only: bool = True, create: bool = False,
                 overwrite: bool = False, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(str(path), read_only=read_only)
        self._arrays: dict[str, Any] = {}
        self._marker_groups: set[str] = set()  # marker folders known to have their group document
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
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # zarr's ways to refuse a damaged zarr.json
            raise CorruptCacheError(f"{self.path}: unreadable Zarr metadata ({type(exc).__name__}: {exc})") from exc

    def _node(self, node: str):
        if not node:
            return self._group
        try:
            return self._group[node]
        except KeyError:
            raise MissingNodeError(self.path, node) from None
        except Exception as exc:  # noqa: BLE001 - zarr's many ways to refuse a damaged zarr.json
            raise CorruptCacheError(f"{self.path}: {node}: metadata does not decode "
                                    f"({type(exc).__name__}: {exc})") from exc

    def get_attrs(self, node: str) -> dict[str, Any]:
        return dict(self._node(node).attrs)

    def _set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        if node and node not in self._group:
            self._group.require_group(node)
        self._node(node).attrs.put(attrs)
        if isinstance(self._fs, LocalFileSystem):  # zarr renames the document into place; make it durable
            doc = f"{self._root}/{node}/zarr.json" if node else f"{self._root}/zarr.json"
            _fsync(doc)
            atomic.fsync_dir(os.path.dirname(doc))

    def node_doc(self, node: str) -> dict[str, Any] | None:
        # The zarr.json bytes as written, not zarr-python's model of them: a change that zarr
        # would ignore or normalise away still changes the checksum.
        path = f"{self._root}/{node}/zarr.json" if node else f"{self._root}/zarr.json"
        try:
            doc = json.loads(self._fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCacheError(f"{self.path}: {node or '/'}: metadata is not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise CorruptCacheError(f"{self.path}: {node or '/'}: metadata is not a JSON object")
        doc.setdefault("attributes", {})
        return doc

    def _create_array(self, node, shape, dtype, chunk_rows, compressor) -> None:
        self._arrays.pop(node, None)
        chunks = (max(1, min(chunk_rows, shape[0] or 1)), *shape[1:]) if shape else ()
        self._group.create_array(node, shape=shape, dtype=str if dtype == STR_DTYPE else dtype,
                                 chunks=chunks, compressors=_compressors(compressor),
                                 fill_value="" if dtype == STR_DTYPE else 0, overwrite=True)

    def array_meta(self, node: str) -> ArrayMeta:
        arr = self._array(node)
        if not isinstance(arr, zarr.Array):
            raise MissingNodeError(self.path, node)
        dtype = STR_DTYPE if arr.dtype.kind in ("T", "U", "O") else arr.dtype.name
        return ArrayMeta(tuple(arr.shape), dtype, int(arr.chunks[0]), _compressor_name(arr))

    def _array(self, node: str) -> zarr.Array:
        # Opening an array reads its zarr.json: one GET per call on object storage (~40% of a
        # chunk read on loopback S3). Arrays never change shape once created, so keep the handle.
        arr = self._arrays.get(node)
        if arr is None:
            arr = self._arrays[node] = self._node(node)
        return arr

    def read(self, node: str, start: int, stop: int) -> np.ndarray:
        try:
            out = self._array(node)[start:stop]
        except (ValueError, RuntimeError, OSError) as exc:
            raise CorruptCacheError(f"{self.path}: {node} rows {start}:{stop} do not decode ({exc})") from exc
        return out.astype(object) if out.dtype.kind == "T" else out

    def take(self, node: str, rows: np.ndarray) -> np.ndarray:
        # One call into zarr's event loop for the whole selection, so its chunks are fetched
        # concurrently (at most async.concurrency at once), each as a plain slice decoded straight
        # into its place in the result: an orthogonal selection of row ids (oindex) decoded the
        # same whole chunks ~4x slower here, and a concatenation would copy every byte again.
        arr = self._array(node)
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows) or arr.dtype.kind in ("T", "U", "O"):
            return super().take(node, rows)
        out = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
        async_arr = arr.async_array
        limit = asyncio.Semaphore(max(1, int(zarr.config.get("async.concurrency") or 10)))

        async def one(group: np.ndarray, at: int) -> None:
            lo, hi = int(group[0]), int(group[-1]) + 1
            async with limit:
                if hi - lo == len(group):  # every row of the span: decode into the result
                    view = default_buffer_prototype().nd_buffer.from_ndarray_like(out[at:at + len(group)])
                    await async_arr.get_orthogonal_selection((slice(lo, hi),), out=view)
                else:
                    out[at:at + len(group)] = np.asarray(await async_arr.getitem((slice(lo, hi),)))[group - lo]

        async def every() -> None:
            groups = chunk_groups(rows, int(arr.chunks[0]))
            starts = np.cumsum([0, *map(len, groups)])
            await asyncio.gather(*(one(g, int(at)) for g, at in zip(groups, starts)))

        try:
            zarr_sync(every())
        except (ValueError, RuntimeError, OSError) as exc:
            raise CorruptCacheError(f"{self.path}: {node} rows {rows[0]}..{rows[-1]} do not decode ({exc})") from exc
        return out

    def _write(self, node: str, start: int, values: np.ndarray) -> None:
        arr = self._array(node)
        arr[start:start + len(values)] = values
        if isinstance(self._fs, LocalFileSystem) and len(values):
            self._sync_chunks(node, arr, start, start + len(values))

    def _sync_chunks(self, node: str, arr: zarr.Array, start: int, stop: int) -> None:
        """fsync the chunk files of rows start:stop and their folders, so a done marker written
        next never describes bytes still in the page cache (a power cut would lose them)."""
        rows = int(arr.chunks[0])
        folders = set()
        for c in range(start // rows, (stop - 1) // rows + 1):
            key = arr.metadata.encode_chunk_key((c, *([0] * (arr.ndim - 1))))
            path = f"{self._root}/{node}/{key}"
            folders.add(os.path.dirname(path))
            _fsync(path)  # absent when the chunk is all fill value: zarr wrote no file
        for folder in folders:
            _fsync(folder)

    def _forget_listings(self) -> None:
        """Other processes add teachers and markers: list again instead of trusting fsspec's cache."""
        self._fs.invalidate_cache()
        fs = getattr(self._group.store, "fs", None)
        if fs is not None:
            fs.invalidate_cache()

    def children(self, node: str) -> list[str]:
        self._forget_listings()
        # Listed from the medium, not with zarr's members(): that parses every child's document
        # (concurrently), so one damaged child would hide its siblings.
        base = f"{self._root}/{node}" if node else self._root
        if not self._fs.isdir(base):
            raise MissingNodeError(self.path, node)
        prefix = len(self._fs._strip_protocol(base).rstrip("/")) + 1
        names = [self._fs._strip_protocol(p)[prefix:] for p in self._fs.ls(base, detail=False)]
        names = [n for n in names if n and n != MARKER_DIR and "/" not in n]
        return sorted(n for n in names if self._fs.exists(f"{base}/{n}/zarr.json"))

    def _marker_path(self, key: str) -> str:
        return f"{self._root}/{MARKER_DIR}/{key}/zarr.json"

    def _legacy_marker_path(self, key: str) -> str:
        """Where stores written before markers were Zarr groups keep them."""
        return f"{self._root}/{MARKER_DIR}/{key}.json"

    def _put_file(self, path: str, data: bytes) -> None:
        if isinstance(self._fs, LocalFileSystem):
            # Write then rename: a reader never sees half a document. A new folder's entry is
            # synced too, or a power cut could lose the marker with the folder holding it.
            folder = os.path.dirname(path)
            if not os.path.isdir(folder):
                os.makedirs(folder, exist_ok=True)
                atomic.fsync_dir(os.path.dirname(folder))
            atomic.write_bytes(path, data)  # fsync'd, renamed, and the rename fsync'd
        else:
            self._fs.pipe_file(path, data)  # object stores publish a PUT atomically

    def _marker_groups_for(self, key: str) -> None:
        """The group documents of ``_partitions`` and of the folders above the marker ``key``."""
        names = key.split("/")[:-1]
        for depth in range(len(names) + 1):
            folder = "/".join([MARKER_DIR, *names[:depth]])
            if folder in self._marker_groups:
                continue
            path = f"{self._root}/{folder}/zarr.json"
            if not self._fs.exists(path):
                self._put_file(path, json.dumps(GROUP_DOC, sort_keys=True).encode())
            self._marker_groups.add(folder)

    def _put_marker(self, key: str, doc: dict[str, Any]) -> None:
        self._marker_groups_for(key)
        self._put_file(self._marker_path(key), json.dumps({**GROUP_DOC, "attributes": doc}, sort_keys=True).encode())

    def _delete_marker(self, key: str) -> None:
        for path in (self._marker_path(key), self._legacy_marker_path(key)):
            if self._fs.exists(path):
                self._fs.rm(path)
        folder = os.path.dirname(self._marker_path(key))
        if isinstance(self._fs, LocalFileSystem) and os.path.isdir(folder):
            try:
                os.rmdir(folder)  # an empty folder would be listed as an object zarr does not recognise
            except OSError:
                pass  # not empty: another writer's temporary file; the marker itself is gone

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
        out: dict[str, dict[str, Any]] = {}
        legacy: dict[str, dict[str, Any]] = {}
        for path, blob in blobs.items():
            name = self._fs._strip_protocol(path)[prefix:]
            try:
                doc = json.loads(blob)
            except (ValueError, UnicodeDecodeError):
                doc = None
            if not name.endswith("zarr.json"):  # a store written before: <key>.json, the marker itself
                legacy[name[:-len(".json")]] = doc if isinstance(doc, dict) else {UNREADABLE: "not a valid JSON document"}
            elif doc == GROUP_DOC:
                continue  # _partitions, or a folder holding markers
            elif name == "zarr.json" or (isinstance(doc, dict) and doc.get("attributes") == {}):
                out[name] = {UNREADABLE: f"{MARKER_DIR}/{name} is not the group document featcache writes there"}
            elif not isinstance(doc, dict) or not isinstance(doc.get("attributes"), dict) or \
                    {**doc, "attributes": {}} != GROUP_DOC:
                out[name[:-len("/zarr.json")]] = {UNREADABLE: "not a Zarr group document holding a marker"}
            else:
                out[name[:-len("/zarr.json")]] = doc["attributes"]
        return {**legacy, **out}

    def size_on_disk(self) -> int:
        # one listing with sizes: fsspec's du() re-reads each key's info, which fails on a key
        # another writer replaces (or an object store lists) between the two calls
        self._forget_listings()
        return int(sum(info.get("size") or 0 for info in self._fs.find(self._root, detail=True).values()))
