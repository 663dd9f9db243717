"""Readers for sharded datasets: WebDataset tar shards and Parquet files.

Both list their rows at open without reading any input's bytes, and serve one row later by a
small targeted read (one seek + read in a tar, one row group of a Parquet file), so stage 2 can
load a row by index without unpacking anything. Sources built on them live in ``sources.py``.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar a-001.tar a-002.tar (zero padding kept); ``{x,y}`` lists."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        items = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(head + item + tail)]


def shard_list(root: str | list[str]) -> list[str]:
    patterns = [root] if isinstance(root, str) else list(root)
    return [path for p in patterns for path in expand_braces(p)]


# -- WebDataset tar shards ----------------------------------------------------------------------
@dataclass
class Sample:
    """One sample of a shard: its members by extension -> (data offset, size)."""
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    problem: str = ""


@dataclass
class ShardIndex:
    path: str
    samples: list[Sample]
    fingerprint: str  # hash of the sorted member names and sizes: no mtime, survives a copy
    cut: str = ""  # why the shard's end is unreadable ("" = read to its end-of-archive block)


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the key ends at the first dot of the basename."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (os.path.join(folder, stem) if folder else stem), ext.lower()


def index_shard(path: str) -> ShardIndex:
    """Scan the tar headers once (no member data is read). A member whose data runs past the end
    of the file marks its sample; a shard that ends without tar's end-of-archive block (cut inside
    a header, or garbage after the last member) gets ``cut``, the reason its remaining samples are lost."""
    size = os.path.getsize(path)
    samples: dict[str, Sample] = {}
    names: list[str] = []
    base = os.path.basename(path)
    cut = ""
    try:
        with tarfile.open(path, mode="r:") as tar:
            while True:
                try:
                    info = tar.next()
                except tarfile.ReadError as exc:
                    cut = f"{base}: unreadable tar header after {len(names)} members ({exc})"
                    break
                if info is None:
                    break
                if not info.isfile():
                    continue
                key, ext = _split_name(info.name)
                sample = samples.setdefault(key, Sample(key))
                sample.members[ext] = (info.offset_data, info.size)
                names.append(f"{info.name}:{info.size}")
                if info.offset_data + info.size > size:
                    sample.problem = (f"{base}: member {info.name} is truncated ({info.size} bytes at offset "
                                      f"{info.offset_data}, the file has {size})")
            end = tar.offset
    except tarfile.ReadError as exc:
        raise ValueError(f"{path}: not a tar file ({exc})") from exc
    if any(s.problem for s in samples.values()):
        cut = ""  # the truncated member's sample already says where the shard ends
    elif not cut and not _has_end_block(path, end):
        cut = f"{base}: cut off after {len(names)} members (no end-of-archive block); later samples are lost"
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return ShardIndex(path, list(samples.values()), digest, cut)


def _has_end_block(path: str, offset: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(offset)
        block = fh.read(512)
    return len(block) == 512 and not any(block)


def read_member(path: str, offset: int, size: int) -> bytes:
    """One seek + read; a short read is a truncated shard."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{os.path.basename(path)}: member at offset {offset} truncated ({len(data)} of {size} bytes)")
    return data


# -- Parquet ------------------------------------------------------------------------------------
def parquet_files(root: str) -> list[str]:
    """A file, a glob (``data/train-*.parquet``), or a folder of .parquet files (or of the .arrow
    files of a Hugging Face ``save_to_disk``), read recursively; always in sorted order."""
    import glob

    if any(c in root for c in "*?["):
        return sorted(glob.glob(root, recursive=True))
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: Parquet file or folder not found")
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
    parquet = [f for f in found if f.endswith(".parquet")]
    return parquet or [f for f in found if f.endswith(".arrow")]


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

    def __init__(self, files: list[str], cache_groups: int = 2):
        import pyarrow.parquet as pq

        self.files = [_ArrowStream(f) if f.endswith(".arrow") else pq.ParquetFile(f) for f in files]
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
