"""The ``parquet`` source: Parquet files (and Hugging Face ``save_to_disk`` .arrow files) with the
image bytes, an image path or the text in a column, read one row group at a time with a small LRU,
so memory stays at a few row groups whatever the size of the data set."""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from .decode import InputError, check_text, clean_reason, decode_image, image_params, read_image_file
from .remote_files import Files, is_url, join, normalise
from .source import Source, SourceError, named_labels


def parquet_files(root: str, files: Files | None = None) -> list[str]:
    """A file, a glob (``data/train-*.parquet``), or a folder of .parquet files (or of the .arrow
    files of a Hugging Face ``save_to_disk``), read recursively; always in sorted order. ``root``
    may be an fsspec URL (one listing of the folder or glob)."""
    import glob

    if is_url(root):
        return _remote_files(root, files or Files())
    if any(c in root for c in "*?["):
        return sorted(glob.glob(root, recursive=True))
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: Parquet file or folder not found")
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
    parquet = [f for f in found if f.endswith(".parquet")]
    return parquet or [f for f in found if f.endswith(".arrow")]


def _remote_files(root: str, files: Files) -> list[str]:
    fs, inner = files.fs(root)
    if any(c in inner for c in "*?["):
        found = fs.glob(inner)
    elif fs.isfile(inner):
        found = [inner]
    elif fs.isdir(inner):
        found = [f for f in fs.find(inner) if f.endswith((".parquet", ".arrow"))]
        found = [f for f in found if f.endswith(".parquet")] or found
    else:
        raise FileNotFoundError(f"{root}: Parquet file or folder not found")
    return sorted(fs.unstrip_protocol(f) for f in found)


class _ArrowStream:
    """A Hugging Face ``save_to_disk`` .arrow file (Arrow IPC), memory-mapped, with the small part
    of ``pyarrow.parquet.ParquetFile``'s interface used here: its record batches are the row groups."""

    def __init__(self, path: str):
        import pyarrow as pa

        source = pa.memory_map(path)
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
        self.batches = table.to_batches()
        self.schema_arrow = table.schema
        self.metadata = self
        self.num_row_groups = len(self.batches)

    def row_group(self, g: int) -> Any:
        return self.batches[g]

    def iter_batches(self, batch_size: int, columns: list[str]) -> Any:
        return (b.select(columns) for b in self.batches)

    def read_row_group(self, g: int, columns: list[str]) -> Any:
        return self.batches[g].select(columns)


def _open_table(path: str, opener: Files) -> Any:
    """A ParquetFile (over an fsspec file for a URL: each column chunk one ranged read), or an .arrow file."""
    import pyarrow.parquet as pq

    if path.endswith(".arrow"):
        if is_url(path):
            raise SourceError(f"{path}: save_to_disk .arrow files are read memory-mapped from a local disk; copy "
                              "them there, or export Parquet (Dataset.to_parquet)")
        return _ArrowStream(path)
    return pq.ParquetFile(opener.open(path, cache_type="none") if is_url(path) else path)


def hf_class_names(schema: Any, column: str) -> list[str]:
    """Class names a Hugging Face dataset recorded for a ClassLabel column (schema metadata), or []."""
    import json
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return []
    try:
        feature = json.loads(meta)["info"]["features"][column]
        return list(feature.get("names") or []) if feature.get("_type") == "ClassLabel" else []
    except (KeyError, TypeError, ValueError):
        return []


class ParquetRows:
    """Row ``i`` of a list of Parquet files, read one row group at a time with a small LRU, so
    memory stays at a few row groups whatever the size of the data set."""

    def __init__(self, files: list[str], cache_groups: int = 2, opener: Files | None = None):
        self.files = [_open_table(f, opener or Files()) for f in files]
        self.paths = files
        self.starts: list[int] = []  # first global row of each (file, group)
        self.groups: list[tuple[int, int]] = []
        total = 0
        for fi, pf in enumerate(self.files):
            for g in range(pf.metadata.num_row_groups):
                self.starts.append(total)
                self.groups.append((fi, g))
                total += pf.metadata.row_group(g).num_rows
        self.total = total
        self.file_starts = [self.starts[self.groups.index((fi, 0))] if pf.metadata.num_row_groups else 0
                            for fi, pf in enumerate(self.files)]
        self._cache: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self._size = cache_groups
        self._lock = threading.Lock()

    def column(self, name: str) -> list[Any]:
        """A whole (small) column, read in record batches."""
        out: list[Any] = []
        for pf in self.files:
            for batch in pf.iter_batches(batch_size=65536, columns=[name]):
                out += batch.column(0).to_pylist()
        return out

    def _file(self, i: int) -> int:
        return self.groups[bisect.bisect_right(self.starts, i) - 1][0]

    def path_of(self, i: int) -> str:
        return self.paths[self._file(i)]

    def where(self, i: int) -> tuple[str, int]:
        """(file name, row within that file) of global row ``i``."""
        fi = self._file(i)
        return os.path.basename(self.paths[fi]), i - self.file_starts[fi]

    def cell(self, i: int, name: str) -> Any:
        k = bisect.bisect_right(self.starts, i) - 1
        with self._lock:
            col = self._cache.get((k, name))
            if col is None:
                fi, g = self.groups[k]
                col = self.files[fi].read_row_group(g, columns=[name]).column(0)
                self._cache[(k, name)] = col
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end((k, name))
        return col[i - self.starts[k]].as_py()


