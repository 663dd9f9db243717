"""The geometry of a store, below everything else: rows, views, partitions, chunk sizes.

A partition is a chunk-aligned row range of ``partition_rows`` rows (a power of two); every
array's chunk holds a power-of-two number of rows no larger than a partition, so a partition
is always whole chunks and writers of different partitions never share a chunk.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from featcache.plumbing.errors import UsageError

DEFAULT_PARTITION_ROWS = 4096
TARGET_CHUNK_BYTES = 4 << 20  # chunks land between 2 and 8 MiB: see docs/store-format.md, docs/benchmarks.md
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def chunk_rows_for(row_bytes: int, partition_rows: int) -> int:
    """Power-of-two row count whose chunk is nearest 4 MiB, never more than a partition."""
    if row_bytes <= 0:
        return partition_rows
    rows = 2 ** max(0, round(math.log2(TARGET_CHUNK_BYTES / row_bytes)))
    return int(min(rows, partition_rows))


def check_name(name: str, what: str = "teacher") -> str:
    """A part's name: it becomes a node and a marker path."""
    if not _NAME.match(name):
        raise UsageError(f"{what} name {name!r}: use letters, digits, '_', '.', '-' (not starting with '_')")
    return name


@dataclass(frozen=True)
class Layout:
    rows: int
    views: int
    partition_rows: int
    view_param_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, meta: Mapping[str, Any]) -> "Layout":
        """The layout a store's root metadata records."""
        return cls(int(meta["rows"]), int(meta["views"]), int(meta["partition_rows"]),
                   tuple(str(p) for p in meta.get("view_params", [])))

    def check(self) -> "Layout":
        if self.views < 1:
            raise UsageError(f"views must be >= 1, got {self.views}")
        if self.partition_rows < 1 or self.partition_rows & (self.partition_rows - 1):
            raise UsageError(f"partition_rows must be a power of two, got {self.partition_rows}")
        return self

    @property
    def num_partitions(self) -> int:
        return -(-self.rows // self.partition_rows)

    def partition_range(self, p: int) -> tuple[int, int]:
        if not 0 <= p < self.num_partitions:
            raise IndexError(f"partition {p} out of range 0..{self.num_partitions - 1}")
        start = p * self.partition_rows
        return start, min(start + self.partition_rows, self.rows)

    def chunk_rows(self, row_bytes: int) -> int:
        return chunk_rows_for(row_bytes, self.partition_rows)

    def feature_shape(self, dim: int) -> tuple[int, ...]:
        """A teacher's array: (N, K, D), or (N, D) when the store has one view."""
        return (self.rows, self.views, dim) if self.views > 1 else (self.rows, dim)
