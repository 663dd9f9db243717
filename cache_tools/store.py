"""The abstract store: the few primitives every backend provides.

Everything else (schema, partitions, checksums, reads by row id) lives in
``cache.py`` and is built only from these methods, so a new backend is one
small class. Nodes are slash-separated paths such as ``teachers/clip/features``;
axis 0 of every array is the row axis and arrays are chunked by whole rows.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from featcache.plumbing.errors import UsageError

from .errors import CacheError, ReadOnlyError
from .fingerprint import DOC_CHECKSUM_KEY, doc_checksum, short_pair

STR_DTYPE = "str"  # variable-length UTF-8 strings (sample ids)
UNREADABLE = "_unreadable"  # markers(): the doc of a marker whose bytes do not parse
COMPRESSORS = ("none", "lz4")


@dataclass(frozen=True)
class Capabilities:
    """What a backend allows. Callers ask it (``store.capabilities``, or ``locate.capabilities_of``
    before a store is opened) instead of comparing backend names, as zarr-python's stores answer
    ``supports_writes`` and ``supports_listing``."""

    concurrent_writers: bool  # several processes may write different parts and partitions at once
    readers_while_writing: bool  # a reader may open the store while a writer holds it


@dataclass(frozen=True)
class ArrayMeta:
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or STR_DTYPE
    chunk_rows: int
    compressor: str

    @property
    def row_bytes(self) -> int:
        if self.dtype == STR_DTYPE:
            return 0
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize


def chunk_groups(rows: np.ndarray, chunk_rows: int) -> list[np.ndarray]:
    """Sorted, unique row ids split by the chunk each falls in."""
    return np.split(rows, np.flatnonzero(np.diff(rows // chunk_rows)) + 1)


class Store(abc.ABC):
    """One store on one medium. ``read_only`` is checked before any change."""

    backend: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, path: str, *, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only

    # -- attributes (JSON-plain dicts) -------------------------------------------------
    @abc.abstractmethod
    def get_attrs(self, node: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _set_attrs(self, node: str, attrs: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def node_doc(self, node: str) -> dict[str, Any] | None:
        """The node's whole metadata document as plain values: ``attributes`` plus, for an
        array, everything that says how its bytes decode (shape, dtype, chunks, codecs, fill
        value), read back from the medium as written. None if the node does not exist."""

    # -- arrays -------------------------------------------------------------------------
    @abc.abstractmethod
    def _create_array(self, node: str, shape: tuple[int, ...], dtype: str, chunk_rows: int,
                      compressor: str) -> None: ...

    @abc.abstractmethod
    def array_meta(self, node: str) -> ArrayMeta:
        """Shape, dtype and chunking of ``node``; KeyError if it does not exist."""

    @abc.abstractmethod
    def read(self, node: str, start: int, stop: int) -> np.ndarray: ...

    @abc.abstractmethod
    def _write(self, node: str, start: int, values: np.ndarray) -> None:
        """Write rows ``start:start+len(values)`` and return only once they are durable."""

    @abc.abstractmethod
    def children(self, node: str) -> list[str]:
        """Names of the groups and arrays directly under ``node`` ('' is the root)."""

    # -- done markers: small JSON documents written after the data they describe ----------
    @abc.abstractmethod
    def _put_marker(self, key: str, doc: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _delete_marker(self, key: str) -> None: ...

    @abc.abstractmethod
    def markers(self) -> dict[str, dict[str, Any]]:
        """Every marker by key; one that does not parse is ``{UNREADABLE: why}``."""

    @abc.abstractmethod
    def size_on_disk(self) -> int: ...

    def close(self) -> None:
        """Release file handles; the default has none."""

    # -- helpers built from the primitives ---------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: store is open read-only; open it with mode='r+' to change it")

    def set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        """Replace a node's attributes, with ``doc_checksum``: the checksum of the node's whole
        document (these attributes, and an array's shape, dtype, codecs...) in the same write."""
        self._check_writable()
        attrs = {k: v for k, v in attrs.items() if k != DOC_CHECKSUM_KEY}
        doc = self.node_doc(node)
        if doc is None:  # a new group: create it first, so the write below is the whole document
            self._set_attrs(node, {})
            doc = self.node_doc(node) or {}
        for _ in range(2):  # a second write only if the medium re-serialised the rest differently
            stamp = doc_checksum({**doc, "attributes": attrs})
            self._set_attrs(node, {**attrs, DOC_CHECKSUM_KEY: stamp})
            doc = self.node_doc(node) or {}
            if doc_checksum({**doc, "attributes": attrs}) == stamp:
                return
        raise CacheError(f"{self.path}: {node or '/'}: metadata does not read back as written")

    def doc_problem(self, node: str) -> str | None:
        """Why a node's document fails its checksum; "" when it has none (written before
        featcache kept them), None when it matches."""
        doc = self.node_doc(node)
        if doc is None:
            return f"{node or '/'}: missing"
        attrs = dict(doc.get("attributes") or {})
        recorded = attrs.pop(DOC_CHECKSUM_KEY, None)
        if recorded is None:
            return ""
        found = doc_checksum({**doc, "attributes": attrs})
        if found == recorded:
            return None
        return (f"{node or '/'}: metadata document changed since it was written (checksum %s, now %s)"
                % short_pair(recorded, found))

    def create_array(self, node: str, shape: tuple[int, ...], dtype: str, chunk_rows: int,
                     compressor: str = "none") -> None:
        """A new array whose document carries its checksum (see ``set_attrs``)."""
        self._check_writable()
        if compressor not in COMPRESSORS:
            raise UsageError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")
        self._create_array(node, tuple(int(s) for s in shape), dtype, int(chunk_rows), compressor)
        self.set_attrs(node, {})

    def write(self, node: str, start: int, values: np.ndarray) -> None:
        self._check_writable()
        self._write(node, start, values)

    def put_marker(self, key: str, doc: dict[str, Any]) -> None:
        """Write a done marker carrying its own ``doc_checksum``."""
        self._check_writable()
        doc = {k: v for k, v in doc.items() if k != DOC_CHECKSUM_KEY}
        self._put_marker(key, {**doc, DOC_CHECKSUM_KEY: doc_checksum(doc)})

    def delete_marker(self, key: str) -> None:
        self._check_writable()
        self._delete_marker(key)

    def take(self, node: str, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted, unique indices, read one slice per touched chunk."""
        meta = self.array_meta(node)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, *meta.shape[1:]), dtype=object if meta.dtype == STR_DTYPE else meta.dtype)
        parts = []
        for group in chunk_groups(rows, meta.chunk_rows):
            lo, hi = int(group[0]), int(group[-1]) + 1
            part = self.read(node, lo, hi)
            parts.append(part if hi - lo == len(group) else part[group - lo])
        return np.concatenate(parts)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "r" if self.read_only else "r+"
        return f"{type(self).__name__}({self.path!r}, mode={mode!r})"
