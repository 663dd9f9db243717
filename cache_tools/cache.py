"""The featcache store schema on top of any backend.

Layout (one store = one dataset split)::

    /                          attrs["featcache"]: format version, rows, views, view param
                               names, partition rows, dataset fingerprint, split, source,
                               created_by, created_at
    /index/sample_id  (N,)     str     stable id of each row
    /index/label      (N,)     int64   -1 where unlabeled
    /index/valid      (N,)     bool    False where the input could not be decoded
    /views/params     (N,K,P)  float32 augmentation parameters (only when P > 0)
    /teachers/<name>           attrs["featcache_teacher"]: dim, dtype, fingerprint, spec
    /teachers/<name>/features  (N,K,D) or (N,D) when K = 1
    /inputs/<name>             attrs["featcache_inputs"]: fingerprint, spec, array names
    /inputs/<name>/<array>     (N, ...) a student's inputs (pixels: (N,K,H,W,C) or (N,H,W,C) uint8)
    /source                    attrs["featcache_source_index"]: node, sha256, bytes, kind, shards
    /source/index-<sha>  (B,)  uint8   the source's reopen index (webdataset: per shard its size,
                               member offsets, fingerprint, labels) as zlib'd JSON, so a reopen
                               skips walking every shard's headers
    done markers "<part>/<partition>" (part: _index, a teacher, or inputs/<name>) with row range, count, checksum, NaN/inf counts, written_at

A partition is a chunk-aligned row range of ``partition_rows`` rows. Its data is
written (and synced) first, its marker last; completeness is derived from the markers
only, so a partition cut off half-way never counts as done. Every document (node
attributes, array metadata, markers) carries ``doc_checksum`` (see ``Store.set_attrs``);
a marker that fails it does not count as done either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from featcache.plumbing import provenance
from featcache.rawdata.identity import dataset_fingerprint

from featcache.plumbing.errors import UsageError

from .errors import (CacheError, CacheNotFoundError, CorruptCacheError, FingerprintMismatch, FormatVersionError,
                     NotInStoreError, ShapeMismatch)
from .fingerprint import DOC_CHECKSUM_KEY, array_checksum, doc_checksum, fingerprint, short_pair
from .locate import open_backend
from .store import STR_DTYPE, UNREADABLE, Store

FORMAT_VERSION = 1  # stores with document checksums are still 1: older readers ignore the extra keys
DOC_CHECKSUMS = 1  # root meta "doc_checksums": every document of this store carries its checksum
ROOT_KEY = "featcache"
TEACHER_KEY = "featcache_teacher"
INPUTS_KEY = "featcache_inputs"
INDEX_KEY = "featcache_index"  # attrs of /index: the invalid-row budget the extraction runs under
SOURCE_INDEX_KEY = "featcache_source_index"
SOURCE_GROUP = "source"
INDEX_PART = "_index"
DEFAULT_PARTITION_ROWS = 4096
TARGET_CHUNK_BYTES = 4 << 20  # chunks land between 2 and 8 MiB: see docs/store-format.md, docs/benchmarks.md
FEATURE_DTYPES = ("float16", "float32")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def chunk_rows_for(row_bytes: int, partition_rows: int) -> int:
    """Power-of-two row count whose chunk is nearest 4 MiB, never more than a partition."""
    if row_bytes <= 0:
        return partition_rows
    rows = 2 ** max(0, round(math.log2(TARGET_CHUNK_BYTES / row_bytes)))
    return int(min(rows, partition_rows))


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"teacher name {name!r}: use letters, digits, '_', '.', '-' (not starting with '_')")
    return name


def _index_checksum(valid: np.ndarray, params: np.ndarray | None) -> str:
    h = hashlib.sha256(np.ascontiguousarray(valid, dtype=bool).tobytes())
    if params is not None:
        h.update(np.ascontiguousarray(params, dtype=np.float32).tobytes())
    return h.hexdigest()


class FeatureCache:
    """A featcache store: create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        try:
            root = store.get_attrs("")
        except KeyError:
            root = {}
        meta = root.get(ROOT_KEY)
        if not isinstance(meta, dict):
            raise CacheNotFoundError(f"{store.path}: not a featcache store (no '{ROOT_KEY}' attributes)")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{store.path}: store format version {version} is newer than this featcache reads "
                f"({FORMAT_VERSION}); upgrade featcache")
        self.meta: dict[str, Any] = meta
        self._index_cache: dict[str, np.ndarray] = {}
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
        """A new, empty store for these rows. Root attributes are written last, so a crash
        during creation leaves something that does not open as a featcache store.
        ``source_index``: plain data the source asked to keep (``Source.reopen_index``)."""
        ids = np.asarray([str(s) for s in sample_ids], dtype=object)
        n = len(ids)
        labels_arr = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if labels_arr.shape != (n,):
            raise UsageError(f"{n} sample ids but {labels_arr.shape[0]} labels")
        if len(set(ids.tolist())) != n:
            raise UsageError("sample ids must be unique")
        if views < 1:
            raise UsageError(f"views must be >= 1, got {views}")
        if partition_rows < 1 or partition_rows & (partition_rows - 1):
            raise UsageError(f"partition_rows must be a power of two, got {partition_rows}")
        if isinstance(target, Store):
            store = target
        else:
            store = open_backend(os.fspath(target), read_only=False, create=True, overwrite=overwrite,
                                 backend=backend, storage_options=storage_options)
        store.create_array("index/sample_id", (n,), STR_DTYPE, partition_rows)
        store.create_array("index/label", (n,), "int64", partition_rows)
        store.create_array("index/valid", (n,), "bool", partition_rows)
        if n:
            store.write("index/sample_id", 0, ids)
            store.write("index/label", 0, labels_arr)
        names = [str(p) for p in view_param_names]
        if names:
            store.create_array("views/params", (n, views, len(names)), "float32", partition_rows)
        for group in ("index", "views") if names else ("index",):
            store.set_attrs(group, {})  # its document gets its checksum too
        if source_index is not None:
            _write_source_index(store, source_index)
        meta = {
            "format_version": FORMAT_VERSION, "doc_checksums": DOC_CHECKSUMS, "rows": n, "views": views,
            "view_params": names,
            "partition_rows": partition_rows, "dataset_fingerprint": dataset_fingerprint(ids, labels_arr),
            "split": split, "source": dict(source or {}), "created_by": provenance.created_by(),
            "created_at": provenance.utc_now(),
        }
        store.set_attrs("", {ROOT_KEY: meta})
        return cls(store)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the source's reopen index (webdataset: the shard index) ----------------------
    def source_index_doc(self) -> dict[str, Any] | None:
        """The description of the stored source index (node, sha256, bytes...), or None."""
        try:
            if SOURCE_GROUP not in self.store.children(""):
                return None
            doc = self.store.get_attrs(SOURCE_GROUP).get(SOURCE_INDEX_KEY)
        except KeyError:
            return None
        return dict(doc) if isinstance(doc, dict) else None

    def source_index(self) -> dict[str, Any] | None:
        """The index the source kept when this store was made, or None (none kept, or its bytes
        fail their checksum: then the source walks its files again, and ``verify`` says why)."""
        doc = self.source_index_doc()
        if doc is None:
            return None
        try:
            return read_source_index(self.store, doc)
        except (ValueError, KeyError, OSError, CacheError):
            return None

    def set_source_index(self, index: Mapping[str, Any]) -> None:
        """Keep (or replace) the source's reopen index; its description is written last."""
        _write_source_index(self.store, index)

    # -- shape of the store ---------------------------------------------------------
    @property
    def path(self) -> str:
        return self.store.path

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def views(self) -> int:
        return int(self.meta["views"])

    @property
    def view_param_names(self) -> list[str]:
        return list(self.meta.get("view_params", []))

    @property
    def partition_rows(self) -> int:
        return int(self.meta["partition_rows"])

    @property
    def num_partitions(self) -> int:
        return -(-self.rows // self.partition_rows)

    @property
    def dataset_fingerprint(self) -> str:
        return str(self.meta["dataset_fingerprint"])

    @property
    def split(self) -> str | None:
        return self.meta.get("split")

    @property
    def has_doc_checksums(self) -> bool:
        """True when every document was written with its checksum (stores before that have none)."""
        return self.meta.get("doc_checksums") == DOC_CHECKSUMS

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.meta.get("source") or {})

    def partition_range(self, p: int) -> tuple[int, int]:
        if not 0 <= p < self.num_partitions:
            raise IndexError(f"{self.path}: partition {p} out of range 0..{self.num_partitions - 1}")
        start = p * self.partition_rows
        return start, min(start + self.partition_rows, self.rows)

    # -- teachers -------------------------------------------------------------------
    @property
    def teachers(self) -> list[str]:
        """Teachers whose array and description are both written (add_teacher writes them in that order)."""
        if self._teachers is None:
            names = self.store.children("teachers") if "teachers" in self.store.children("") else []
            self._teachers = [n for n in names if self._registered(n)]
        return list(self._teachers)

    def _registered(self, name: str) -> bool:
        """Another process may be adding this teacher right now: its group is listed before its
        description document exists. Only the description (written last, in one PUT) registers it."""
        try:
            return TEACHER_KEY in self.store.get_attrs(f"teachers/{name}")
        except KeyError:
            return False

    def teacher_info(self, name: str) -> dict[str, Any]:
        meta = self.store.array_meta(self._features_node(name))
        info = dict(self.store.get_attrs(f"teachers/{name}")[TEACHER_KEY])
        info.update(shape=list(meta.shape), chunk_rows=meta.chunk_rows, compressor=meta.compressor)
        return info

    def add_teacher(self, name: str, dim: int, spec: Mapping[str, Any], *, dtype: str = "float16",
                    compressor: str = "none", teacher_fingerprint: str | None = None) -> str:
        """Add an empty feature array; re-adding the same teacher is a no-op, a different one refuses."""
        _check_name(name)
        if dtype not in FEATURE_DTYPES:
            raise UsageError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        fp = teacher_fingerprint or fingerprint({**spec, "dim": int(dim), "dtype": dtype})
        if name in self.teachers:
            have = self.teacher_info(name)
            if have["fingerprint"] != fp or have["dim"] != dim or have["dtype"] != dtype:
                raise FingerprintMismatch(
                    f"{self.path}: teacher {name!r} already holds features of fingerprint "
                    f"{have['fingerprint'][:12]} (dim {have['dim']}, {have['dtype']}); this run has "
                    f"{fp[:12]} (dim {dim}, {dtype}); use another name or another store")
            return fp
        shape = (self.rows, self.views, dim) if self.views > 1 else (self.rows, dim)
        row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        chunk_rows = chunk_rows_for(row_bytes, self.partition_rows)
        self.store.create_array(f"teachers/{name}/features", shape, dtype, chunk_rows, compressor)
        if self.store.doc_problem("teachers") == "":
            self.store.set_attrs("teachers", {})
        doc = {"dim": int(dim), "dtype": dtype, "fingerprint": fp, "spec": dict(spec),
               "added_at": provenance.utc_now(), "added_by": provenance.created_by()}
        self.store.set_attrs(f"teachers/{name}", {TEACHER_KEY: doc})
        self._teachers = None
        return fp

    # -- writing partitions ---------------------------------------------------------
    def write_partition(self, p: int, *, features: Mapping[str, np.ndarray] | None = None,
                        valid: np.ndarray | None = None, view_params: np.ndarray | None = None,
                        notes: Mapping[str, Any] | None = None) -> None:
        """Write one partition's rows, then one done marker per part written.

        ``valid`` (and ``view_params`` when the store records them) make up the index part;
        each entry of ``features`` is one teacher's rows. ``notes`` (plain values, such as
        why rows are invalid) are kept in the index part's marker.
        """
        start, stop = self.partition_range(p)
        n = stop - start
        features = dict(features or {})
        has_params = bool(self.view_param_names)
        if (view_params is not None) and valid is None:
            raise ValueError("view_params are written with valid (the index part)")
        if valid is not None and has_params and view_params is None:
            raise ValueError("this store records view parameters: pass view_params with valid")
        parts = ([INDEX_PART] if valid is not None else []) + list(features)
        markers: dict[str, dict[str, Any]] = {}
        for part in parts:  # a rewritten partition stops counting as done before any byte changes
            self.store.delete_marker(f"{part}/{p:06d}")
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            self._expect_shape("valid", valid, (n,))
            self.store.write("index/valid", start, valid)
            if has_params:
                view_params = np.asarray(view_params, dtype=np.float32)
                self._expect_shape("view_params", view_params, (n, self.views, len(self.view_param_names)))
                self.store.write("views/params", start, view_params)
            markers[INDEX_PART] = {"checksum": _index_checksum(valid, view_params if has_params else None),
                                   "invalid": int(n - valid.sum()), "notes": dict(notes or {})}
        for name, values in features.items():
            info = self.teacher_info(name)
            values = np.asarray(values).astype(info["dtype"], copy=False)
            self._expect_shape(f"features[{name!r}]", values, (n, *info["shape"][1:]))
            self.store.write(f"teachers/{name}/features", start, values)
            markers[name] = {"checksum": array_checksum(values), **_nonfinite(values)}
        written_at = round(time.time(), 3)  # which partitions a resume re-checks: the newest ones
        for part, doc in markers.items():
            self.store.put_marker(f"{part}/{p:06d}", {"part": part, "partition": p, "start": start,
                                                      "stop": stop, "rows": n, "written_at": written_at, **doc})

    def _expect_shape(self, what: str, values: np.ndarray, shape: tuple[int, ...]) -> None:
        if tuple(values.shape) != tuple(shape):
            raise ShapeMismatch(f"{self.path}: {what} has shape {tuple(values.shape)}, expected {tuple(shape)}")

    # -- student inputs: inputs/<name>/<array>, partitions and markers like a teacher ----
    @property
    def inputs(self) -> list[str]:
        """Input sets whose arrays and description are both written (add_inputs writes them in that order)."""
        if "inputs" not in self.store.children(""):
            return []
        return [n for n in self.store.children("inputs") if INPUTS_KEY in self.store.get_attrs(f"inputs/{n}")]

    def inputs_info(self, name: str) -> dict[str, Any]:
        if name not in self.inputs:
            raise NotInStoreError(f"{self.path}: no inputs {name!r} (has: {', '.join(self.inputs) or 'none'})")
        doc = dict(self.store.get_attrs(f"inputs/{name}")[INPUTS_KEY])
        arrays = {}
        for array in doc["arrays"]:
            meta = self.store.array_meta(f"inputs/{name}/{array}")
            arrays[array] = {"shape": list(meta.shape), "dtype": meta.dtype, "chunk_rows": meta.chunk_rows,
                             "compressor": meta.compressor}
        doc["arrays"] = arrays
        return doc

    def add_inputs(self, name: str, arrays: Mapping[str, tuple[tuple[int, ...], str]], spec: Mapping[str, Any], *,
                   compressor: str = "none") -> str:
        """Add empty input arrays (name -> (row shape, dtype)); the same spec again is a no-op, another refuses."""
        _check_name(name)
        plain = {a: [list(map(int, shape)), str(dtype)] for a, (shape, dtype) in sorted(arrays.items())}
        fp = fingerprint({**spec, "arrays": plain})
        if name in self.inputs:
            have = self.inputs_info(name)
            if have["fingerprint"] != fp:
                raise FingerprintMismatch(
                    f"{self.path}: inputs {name!r} hold fingerprint {have['fingerprint'][:12]} "
                    f"({json.dumps(have['spec'], sort_keys=True)}); this run has {fp[:12]} "
                    f"({json.dumps(dict(spec), sort_keys=True)}); use another name")
            return fp
        row_bytes = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in plain.values())
        chunk_rows = chunk_rows_for(row_bytes, self.partition_rows)  # one row count for all: partitions stay whole chunks
        for array, (shape, dtype) in plain.items():
            self.store.create_array(f"inputs/{name}/{array}", (self.rows, *shape), dtype, chunk_rows, compressor)
        if self.store.doc_problem("inputs") == "":  # the shared group's document gets its checksum too
            self.store.set_attrs("inputs", {})
        doc = {"fingerprint": fp, "spec": dict(spec), "arrays": sorted(plain), "added_at": provenance.utc_now(),
               "added_by": provenance.created_by()}
        self.store.set_attrs(f"inputs/{name}", {INPUTS_KEY: doc})
        return fp

    def write_inputs_partition(self, p: int, name: str, values: Mapping[str, np.ndarray]) -> None:
        """One partition of an input set: its old marker is removed first, the arrays written, the new marker last."""
        start, stop = self.partition_range(p)
        info = self.inputs_info(name)
        if set(values) != set(info["arrays"]):
            raise ValueError(f"{self.path}: inputs {name!r} are written with arrays {sorted(info['arrays'])}")
        key = f"inputs/{name}/{p:06d}"
        self.store.delete_marker(key)
        written = {}
        for array in sorted(values):
            meta = info["arrays"][array]
            data = np.asarray(values[array]).astype(meta["dtype"], copy=False)
            self._expect_shape(f"inputs[{name!r}][{array!r}]", data, (stop - start, *meta["shape"][1:]))
            self.store.write(f"inputs/{name}/{array}", start, data)
            written[array] = data
        self.store.put_marker(key, {"part": f"inputs/{name}", "partition": p, "start": start, "stop": stop,
                                    "rows": stop - start, "checksum": inputs_checksum(written)})

    def inputs_done(self, name: str) -> set[int]:
        """Partitions of an input set whose done marker exists and can be trusted (``trusted_done``)."""
        return self.trusted_done([f"inputs/{name}"])[f"inputs/{name}"]

    def take_inputs(self, name: str, array: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of one input array in the order given, read chunk by chunk."""
        return self._take_rows(f"inputs/{name}/{array}", rows)

    def load_inputs(self, name: str, array: str) -> np.ndarray:
        """One input array in memory, read partition by partition."""
        return self._load_node(f"inputs/{name}/{array}")

    # -- completeness ---------------------------------------------------------------
    def marker_problem(self, key: str, doc: dict[str, Any]) -> str | None:
        """Why a done marker cannot be trusted (unreadable, changed since written, or not the
        marker its key says), or None. Such a partition counts as not done, so it is redone."""
        if UNREADABLE in doc:
            return f"marker {key}: {doc[UNREADABLE]}"
        recorded = doc.get(DOC_CHECKSUM_KEY)
        if recorded is None and self.has_doc_checksums:
            return f"marker {key}: has no checksum, unlike every marker of this store"
        if recorded is not None and recorded != doc_checksum(doc):
            return ("marker %s: document changed since it was written (checksum %s, now %s)"
                    % (key, *short_pair(recorded, doc_checksum(doc))))
        part, _, num = key.rpartition("/")
        if not num.isdigit() or doc.get("part") != part or doc.get("partition") != int(num):
            return (f"marker {key}: says part {doc.get('part')!r} partition {doc.get('partition')!r}, "
                    "not what its name says")
        return None

    def trusted_markers(self, parts: Sequence[str]) -> dict[str, dict[int, dict[str, Any]]]:
        """For each part (the index, a teacher, ``inputs/<name>``), the done markers of this store's
        partitions that pass ``marker_problem``, by partition: the one rule every kind of part is
        judged by, so a marker that fails its checksum or does not parse never counts."""
        found: dict[str, dict[int, dict[str, Any]]] = {part: {} for part in parts}
        for key, doc in self.store.markers().items():
            part, _, num = key.rpartition("/")
            if part in found and self.marker_problem(key, doc) is None and int(num) < self.num_partitions:
                found[part][int(num)] = doc
        return found

    def trusted_done(self, parts: Sequence[str]) -> dict[str, set[int]]:
        """For each part, the partitions whose done marker exists and can be trusted."""
        return {part: set(docs) for part, docs in self.trusted_markers(parts).items()}

    def done_partitions(self) -> dict[str, set[int]]:
        """For the index and each teacher, the partitions whose done marker exists and can be trusted."""
        return self.trusted_done([INDEX_PART, *self.teachers])

    def missing_partitions(self) -> dict[str, list[int]]:
        every = set(range(self.num_partitions))
        return {part: sorted(every - got) for part, got in self.done_partitions().items() if every - got}

    # -- the invalid-row budget: a store over it is not complete ------------------------
    @property
    def max_invalid_fraction(self) -> float | None:
        """The share of rows allowed to be invalid, as the extraction that wrote the index last
        recorded it (``set_max_invalid_fraction``); None when none was recorded (no limit)."""
        try:
            doc = self.store.get_attrs("index").get(INDEX_KEY)
        except KeyError:
            return None
        value = doc.get("max_invalid_fraction") if isinstance(doc, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def set_max_invalid_fraction(self, fraction: float) -> None:
        """Record the budget (only when it changes: the index group's document is shared)."""
        if self.max_invalid_fraction != float(fraction):
            self.store.set_attrs("index", {INDEX_KEY: {"max_invalid_fraction": float(fraction)}})

    def invalid_rows(self) -> int:
        """Rows the trusted index markers count as invalid."""
        docs = self.trusted_markers([INDEX_PART])[INDEX_PART].values()
        return sum(int(doc.get("invalid") or 0) for doc in docs)

    def budget_problem(self, fraction: float | None = None) -> str | None:
        """Why the store holds more invalid rows than ``fraction`` (default: the recorded budget)
        allows, as one line; None when within it or when there is no budget."""
        fraction = self.max_invalid_fraction if fraction is None else fraction
        if fraction is None:
            return None
        invalid = self.invalid_rows()
        if invalid <= fraction * self.rows:
            return None
        return (f"{invalid} of {self.rows} inputs failed to decode, more than max_invalid_fraction={fraction:g} "
                f"allows ({int(fraction * self.rows)})")

    @property
    def is_complete(self) -> bool:
        """Every partition of the index and of every teacher marked done, within the invalid-row budget."""
        return not self.missing_partitions() and self.budget_problem() is None

    # -- reading --------------------------------------------------------------------
    def _index(self, node: str) -> np.ndarray:
        if node not in self._index_cache:
            self._index_cache[node] = self.store.read(node, 0, self.rows)
        return self._index_cache[node]

    @property
    def sample_ids(self) -> np.ndarray:
        return self._index("index/sample_id")

    @property
    def labels(self) -> np.ndarray:
        return self._index("index/label")

    @property
    def valid(self) -> np.ndarray:
        return self._index("index/valid")

    def labeled_rows(self) -> np.ndarray:
        """Valid, labeled rows: what every task-facing step uses (invalid inputs are skipped everywhere)."""
        return np.flatnonzero(self.valid & (self.labels >= 0))

    @property
    def view_params(self) -> np.ndarray:
        if not self.view_param_names:
            return np.zeros((self.rows, self.views, 0), np.float32)
        return self._index("views/params")

    def _features_node(self, teacher: str) -> str:
        if teacher not in self.teachers:
            raise NotInStoreError(f"{self.path}: no teacher {teacher!r} (has: {', '.join(self.teachers) or 'none'})")
        return f"teachers/{teacher}/features"

    def chunk_rows(self, teacher: str) -> int:
        return self.store.array_meta(self._features_node(teacher)).chunk_rows

    def read(self, teacher: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a teacher: the fast path when aligned to chunks."""
        return self.store.read(self._features_node(teacher), start, stop)

    def take(self, teacher: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows in the order given (repeats allowed), read chunk by chunk, never row by row."""
        return self._take_rows(self._features_node(teacher), rows)

    def _take_rows(self, node: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"{self.path}: row ids must be in 0..{self.rows - 1}")
        if rows.size < 2 or bool((np.diff(rows) > 0).all()):  # sorted and unique (a block read): no copy
            return self.store.take(node, rows)
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self.store.take(node, uniq)[inverse]

    def load(self, teacher: str) -> np.ndarray:
        """A teacher's full matrix in memory, filled chunk range by chunk range."""
        return self._load_node(self._features_node(teacher))

    def _load_node(self, node: str) -> np.ndarray:
        meta = self.store.array_meta(node)
        out = np.empty(meta.shape, dtype=meta.dtype)
        for p in range(self.num_partitions):
            start, stop = self.partition_range(p)
            out[start:stop] = self.store.read(node, start, stop)
        return out

    def info(self) -> dict[str, Any]:
        """Everything `featcache-cache info` prints, as plain values."""
        done = self.done_partitions()
        over_budget = self.budget_problem()
        teachers = {}
        for name in self.teachers:
            t = self.teacher_info(name)
            teachers[name] = {**t, "partitions_done": len(done[name])}
        return {
            "path": self.path, "backend": self.backend, "format_version": self.meta["format_version"],
            "rows": self.rows, "views": self.views, "view_params": self.view_param_names,
            "partition_rows": self.partition_rows, "partitions": self.num_partitions,
            "index_partitions_done": len(done[INDEX_PART]), "complete": over_budget is None and all(
                len(d) == self.num_partitions for d in done.values()),
            "max_invalid_fraction": self.max_invalid_fraction, "over_budget": over_budget,
            "split": self.split, "source": self.source, "dataset_fingerprint": self.dataset_fingerprint,
            "created_by": self.meta.get("created_by"), "created_at": self.meta.get("created_at"),
            "size_on_disk": self.store.size_on_disk(), "teachers": teachers,
            "inputs": {n: {**self.inputs_info(n), "partitions_done": len(self.inputs_done(n))} for n in self.inputs},
            **{k: self.meta[k] for k in ("retrieval", "subset_of") if k in self.meta},
            **({"source_index": doc} if (doc := self.source_index_doc()) else {}),
        }


def _write_source_index(store: Store, index: Mapping[str, Any]) -> None:
    """The index as zlib'd JSON in a uint8 array named by its hash (a replaced index never
    overwrites the bytes the current description points at), then the description."""
    data = zlib.compress(json.dumps(index, sort_keys=True, separators=(",", ":")).encode(), 6)
    sha = hashlib.sha256(data).hexdigest()
    node = f"{SOURCE_GROUP}/index-{sha[:16]}"
    if SOURCE_GROUP not in store.children("") or node.split("/")[1] not in store.children(SOURCE_GROUP):
        store.create_array(node, (len(data),), "uint8", max(1, min(len(data), TARGET_CHUNK_BYTES)))
        store.write(node, 0, np.frombuffer(data, np.uint8))
    shards = index.get("shards")
    store.set_attrs(SOURCE_GROUP, {SOURCE_INDEX_KEY: {
        "node": node, "sha256": sha, "bytes": len(data), "kind": index.get("kind"),
        "shards": len(shards) if isinstance(shards, Mapping) else None, "written_at": provenance.utc_now()}})


def read_source_index(store: Store, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The stored index; CorruptCacheError when its bytes are not the ones described."""
    data = np.asarray(store.read(str(doc["node"]), 0, int(doc["bytes"])), np.uint8).tobytes()
    found = hashlib.sha256(data).hexdigest()
    if found != doc.get("sha256"):
        raise CorruptCacheError("%s: bytes changed since written (sha256 %s, now %s)"
                                % (doc["node"], *short_pair(doc.get("sha256"), found)))
    return json.loads(zlib.decompress(data))


def inputs_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """One partition of an input set: its single array's checksum, or a hash of each array's in name order."""
    sums = [array_checksum(arrays[name]) for name in sorted(arrays)]
    return sums[0] if len(sums) == 1 else hashlib.sha256("".join(sums).encode()).hexdigest()


def _nonfinite(values: np.ndarray) -> dict[str, int]:
    return {"nan": int(np.isnan(values).sum()), "inf": int(np.isinf(values).sum())}


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


BUDGET_HINT = ("the extraction stopped there: fix the inputs, or rerun it with a higher max_invalid_fraction "
               "to accept these rows")

