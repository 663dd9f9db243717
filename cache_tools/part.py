"""What every part of a store follows: the ``Part`` protocol and the one marker-trust rule.

A part is something a store holds by partition: the index, one teacher, one cached input set
(``part_kinds.py``; the next kind, cached logits say, is one more class there). Each kind names
its node paths, its checksum and its marker counts; this base gives every kind:

- ``write(p, values)``: the old marker removed, the arrays written (each write durable before it
  returns), the done marker last: a partition cut off half-way never counts as done;
- ``done()``: the partitions whose marker passes ``marker_problem``, the one marker-trust rule;
- ``check(p, marker)``: the partition's bytes against that marker, for ``verify``.

Values are passed by name (``{"valid": ..., "params": ...}`` for the index, ``{"features": ...}``
for a teacher, the set's arrays for inputs), so copying a part is ``dst.write(p, src.read(p))``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from .errors import CacheError, ShapeMismatch
from .fingerprint import DOC_CHECKSUM_KEY, doc_checksum, short_pair
from .layout import Layout
from .store import UNREADABLE, Store

Markers = dict[str, dict[str, Any]]


def marker_problem(key: str, doc: dict[str, Any], doc_checksums: bool) -> str | None:
    """Why a done marker cannot be trusted (unreadable, changed since written, or not the marker
    its key says), or None. Such a partition counts as not done, so it is redone."""
    if UNREADABLE in doc:
        return f"marker {key}: {doc[UNREADABLE]}"
    recorded = doc.get(DOC_CHECKSUM_KEY)
    if recorded is None and doc_checksums:
        return f"marker {key}: has no checksum, unlike every marker of this store"
    if recorded is not None and recorded != doc_checksum(doc):
        return ("marker %s: document changed since it was written (checksum %s, now %s)"
                % (key, *short_pair(recorded, doc_checksum(doc))))
    part, _, num = key.rpartition("/")
    if not num.isdigit() or doc.get("part") != part or doc.get("partition") != int(num):
        return (f"marker {key}: says part {doc.get('part')!r} partition {doc.get('partition')!r}, "
                "not what its name says")
    return None


def trusted(markers: Markers, keys: Sequence[str], layout: Layout, doc_checksums: bool) -> dict[str, dict[int, dict]]:
    """For each part key, the markers of this store's partitions that pass ``marker_problem``."""
    found: dict[str, dict[int, dict[str, Any]]] = {key: {} for key in keys}
    for key, doc in markers.items():
        part, _, num = key.rpartition("/")
        if part in found and marker_problem(key, doc, doc_checksums) is None and int(num) < layout.num_partitions:
            found[part][int(num)] = doc
    return found


