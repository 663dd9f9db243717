"""The kinds of part a store holds by partition, each following the ``Part`` protocol (``part.py``).

- ``IndexPart``: ``index/valid`` and ``views/params`` by partition (ids and labels written once,
  at creation); its markers keep the invalid count and why rows are invalid; the invalid-row budget.
- ``TeacherPart``: one teacher's features, ``teachers/<name>/features``.
- ``InputsPart``: one cached input set, ``inputs/<name>/<array>``.

docs/store-format.md draws the tree these nodes make.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

from featcache.plumbing import provenance
from featcache.plumbing.errors import UsageError

from .errors import FingerprintMismatch
from .fingerprint import array_checksum, fingerprint
from .layout import Layout, check_name
from .part import Markers, Part
from .store import STR_DTYPE, Store

TEACHER_KEY = "featcache_teacher"
INPUTS_KEY = "featcache_inputs"
INDEX_KEY = "featcache_index"  # attrs of /index: the invalid-row budget the extraction runs under
INDEX_PART = "_index"
FEATURE_DTYPES = ("float16", "float32")
BUDGET_HINT = ("the extraction stopped there: fix the inputs, or rerun it with a higher max_invalid_fraction "
               "to accept these rows")


def _listed(store: Store, group: str, key: str, damaged: set[str] | None) -> list[str]:
    """Names under ``group`` whose description (written last) holds ``key``. With ``damaged``
    (verify), also those whose document is damaged or does not read, so their bytes are checked."""
    if group not in store.children(""):
        return []
    names = []
    for name in store.children(group):
        node = f"{group}/{name}"
        try:
            attrs = store.get_attrs(node)
        except KeyError:  # listed before its description exists: another process is adding it
            if damaged is not None:
                names.append(name)
            continue
        except Exception:  # noqa: BLE001 - a description that does not decode: verify checks the rest
            if damaged is None:
                raise
            names.append(name)
            continue
        if key in attrs or (damaged is not None and node in damaged):
            names.append(name)
    return names


class IndexPart(Part):
    """valid (N,) bool and the view parameters (N, K, P) float32; ids and labels are written once,
    at creation. Its markers keep the invalid count and, as notes, why rows are invalid."""

    kind = "index"
    key = INDEX_PART
    label = "index"
    node = "index"

    def __init__(self, store: Store, layout: Layout, doc_checksums: bool, name: str = "") -> None:
        super().__init__(store, layout, doc_checksums)
        self._columns: dict[str, np.ndarray] = {}

    @classmethod
    def create(cls, store: Store, layout: Layout, ids: np.ndarray, labels: np.ndarray) -> None:
        n, rows = layout.rows, layout.partition_rows
        store.create_array("index/sample_id", (n,), STR_DTYPE, rows)
        store.create_array("index/label", (n,), "int64", rows)
        store.create_array("index/valid", (n,), "bool", rows)
        if n:
            store.write("index/sample_id", 0, ids)
            store.write("index/label", 0, labels)
        names = layout.view_param_names
        if names:
            store.create_array("views/params", (n, layout.views, len(names)), "float32", rows)
        for group in ("index", "views") if names else ("index",):
            store.set_attrs(group, {})  # its document gets its checksum too

    def arrays(self) -> dict[str, str]:
        return {"valid": "index/valid", **({"params": "views/params"} if self.layout.view_param_names else {})}

    def nodes(self) -> set[str]:
        return {"", "index", "index/valid", "views", "views/params"}

    @staticmethod
    def id_nodes() -> set[str]:
        """The documents the sample ids and labels (the dataset fingerprint) are read through."""
        return {"", "index", "index/sample_id", "index/label"}

    def prepare(self, values: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        if set(values) - {"valid", "params"} or "valid" not in values:
            raise ValueError("view_params are written with valid (the index part)")
        names = self.layout.view_param_names
        if names and values.get("params") is None:
            raise ValueError("this store records view parameters: pass view_params with valid")
        valid = np.asarray(values["valid"], dtype=bool)
        self._expect_shape("valid", valid, (n,))
        if not names:
            return {"valid": valid}
        params = np.asarray(values["params"], dtype=np.float32)
        self._expect_shape("view_params", params, (n, self.layout.views, len(names)))
        return {"valid": valid, "params": params}

    def checksum(self, values: Mapping[str, np.ndarray]) -> str:
        h = hashlib.sha256(np.ascontiguousarray(values["valid"], dtype=bool).tobytes())
        if values.get("params") is not None:
            h.update(np.ascontiguousarray(values["params"], dtype=np.float32).tobytes())
        return h.hexdigest()

    def counts(self, values: Mapping[str, np.ndarray]) -> dict[str, int]:
        return {"invalid": int((~np.asarray(values["valid"], dtype=bool)).sum())}

    # -- the columns, read once per open store ----------------------------------------
    def column(self, name: str) -> np.ndarray:
        """sample_id, label, valid or params, whole (index-sized)."""
        node = {"params": "views/params"}.get(name, f"index/{name}")
        if name == "params" and not self.layout.view_param_names:
            return np.zeros((self.layout.rows, self.layout.views, 0), np.float32)
        if node not in self._columns:
            self._columns[node] = self.store.read(node, 0, self.layout.rows)
        return self._columns[node]

    def invalid_reasons(self, markers: Markers | None = None) -> dict[str, str]:
        """Why each invalid row is invalid, by sample id, from the trusted markers' notes."""
        reasons: dict[str, str] = {}
        for doc in self.markers(markers).values():
            notes = doc.get("notes")
            if isinstance(notes, dict) and isinstance(notes.get("invalid"), dict):
                reasons.update(notes["invalid"])
        return reasons

    # -- the invalid-row budget --------------------------------------------------------
    @property
    def max_invalid_fraction(self) -> float | None:
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

    def invalid_rows(self, markers: Markers | None = None) -> int:
        return sum(int(doc.get("invalid") or 0) for doc in self.markers(markers).values())

    def budget_problem(self, fraction: float | None = None) -> str | None:
        """Why more rows are invalid than ``fraction`` (default: the recorded budget) allows, or None."""
        fraction = self.max_invalid_fraction if fraction is None else fraction
        if fraction is None:
            return None
        invalid, rows = self.invalid_rows(), self.layout.rows
        if invalid <= fraction * rows:
            return None
        return (f"{invalid} of {rows} inputs failed to decode, more than max_invalid_fraction={fraction:g} "
                f"allows ({int(fraction * rows)})")

    def copy_definition(self, other: "IndexPart") -> None:
        """Take ``other``'s description (the budget); the ids and labels were written at creation."""
        self.store.set_attrs("index", other.store.get_attrs("index"))


