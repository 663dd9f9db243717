"""In-memory backend: the reference semantics, used by stage-2 unit tests."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .errors import MissingNodeError
from .store import STR_DTYPE, ArrayMeta, Capabilities, Store


class MemoryStore(Store):
    backend = "memory"
    capabilities = Capabilities(concurrent_writers=False, readers_while_writing=True)  # one process's memory

    def __init__(self, name: str = "memory", *, read_only: bool = False) -> None:
        super().__init__(f"memory://{name}", read_only=read_only)
        self._attrs: dict[str, dict[str, Any]] = {"": {}}
        self._arrays: dict[str, tuple[np.ndarray, ArrayMeta]] = {}
        self._markers: dict[str, dict[str, Any]] = {}

    def reopen(self, *, read_only: bool) -> "MemoryStore":
        """A second handle on the same data (what opening a path again gives on disk)."""
        other = MemoryStore.__new__(MemoryStore)
        Store.__init__(other, self.path, read_only=read_only)
        other._attrs, other._arrays, other._markers = self._attrs, self._arrays, self._markers
        return other

    def get_attrs(self, node: str) -> dict[str, Any]:
        if node not in self._attrs:
            raise MissingNodeError(self.path, node)
        return copy.deepcopy(self._attrs[node])

    def node_doc(self, node: str) -> dict[str, Any] | None:
        implicit = any(k.startswith(f"{node}/") for k in [*self._arrays, *self._attrs])  # a parent group
        if node not in self._attrs and node not in self._arrays and not implicit:
            return None
        doc: dict[str, Any] = {"attributes": copy.deepcopy(self._attrs.get(node, {}))}
        if node in self._arrays:
            meta = self._arrays[node][1]
            doc.update(shape=list(meta.shape), dtype=meta.dtype, chunk_rows=meta.chunk_rows, compressor=meta.compressor)
        return doc

    def _set_attrs(self, node: str, attrs: dict[str, Any]) -> None:
        self._attrs[node] = copy.deepcopy(attrs)

    def _create_array(self, node, shape, dtype, chunk_rows, compressor) -> None:
        data = np.empty(shape, dtype=object) if dtype == STR_DTYPE else np.zeros(shape, dtype=dtype)
        if dtype == STR_DTYPE:
            data[:] = ""
        self._arrays[node] = (data, ArrayMeta(shape, dtype, chunk_rows, compressor))
        self._attrs.setdefault(node, {})

    def array_meta(self, node: str) -> ArrayMeta:
        return self._arrays[node][1]

    def read(self, node: str, start: int, stop: int) -> np.ndarray:
        return self._arrays[node][0][start:stop].copy()

    def _write(self, node: str, start: int, values: np.ndarray) -> None:
        data = self._arrays[node][0]
        data[start:start + len(values)] = values

    def children(self, node: str) -> list[str]:
        prefix = f"{node}/" if node else ""
        names = {k[len(prefix):].split("/")[0] for k in [*self._arrays, *self._attrs]
                 if k.startswith(prefix) and k != node and k}
        return sorted(names)

    def _put_marker(self, key: str, doc: dict[str, Any]) -> None:
        self._markers[key] = copy.deepcopy(doc)

    def _delete_marker(self, key: str) -> None:
        self._markers.pop(key, None)

    def markers(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._markers)

    def size_on_disk(self) -> int:
        return sum(int(a.nbytes) for a, _ in self._arrays.values())