class Part:
    """What every kind of part shares; a subclass names its arrays, checksum and counts."""

    kind: ClassVar[str]

    def __init__(self, store: Store, layout: Layout, doc_checksums: bool, name: str = "") -> None:
        self.store, self.layout, self.doc_checksums, self.name = store, layout, doc_checksums, name

    # -- what a kind defines -----------------------------------------------------------
    key: str  # the marker prefix: "_index", the teacher's name, "inputs/<name>"
    label: str  # how report lines name it
    node: str  # the group whose document describes it

    def arrays(self) -> dict[str, str]:
        """Value name -> node of each array a partition is written to."""
        raise NotImplementedError

    def nodes(self) -> set[str]:
        """The documents this part's partitions are read through."""
        raise NotImplementedError

    def prepare(self, values: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The values of one partition of ``n`` rows, cast and shape-checked."""
        raise NotImplementedError

    def checksum(self, values: Mapping[str, np.ndarray]) -> str:
        raise NotImplementedError

    def counts(self, values: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Counts the marker records and ``check`` compares (NaN/inf, invalid rows)."""
        return {}

    # -- the protocol -----------------------------------------------------------------
    def marker_key(self, p: int) -> str:
        return f"{self.key}/{p:06d}"

    def write(self, p: int, values: Mapping[str, np.ndarray], notes: Mapping[str, Any] | None = None) -> None:
        """Partition ``p``: its marker removed (a rewritten partition stops counting as done before
        any byte changes), the arrays written and synced, the marker last."""
        start, stop = self.layout.partition_range(p)
        values = self.prepare(values, stop - start)
        self.store.delete_marker(self.marker_key(p))
        for name, node in self.arrays().items():
            self.store.write(node, start, values[name])
        doc = {"part": self.key, "partition": p, "start": start, "stop": stop, "rows": stop - start,
               "written_at": round(time.time(), 3),  # which partitions a resume re-checks: the newest ones
               "checksum": self.checksum(values), **self.counts(values)}
        self.store.put_marker(self.marker_key(p), {**doc, **({"notes": dict(notes)} if notes is not None else {})})

    def read(self, p: int) -> dict[str, np.ndarray]:
        """Partition ``p``'s values by name, as ``write`` takes them."""
        start, stop = self.layout.partition_range(p)
        return {name: self.store.read(node, start, stop) for name, node in self.arrays().items()}

    def markers(self, markers: Markers | None = None) -> dict[int, dict[str, Any]]:
        """The trusted done markers by partition (``markers``: the store's, read once by the caller)."""
        found = self.store.markers() if markers is None else markers
        return trusted(found, [self.key], self.layout, self.doc_checksums)[self.key]

    def done(self, markers: Markers | None = None) -> set[int]:
        return set(self.markers(markers))

    def check(self, p: int, marker: dict[str, Any]) -> tuple[str | None, dict[str, int]]:
        """Why partition ``p`` does not match its (trusted) marker, or None; and the counts found."""
        where = f"{self.label} partition {p}"
        start, stop = self.layout.partition_range(p)
        if (marker.get("start"), marker.get("stop"), marker.get("rows")) != (start, stop, stop - start):
            return (f"{where}: marker covers rows {marker.get('start')}:{marker.get('stop')} "
                    f"({marker.get('rows')} rows), expected {start}:{stop}"), {}
        try:
            values = self.read(p)
            checksum, counts = self.checksum(values), self.counts(values)
        except Exception as exc:  # noqa: BLE001 - whatever damaged bytes raise is a finding, not a crash
            return f"{where}: unreadable ({_why(exc, self.store.path)})", {}
        if checksum != marker.get("checksum"):
            return (f"{where}: checksum mismatch (rows {start}:{stop}; expected %s, found %s)"
                    % short_pair(marker.get("checksum"), checksum)), counts
        recorded = {k: marker.get(k) for k in counts}
        if recorded != counts:
            return f"{where}: marker records {recorded}, the rows hold {counts}", counts
        return None, counts

    # -- reading rows ------------------------------------------------------------------
    def take(self, array: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows in the order given (repeats allowed), read chunk by chunk, never row by row."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.layout.rows):
            raise IndexError(f"{self.store.path}: row ids must be in 0..{self.layout.rows - 1}")
        node = self.arrays()[array]
        if rows.size < 2 or bool((np.diff(rows) > 0).all()):  # sorted and unique (a block read): no copy
            return self.store.take(node, rows)
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self.store.take(node, uniq)[inverse]

    def load(self, array: str) -> np.ndarray:
        """One array in memory, filled partition by partition."""
        node = self.arrays()[array]
        meta = self.store.array_meta(node)
        out = np.empty(meta.shape, dtype=meta.dtype)
        for p in range(self.layout.num_partitions):
            start, stop = self.layout.partition_range(p)
            out[start:stop] = self.store.read(node, start, stop)
        return out

    def _expect_shape(self, what: str, values: np.ndarray, shape: tuple[int, ...]) -> None:
        if tuple(values.shape) != tuple(shape):
            raise ShapeMismatch(f"{self.store.path}: {what} has shape {tuple(values.shape)}, expected {tuple(shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store.path!r}, {self.label!r})"


def _why(exc: BaseException, path: str = "") -> str:
    """One line: a cache error's own message (less the store path), anything else with its type."""
    if not isinstance(exc, CacheError):
        return f"{type(exc).__name__}: {exc}"
    text = str(exc)
    return text[len(path) + 2:] if path and text.startswith(f"{path}: ") else text
