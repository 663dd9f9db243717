"""HDF5 backend (h5py): one local file, one writer at a time.

Attributes are stored as JSON strings, markers as small string datasets under
``/_partitions``. The file handle is reopened after a fork, because h5py handles
must never be shared between DataLoader workers.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import h5py
import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: HDF5 locks otherwise there, and the probe below is skipped
    fcntl = None  # type: ignore[assignment]

from .errors import CacheNotFoundError, CorruptCacheError, CacheError, MissingNodeError, StoreInUseError
from .store import STR_DTYPE, UNREADABLE, ArrayMeta, Capabilities, Store

MARKER_GROUP = "_partitions"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
INTERNAL = "_featcache_"  # attributes of our own that describe an array: not user attributes


def _plain(value: Any) -> Any:
    """h5py/numpy values as JSON-plain ones, for the checksum of a node's document."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _filter_kwargs(compressor: str) -> dict[str, Any]:
    if compressor == "none":
        return {}
    try:
        import hdf5plugin  # noqa: F401  (registers the LZ4 filter with HDF5)
    except ImportError as exc:
        raise CacheError("lz4 in HDF5 needs the hdf5plugin package (pip install hdf5plugin); "
                         "or use compressor='none'") from exc
    return dict(hdf5plugin.LZ4())


def _is_lock_error(exc: OSError) -> bool:
    """HDF5 could not take the file's lock: another process has the file open (h5py raises
    BlockingIOError, errno EAGAIN, 'unable to lock file')."""
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(exc)


def _in_use(path: str, *, writing: bool) -> str:
    if writing:  # a reader's shared lock keeps a writer out too
        return (f"{path}: in use by another writer or reader (HDF5 allows one writer, and no reader while it "
                "writes); nothing was changed: run this again once they have finished")
    return (f"{path}: in use by another writer (HDF5 locks readers out while it writes); nothing was changed: "
            "run this again once it has finished")


def _refuse_if_locked(path: str) -> None:
    """StoreInUseError when another process holds HDF5's lock on ``path`` (HDF5 takes flock locks:
    shared for readers, exclusive for a writer), probed without changing a byte."""
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not a file we can open: the create that follows says why
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise StoreInUseError(_in_use(path, writing=True)) from exc
    finally:
        os.close(fd)


