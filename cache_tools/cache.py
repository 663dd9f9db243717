"""The featcache store: a facade over its parts on any backend.

One store = one dataset split. Its root document (``root.py``) records the format version, the
``Layout``, the dataset fingerprint, split, source and provenance. Everything held by partition is
a part that owns its nodes, checksum and done markers (``part_kinds.py``: ``IndexPart``,
``TeacherPart``, ``InputsPart``, each following the ``Part`` protocol and its one marker-trust rule
in ``part.py``); the source's reopen index is ``source_index.py``; docs/store-format.md draws the
whole tree. ``FeatureCache`` opens and creates stores, lists their parts, and keeps the methods
the stages call, each a delegation to a part.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from . import root
from . import source_index as _source_index
from .errors import CacheError, NotInStoreError
from .layout import DEFAULT_PARTITION_ROWS, TARGET_CHUNK_BYTES, Layout, chunk_rows_for
from .locate import open_backend
from .part import Part, trusted
from .part_kinds import (BUDGET_HINT, INDEX_KEY, INDEX_PART, INPUTS_KEY, TEACHER_KEY, IndexPart, InputsPart,
                         TeacherPart, inputs_checksum)
from .root import DOC_CHECKSUMS, FORMAT_VERSION, ROOT_KEY
from .store import Store

__all__ = ["BUDGET_HINT", "DEFAULT_PARTITION_ROWS", "FORMAT_VERSION", "FeatureCache", "INDEX_KEY", "INDEX_PART",
           "INPUTS_KEY", "ROOT_KEY", "TARGET_CHUNK_BYTES", "TEACHER_KEY", "chunk_rows_for", "inputs_checksum",
           "require_complete"]


class FeatureCache:
    """A featcache store: create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._load()

    def _load(self) -> None:
        self.meta: dict[str, Any] = root.read(self.store)
        self.layout = Layout.of(self.meta)
        self.index = IndexPart(self.store, self.layout, self.has_doc_checksums)
        self._teachers: list[str] | None = None

    # -- opening and creating --------------------------------------------------------
    @classmethod
    def open(cls, target: str | os.PathLike | Store, *, mode: str = "r", backend: str | None = None,
             storage_options: dict[str, Any] | None = None) -> "FeatureCache":
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        if isinstance(target, Store):
            return cls(target)
        store = open_backend(os.fspath(target), read_only=(mode == "r"), backend=backend,
                             storage_options=storage_options)
        try:
            return cls(store)
        except Exception:
            store.close()
            raise

    @classmethod
    def create(cls, target: str | os.PathLike | Store, *, sample_ids: Sequence[str], labels: Sequence[int] | None = None,
               views: int = 1, view_param_names: Sequence[str] = (), partition_rows: int = DEFAULT_PARTITION_ROWS,
               split: str | None = None, source: Mapping[str, Any] | None = None, backend: str | None = None,
               overwrite: bool = False, storage_options: dict[str, Any] | None = None,
               source_index: Mapping[str, Any] | None = None) -> "FeatureCache":
        """A new, empty store for these rows, its root document written last (``root.create``).
        ``source_index``: plain data the source asked to keep (``Source.reopen_index``)."""
        ids, labels_arr = root.rows_of(sample_ids, labels)  # checked before anything is written
        layout = Layout(len(ids), views, partition_rows, tuple(str(p) for p in view_param_names)).check()
        store = target if isinstance(target, Store) else open_backend(
            os.fspath(target), read_only=False, create=True, overwrite=overwrite, backend=backend,
            storage_options=storage_options)
        root.create(store, layout, ids, labels_arr, split=split, source=source, source_index=source_index)
        return cls(store)

    def update_meta(self, extra: Mapping[str, Any], *, replace: bool = False) -> None:
        """Add keys to the root description (``retrieval``), or with ``replace`` take another
        store's as written (``convert``); read back as a reopen would."""
        root.write(self.store, dict(extra) if replace else {**self.meta, **extra})
        self._load()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the source's reopen index (webdataset: the shard index) ----------------------
    def source_index_doc(self) -> dict[str, Any] | None:
        """The description of the stored source index (node, sha256, bytes...), or None."""
        return _source_index.description(self.store)

    def source_index(self, *, strict: bool = False) -> dict[str, Any] | None:
        """The index the source kept when this store was made, or None (``source_index.kept``)."""
        return _source_index.kept(self.store, strict=strict)

    def set_source_index(self, index: Mapping[str, Any]) -> None:
        """Keep (or replace) the source's reopen index; its description is written last."""
        _source_index.write(self.store, index)

    # -- shape of the store ---------------------------------------------------------
    path = property(lambda self: self.store.path)
    backend = property(lambda self: self.store.backend)
    rows = property(lambda self: self.layout.rows)
    views = property(lambda self: self.layout.views)
    partition_rows = property(lambda self: self.layout.partition_rows)
    num_partitions = property(lambda self: self.layout.num_partitions)
    view_param_names = property(lambda self: list(self.layout.view_param_names))
    dataset_fingerprint = property(lambda self: str(self.meta["dataset_fingerprint"]))
    split = property(lambda self: self.meta.get("split"))
    source = property(lambda self: dict(self.meta.get("source") or {}))

    @property
    def has_doc_checksums(self) -> bool:
        """True when every document was written with its checksum (stores before that have none)."""
        return self.meta.get("doc_checksums") == DOC_CHECKSUMS

    def partition_range(self, p: int) -> tuple[int, int]:
        try:
            return self.layout.partition_range(p)
        except IndexError as exc:
            raise IndexError(f"{self.path}: {exc}") from None

    def size_on_disk(self) -> int:
        return self.store.size_on_disk()

    # -- parts --------------------------------------------------------------------------
    @property
    def teachers(self) -> list[str]:
        """Teachers whose array and description are both written (add_teacher writes them in that order)."""
        if self._teachers is None:
            self._teachers = TeacherPart.names(self.store)
        return list(self._teachers)

    @property
    def inputs(self) -> list[str]:
        """Input sets whose arrays and description are both written (add_inputs writes them in that order)."""
        return InputsPart.names(self.store)

    def teacher(self, name: str) -> TeacherPart:
        if name not in self.teachers:
            raise NotInStoreError(f"{self.path}: no teacher {name!r} (has: {', '.join(self.teachers) or 'none'})")
        return TeacherPart(self.store, self.layout, self.has_doc_checksums, name)

    def input_set(self, name: str) -> InputsPart:
        if name not in self.inputs:
            raise NotInStoreError(f"{self.path}: no inputs {name!r} (has: {', '.join(self.inputs) or 'none'})")
        return InputsPart(self.store, self.layout, self.has_doc_checksums, name)

    def parts(self, *, damaged: set[str] | None = None) -> list[Part]:
        """The index, every teacher, every cached input set. ``damaged`` (verify): also the
        teachers and input sets whose description is among these damaged nodes or does not read."""
        teachers = self.teachers if damaged is None else TeacherPart.names(self.store, damaged)
        inputs = self.inputs if damaged is None else InputsPart.names(self.store, damaged)
        args = (self.store, self.layout, self.has_doc_checksums)
        return [self.index, *(TeacherPart(*args, t) for t in teachers), *(InputsPart(*args, n) for n in inputs)]

    def part(self, key: str) -> Part:
        """The part whose markers are ``<key>/<partition>``: ``_index``, a teacher, ``inputs/<name>``."""
        if key == INDEX_PART:
            return self.index
        if key.startswith("inputs/"):
            return self.input_set(key[len("inputs/"):])
        return self.teacher(key)

    def add_teacher(self, name: str, dim: int, spec: Mapping[str, Any], *, dtype: str = "float16",
                    compressor: str = "none", teacher_fingerprint: str | None = None) -> str:
        """Add an empty feature array; re-adding the same teacher is a no-op, a different one refuses."""
        self._teachers = None
        return TeacherPart.add(self.store, self.layout, name, dim, spec, dtype=dtype, compressor=compressor,
                               fp=teacher_fingerprint)

    def add_inputs(self, name: str, arrays: Mapping[str, tuple[tuple[int, ...], str]], spec: Mapping[str, Any], *,
                   compressor: str = "none") -> str:
        """Add empty input arrays (name -> (row shape, dtype)); the same spec again is a no-op, another refuses."""
        return InputsPart.add(self.store, self.layout, name, arrays, spec, compressor=compressor)

    def teacher_info(self, name: str) -> dict[str, Any]:
        return self.teacher(name).info()

    def inputs_info(self, name: str) -> dict[str, Any]:
        return self.input_set(name).info()

    # -- writing partitions ---------------------------------------------------------
    def write_partition(self, p: int, *, features: Mapping[str, np.ndarray] | None = None,
                        valid: np.ndarray | None = None, view_params: np.ndarray | None = None,
                        notes: Mapping[str, Any] | None = None) -> None:
        """Write one partition of the index (``valid``, and ``view_params`` when the store records
        them; ``notes``, plain values such as why rows are invalid, go in its marker) and of each
        teacher in ``features``, each part by its own protocol (``Part.write``)."""
        if view_params is not None and valid is None:
            raise ValueError("view_params are written with valid (the index part)")
        if valid is not None:
            self.index.write(p, {"valid": valid, **({"params": view_params} if view_params is not None else {})},
                             notes=dict(notes or {}))
        for name, values in (features or {}).items():
            self.teacher(name).write(p, {"features": values})

    def write_inputs_partition(self, p: int, name: str, values: Mapping[str, np.ndarray]) -> None:
        """One partition of an input set: its old marker is removed first, the arrays written, the new marker last."""
        self.input_set(name).write(p, values)

    # -- completeness ---------------------------------------------------------------
    def trusted_done(self, parts: Sequence[str]) -> dict[str, set[int]]:
        """For each part key, the partitions whose done marker exists and passes ``part.marker_problem``."""
        found = trusted(self.store.markers(), parts, self.layout, self.has_doc_checksums)
        return {part: set(docs) for part, docs in found.items()}

    def done_partitions(self) -> dict[str, set[int]]:
        """For the index and each teacher, the partitions whose done marker exists and can be trusted."""
        return self.trusted_done([INDEX_PART, *self.teachers])

    def inputs_done(self, name: str) -> set[int]:
        """Partitions of an input set whose done marker exists and can be trusted."""
        return self.trusted_done([f"inputs/{name}"])[f"inputs/{name}"]

    def missing_partitions(self) -> dict[str, list[int]]:
        every = set(range(self.num_partitions))
        return {part: sorted(every - got) for part, got in self.done_partitions().items() if every - got}

    # -- the invalid-row budget: a store over it is not complete ------------------------
    @property
    def max_invalid_fraction(self) -> float | None:
        """The share of rows allowed to be invalid, as the extraction that wrote the index last
        recorded it; None when none was recorded (no limit)."""
        return self.index.max_invalid_fraction

    def set_max_invalid_fraction(self, fraction: float) -> None:
        self.index.set_max_invalid_fraction(fraction)

    def invalid_rows(self) -> int:
        """Rows the trusted index markers count as invalid."""
        return self.index.invalid_rows()

    def budget_problem(self, fraction: float | None = None) -> str | None:
        """Why the store holds more invalid rows than ``fraction`` (default: the recorded budget)
        allows, as one line; None when within it or when there is no budget."""
        return self.index.budget_problem(fraction)

    @property
    def is_complete(self) -> bool:
        """Every partition of the index and of every teacher marked done, within the invalid-row budget."""
        return not self.missing_partitions() and self.budget_problem() is None

    # -- reading --------------------------------------------------------------------
    sample_ids = property(lambda self: self.index.column("sample_id"))
    labels = property(lambda self: self.index.column("label"))
    valid = property(lambda self: self.index.column("valid"))
    view_params = property(lambda self: self.index.column("params"))

    def labeled_rows(self) -> np.ndarray:
        """Valid, labeled rows: what every task-facing step uses (invalid inputs are skipped everywhere)."""
        return np.flatnonzero(self.valid & (self.labels >= 0))

    def chunk_rows(self, teacher: str) -> int:
        return self.teacher(teacher).info()["chunk_rows"]

    def read(self, teacher: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a teacher: the fast path when aligned to chunks."""
        return self.store.read(self.teacher(teacher).arrays()["features"], start, stop)

    def take(self, teacher: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows in the order given (repeats allowed), read chunk by chunk, never row by row."""
        return self.teacher(teacher).take("features", rows)

    def load(self, teacher: str) -> np.ndarray:
        """A teacher's full matrix in memory, filled chunk range by chunk range."""
        return self.teacher(teacher).load("features")

    def take_inputs(self, name: str, array: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of one input array in the order given, read chunk by chunk."""
        return self.input_set(name).take(array, rows)

    def load_inputs(self, name: str, array: str) -> np.ndarray:
        """One input array in memory, read partition by partition."""
        return self.input_set(name).load(array)

    def info(self) -> dict[str, Any]:
        """Everything `featcache-cache info` prints, as plain values."""
        done = {part: len(ps) for part, ps in self.trusted_done([INDEX_PART, *self.teachers,
                                                                 *(f"inputs/{n}" for n in self.inputs)]).items()}
        over_budget = self.budget_problem()
        teachers = {name: {**self.teacher_info(name), "partitions_done": done[name]} for name in self.teachers}
        complete = over_budget is None and all(done[p] == self.num_partitions for p in [INDEX_PART, *teachers])
        return {
            "path": self.path, "backend": self.backend, "format_version": self.meta["format_version"],
            "rows": self.rows, "views": self.views, "view_params": self.view_param_names,
            "partition_rows": self.partition_rows, "partitions": self.num_partitions,
            "index_partitions_done": done[INDEX_PART], "complete": complete,
            "max_invalid_fraction": self.max_invalid_fraction, "over_budget": over_budget,
            "split": self.split, "source": self.source, "dataset_fingerprint": self.dataset_fingerprint,
            "created_by": self.meta.get("created_by"), "created_at": self.meta.get("created_at"),
            "size_on_disk": self.store.size_on_disk(), "teachers": teachers,
            "inputs": {n: {**self.inputs_info(n), "partitions_done": done[f"inputs/{n}"]} for n in self.inputs},
            **{k: self.meta[k] for k in ("retrieval", "subset_of") if k in self.meta},
            **({"source_index": doc} if (doc := self.source_index_doc()) else {}),
        }


def require_complete(cache: FeatureCache, teachers: Sequence[str] | None = None) -> None:
    """Refuse a store that is still being written (or was cut off).

    ``teachers``: only these teachers (and the index) must be complete, so a store stays
    usable while someone adds another teacher to it; None means every teacher.
    """
    missing = cache.missing_partitions()
    if teachers is not None:
        for name in teachers:
            cache.teacher_info(name)  # KeyError naming the teachers present
        missing = {part: ps for part, ps in missing.items() if part == INDEX_PART or part in teachers}
    if missing:
        what = ", ".join(f"{part}: {len(ps)} of {cache.num_partitions}" for part, ps in missing.items())
        hint = "" if teachers is not None else " (or name the complete teachers you need)"
        raise CacheError(f"{cache.path}: store is incomplete (partitions missing for {what}); "
                         f"finish the extraction first{hint}")
    over = cache.budget_problem()
    if over:
        raise CacheError(f"{cache.path}: store is not complete: {over}; {BUDGET_HINT}")