REOPEN_HINT = "; stage 2 needs the Parquet files, or the student inputs cached in the store (featcache-cache inputs)"


def parquet(root: str, image_column: str = "image", path_column: str = "", text_column: str = "",
            label_column: str = "label", id_column: str = "", max_image_pixels: int = 0, *,
            storage_options: Mapping[str, Any] | None = None, from_store: bool = False) -> Source:
    """A .parquet file or a folder of them (sorted), e.g. a Hugging Face dataset's Parquet export,
    local or behind an fsspec URL. Only the id and label columns are read at open; ``load(i)`` reads
    the row group holding row i. ``storage_options`` are never recorded. ``from_store``: reopened
    from what a store recorded (stage 2), so files gone say how to train without them."""
    root = normalise(root)
    opener = Files(storage_options)
    hint = REOPEN_HINT if from_store else ""
    try:
        files = parquet_files(root, opener)
    except FileNotFoundError as exc:
        raise SourceError(f"{exc}{hint}") from None
    except OSError as exc:  # a listing refused (credentials, endpoint): the user's to fix
        raise SourceError(f"{root}: cannot list ({clean_reason(exc)})") from None
    if not files:
        raise SourceError(f"{root}: no .parquet files found{hint}")
    try:
        rows = ParquetRows(files, opener=opener)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for an unreadable file
        raise SourceError(f"{root}: cannot read Parquet ({clean_reason(exc)})") from exc
    schema = rows.files[0].schema_arrow
    column = text_column or path_column or image_column
    for key, name in (("text_column" if text_column else "path_column" if path_column else "image_column", column),
                      ("id_column", id_column), ("label_column", label_column if label_column != "label" else "")):
        if name and name not in schema.names:
            raise SourceError(f"source.{key}: {files[0]} has no column {name!r} (columns: {', '.join(schema.names)})")
    n = rows.total
    try:
        if label_column in schema.names:
            labels, classes = named_labels(rows.column(label_column), hf_class_names(schema, label_column))
        else:
            labels, classes = np.full(n, -1, np.int64), []
        ids = ([str(v) for v in rows.column(id_column)] if id_column
               else ["{}:{}".format(*rows.where(i)) for i in range(n)])
    except Exception as exc:  # noqa: BLE001 - a file without the column, a corrupt page: pyarrow's own types
        raise SourceError(f"{root}: cannot read the id/label columns ({clean_reason(exc)})") from exc
    if len(set(ids)) != len(ids):
        raise SourceError(f"{root}: sample ids are not unique (set source.id_column to a unique column)")

    def read_path(i: int, value: Any, what: str):
        """The image a path names: a URL, an absolute path, or a path relative to the row's Parquet file."""
        if not isinstance(value, str) or not value:
            raise InputError(f"{what}: empty path")
        base = os.path.dirname(rows.path_of(i))
        if is_url(base) or is_url(value):
            full = value if is_url(value) else join(base, value)
            try:
                data = opener.cat(full)
            except OSError as exc:
                raise InputError(f"{full}: cannot read ({clean_reason(exc)})") from exc
            return decode_image(data, full, max_image_pixels)
        return read_image_file(value if os.path.isabs(value) else os.path.join(base, value), max_image_pixels)

    def load(i: int):
        what = "{}:{}".format(*rows.where(i))
        try:
            value = rows.cell(i, column)
        except Exception as exc:  # noqa: BLE001 - a corrupt page is this row's problem
            raise InputError(f"{what}: cannot read column {column!r} ({clean_reason(exc)})") from exc
        if text_column:
            return check_text(value, what)
        if path_column:
            return read_path(i, value, what)
        if isinstance(value, dict):  # Hugging Face's Image feature: {"bytes": ..., "path": ...}
            if value.get("bytes") is None and value.get("path"):
                return read_path(i, value["path"], what)  # Image() cast from file paths, exported as they are
            value = value.get("bytes")
        if not isinstance(value, (bytes, bytearray)):
            raise InputError(f"{what}: no image bytes in column {column!r}")
        return decode_image(bytes(value), what, max_image_pixels)

    params = {"root": root, "image_column": image_column, "path_column": path_column,
              "text_column": text_column, "label_column": label_column, "id_column": id_column,
              **image_params(max_image_pixels)}
    return Source("parquet", "text" if text_column else "image", ids, labels, classes, params, load)