class HDF5Store(Store):
    backend = "hdf5"
    # one writer per file, and HDF5's lock keeps readers out while it writes
    capabilities = Capabilities(concurrent_writers=False, readers_while_writing=False)

    def __init__(self, path: str, *, read_only: bool = True, create: bool = False,
                 overwrite: bool = False) -> None:
        super().__init__(str(path), read_only=read_only)
        if create:
            if os.path.exists(self.path) and not overwrite:
                raise FileExistsError(f"{self.path}: a store already exists here (pass overwrite to replace it)")
            if os.path.exists(self.path):
                _refuse_if_locked(self.path)  # HDF5 truncates the file before it finds the lock taken
            self._mode = "w"
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        else:
            if not os.path.isfile(self.path):
                raise CacheNotFoundError(f"{self.path}: no such HDF5 file")
            self._mode = "r" if read_only else "r+"
        self._file: h5py.File | None = None
        self._pid = -1
        self._open()
        if create:
            self._mode = "r+"

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, self._mode)
            except OSError as exc:
                if _is_lock_error(exc):
                    raise StoreInUseError(_in_use(self.path, writing=self._mode != "r")) from exc
                with open(self.path, "rb") as fh:
                    is_hdf5 = fh.read(8) == HDF5_SIGNATURE
                what = "is truncated or corrupt" if is_hdf5 else "is not an HDF5 file"
                raise CorruptCacheError(f"{self.path}: {what} ({exc})") from exc
            self._pid = os.getpid()
        return self._file

    @property
    def file(self) -> h5py.File:
        return self._open()

    def _obj(self, node: str):
        if not node:
            return self.file
        try:
            return self.file[node]
        except KeyError:
            raise MissingNodeError(self.path, node) from None

    def get_attrs(self, node: str) -> dict[str, Any]:
        obj = self._obj(node)
        return {k: json.loads(v) for k, v in obj.attrs.items() if not k.startswith(INTERNAL)}

    def node_doc(self, node: str) -> dict[str, Any] | None:
        if node and node not in self.file:
            return None
        obj = self._obj(node)
        try:
            doc: dict[str, Any] = {"attributes": self.get_attrs(node)}
            if isinstance(obj, h5py.Dataset):
                plist = obj.id.get_create_plist()
                doc.update(
                    shape=list(obj.shape), dtype=str(obj.dtype), chunks=_plain(obj.chunks),
                    filters=[_plain(plist.get_filter(i)[:3]) for i in range(plist.get_nfilters())],
                    fillvalue=_plain(obj.fillvalue),
                    internal={k: json.loads(v) for k, v in obj.attrs.items() if k.startswith(INTERNAL)})
        except ValueError as exc:  # an attribute that is not JSON any more
            raise CorruptCacheError(f"{self.path}: {node or '/'}: metadata does not decode ({exc})") from exc
        return doc

    def _set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        if not node:
            obj = self.file
        elif node in self.file:
            obj = self.file[node]
        else:
            obj = self.file.create_group(node)
        for key in [k for k in obj.attrs if not k.startswith(INTERNAL)]:
            del obj.attrs[key]
        for key, value in attrs.items():
            obj.attrs[key] = json.dumps(value, sort_keys=True)

    def _create_array(self, node, shape, dtype, chunk_rows, compressor) -> None:
        chunks = (max(1, min(chunk_rows, shape[0] or 1)), *shape[1:])
        h5dtype = h5py.string_dtype("utf-8") if dtype == STR_DTYPE else np.dtype(dtype)
        if node in self.file:  # left by a creation that was cut off
            del self.file[node]
        ds = self.file.create_dataset(node, shape=shape, dtype=h5dtype, chunks=chunks,
                                      **_filter_kwargs(compressor))
        ds.attrs[f"{INTERNAL}compressor"] = json.dumps(compressor)
        ds.attrs[f"{INTERNAL}chunk_rows"] = json.dumps(chunk_rows)

    def array_meta(self, node: str) -> ArrayMeta:
        ds = self._obj(node)
        if not isinstance(ds, h5py.Dataset):
            raise MissingNodeError(self.path, node)
        is_str = h5py.check_string_dtype(ds.dtype) is not None
        chunk_rows = json.loads(ds.attrs.get("_featcache_chunk_rows", "0")) or ds.chunks[0]
        return ArrayMeta(tuple(ds.shape), STR_DTYPE if is_str else ds.dtype.name, int(chunk_rows),
                         json.loads(ds.attrs.get("_featcache_compressor", '"none"')))

    def read(self, node: str, start: int, stop: int) -> np.ndarray:
        ds = self._obj(node)
        try:
            if h5py.check_string_dtype(ds.dtype) is not None:
                return np.asarray(ds.asstr()[start:stop], dtype=object)
            return ds[start:stop]
        except OSError as exc:
            raise CorruptCacheError(f"{self.path}: {node} rows {start}:{stop} do not decode ({exc})") from exc

    def _write(self, node: str, start: int, values: np.ndarray) -> None:
        self._obj(node)[start:start + len(values)] = values
        self._sync()

    def _sync(self) -> None:
        """HDF5's flush hands the bytes to the OS; fsync puts them on the disk before a marker
        says they are there (a power cut loses the page cache)."""
        self.file.flush()
        try:
            os.fsync(self.file.id.get_vfd_handle())
        except (OSError, ValueError, TypeError):  # a driver without a file descriptor
            pass

    def children(self, node: str) -> list[str]:
        obj = self._obj(node)
        return sorted(k for k in obj.keys() if k != MARKER_GROUP)

    def _put_marker(self, key: str, doc: dict[str, Any]) -> None:
        group = self.file.require_group(MARKER_GROUP)
        if key in group:
            del group[key]
        group.create_dataset(key, data=json.dumps(doc, sort_keys=True), dtype=h5py.string_dtype())
        self._sync()

    def _delete_marker(self, key: str) -> None:
        group = self.file.get(MARKER_GROUP)
        if group is not None and key in group:
            del group[key]
            self.file.flush()

    def markers(self) -> dict[str, dict[str, Any]]:
        group = self.file.get(MARKER_GROUP)
        out: dict[str, dict[str, Any]] = {}
        if group is None:
            return out

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                try:
                    doc = json.loads(obj[()])
                except (ValueError, UnicodeDecodeError):
                    doc = None
                out[name] = doc if isinstance(doc, dict) else {UNREADABLE: "not a valid JSON document"}

        group.visititems(visit)
        return out

    def size_on_disk(self) -> int:
        return os.path.getsize(self.path)

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