class TeacherPart(Part):
    """One teacher's features, (N, K, D) or (N, D), described by ``featcache_teacher``."""

    kind = "teacher"

    @property
    def key(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def label(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def node(self) -> str:  # type: ignore[override]
        return f"teachers/{self.name}"

    @classmethod
    def names(cls, store: Store, damaged: set[str] | None = None) -> list[str]:
        return _listed(store, "teachers", TEACHER_KEY, damaged)

    @classmethod
    def add(cls, store: Store, layout: Layout, name: str, dim: int, spec: Mapping[str, Any], *, dtype: str,
            compressor: str, fp: str | None = None) -> str:
        """An empty feature array and its description (written last); its fingerprint. The same
        teacher again is a no-op, a different one under this name is a FingerprintMismatch."""
        check_name(name)
        _check_dtype(dtype)
        fp = fp or cls.fingerprint_of(spec, dim, dtype)
        if name in cls.names(store):
            _teacher_mismatch(store.path, name, store.get_attrs(f"teachers/{name}")[TEACHER_KEY], fp, dim, dtype)
            return fp
        shape = layout.feature_shape(dim)
        chunk_rows = layout.chunk_rows(int(np.prod(shape[1:])) * np.dtype(dtype).itemsize)
        store.create_array(f"teachers/{name}/features", shape, dtype, chunk_rows, compressor)
        if store.doc_problem("teachers") == "":
            store.set_attrs("teachers", {})
        doc = {"dim": int(dim), "dtype": dtype, "fingerprint": fp, "spec": dict(spec),
               "added_at": provenance.utc_now(), "added_by": provenance.created_by()}
        store.set_attrs(f"teachers/{name}", {TEACHER_KEY: doc})
        return fp

    @staticmethod
    def fingerprint_of(spec: Mapping[str, Any], dim: int, dtype: str) -> str:
        return fingerprint({**spec, "dim": int(dim), "dtype": dtype})

    def arrays(self) -> dict[str, str]:
        return {"features": f"teachers/{self.name}/features"}

    def nodes(self) -> set[str]:
        return {"", "teachers", f"teachers/{self.name}", f"teachers/{self.name}/features"}

    def description(self) -> dict[str, Any]:
        return dict(self.store.get_attrs(f"teachers/{self.name}")[TEACHER_KEY])

    def info(self) -> dict[str, Any]:
        meta = self.store.array_meta(f"teachers/{self.name}/features")
        return {**self.description(), "shape": list(meta.shape), "chunk_rows": meta.chunk_rows,
                "compressor": meta.compressor}

    def prepare(self, values: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        meta = self.store.array_meta(f"teachers/{self.name}/features")
        feats = np.asarray(values["features"]).astype(meta.dtype, copy=False)
        self._expect_shape(f"features[{self.name!r}]", feats, (n, *meta.shape[1:]))
        return {"features": feats}

    def checksum(self, values: Mapping[str, np.ndarray]) -> str:
        return array_checksum(values["features"])

    def counts(self, values: Mapping[str, np.ndarray]) -> dict[str, int]:
        feats = values["features"]
        return {"nan": int(np.isnan(feats).sum()), "inf": int(np.isinf(feats).sum())}

    def fingerprint_problem(self) -> str | None:
        """Why the recorded fingerprint is not the hash of the recorded spec, or None."""
        doc = self.description()
        found = self.fingerprint_of(doc["spec"], doc["dim"], doc["dtype"])
        if found != doc.get("fingerprint"):
            return (f"teachers/{self.name}: fingerprint {str(doc.get('fingerprint'))[:12]} is not the "
                    f"hash of its recorded spec ({found[:12]})")
        return None

    def copy_definition(self, other: "TeacherPart") -> None:
        """Take ``other``'s description as written (added_at/by kept)."""
        self.store.set_attrs(f"teachers/{self.name}", other.store.get_attrs(f"teachers/{other.name}"))


class InputsPart(Part):
    """A cached input set: ``inputs/<name>/<array>`` (N, ...), described by ``featcache_inputs``."""

    kind = "inputs"

    @property
    def key(self) -> str:  # type: ignore[override]
        return f"inputs/{self.name}"

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"inputs/{self.name}"

    node = label

    @classmethod
    def names(cls, store: Store, damaged: set[str] | None = None) -> list[str]:
        return _listed(store, "inputs", INPUTS_KEY, damaged)

    @classmethod
    def add(cls, store: Store, layout: Layout, name: str, arrays: Mapping[str, tuple[tuple[int, ...], str]],
            spec: Mapping[str, Any], *, compressor: str) -> str:
        """Empty arrays (name -> (row shape, dtype)) and their description (written last); the set's
        fingerprint. The same spec again is a no-op, another under this name a FingerprintMismatch."""
        check_name(name, "inputs")
        plain = {a: [list(map(int, shape)), str(dtype)] for a, (shape, dtype) in sorted(arrays.items())}
        fp = fingerprint({**spec, "arrays": plain})
        if name in cls.names(store):
            _inputs_mismatch(store.path, name, store.get_attrs(f"inputs/{name}")[INPUTS_KEY], fp, spec)
            return fp
        row_bytes = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in plain.values())
        chunk_rows = layout.chunk_rows(row_bytes)  # one row count for all: partitions stay whole chunks
        for array, (shape, dtype) in plain.items():
            store.create_array(f"inputs/{name}/{array}", (layout.rows, *shape), dtype, chunk_rows, compressor)
        if store.doc_problem("inputs") == "":  # the shared group's document gets its checksum too
            store.set_attrs("inputs", {})
        doc = {"fingerprint": fp, "spec": dict(spec), "arrays": sorted(plain), "added_at": provenance.utc_now(),
               "added_by": provenance.created_by()}
        store.set_attrs(f"inputs/{name}", {INPUTS_KEY: doc})
        return fp

    def _array_names(self) -> list[str]:
        try:
            return list(self.store.get_attrs(self.key)[INPUTS_KEY]["arrays"])
        except Exception:  # noqa: BLE001 - a damaged description: verify names it, its arrays are not read
            return []

    def arrays(self) -> dict[str, str]:
        return {a: f"{self.key}/{a}" for a in self._array_names()}

    def nodes(self) -> set[str]:
        return {"", "inputs", self.key, *self.arrays().values()}

    def info(self) -> dict[str, Any]:
        doc = dict(self.store.get_attrs(self.key)[INPUTS_KEY])
        arrays = {}
        for array in doc["arrays"]:
            meta = self.store.array_meta(f"{self.key}/{array}")
            arrays[array] = {"shape": list(meta.shape), "dtype": meta.dtype, "chunk_rows": meta.chunk_rows,
                             "compressor": meta.compressor}
        doc["arrays"] = arrays
        return doc

    def prepare(self, values: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        arrays = self.info()["arrays"]
        if set(values) != set(arrays):
            raise ValueError(f"{self.store.path}: inputs {self.name!r} are written with arrays {sorted(arrays)}")
        out = {}
        for array in sorted(values):
            meta = arrays[array]
            data = np.asarray(values[array]).astype(meta["dtype"], copy=False)
            self._expect_shape(f"inputs[{self.name!r}][{array!r}]", data, (n, *meta["shape"][1:]))
            out[array] = data
        return out

    def checksum(self, values: Mapping[str, np.ndarray]) -> str:
        return inputs_checksum(values)

    def copy_definition(self, other: "InputsPart") -> None:
        self.store.set_attrs(self.key, other.store.get_attrs(other.key))


def inputs_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """One partition of an input set: its single array's checksum, or a hash of each array's in name order."""
    sums = [array_checksum(arrays[name]) for name in sorted(arrays)]
    return sums[0] if len(sums) == 1 else hashlib.sha256("".join(sums).encode()).hexdigest()


def _teacher_mismatch(path: str, name: str, have: Mapping[str, Any], fp: str, dim: int, dtype: str) -> None:
    """FingerprintMismatch when a teacher of this name already holds other features."""
    if have["fingerprint"] != fp or have["dim"] != dim or have["dtype"] != dtype:
        raise FingerprintMismatch(
            f"{path}: teacher {name!r} already holds features of fingerprint "
            f"{have['fingerprint'][:12]} (dim {have['dim']}, {have['dtype']}); this run has "
            f"{fp[:12]} (dim {dim}, {dtype}); use another name or another store")


def _inputs_mismatch(path: str, name: str, have: Mapping[str, Any], fp: str, spec: Mapping[str, Any]) -> None:
    if have["fingerprint"] != fp:
        raise FingerprintMismatch(
            f"{path}: inputs {name!r} hold fingerprint {have['fingerprint'][:12]} "
            f"({json.dumps(have['spec'], sort_keys=True)}); this run has {fp[:12]} "
            f"({json.dumps(dict(spec), sort_keys=True)}); use another name")


def _check_dtype(dtype: str) -> str:
    if dtype not in FEATURE_DTYPES:
        raise UsageError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    return dtype
