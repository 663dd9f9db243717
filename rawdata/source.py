"""What a source is: its rows (stable sample ids, labels, class names) and one row's raw input.

A source's ``describe()`` is what a store records under ``source``, so stage 2 can reopen the
same inputs (optionally from another root) without knowing how stage 1 was configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from featcache.plumbing.errors import DataError, UsageError


class SourceError(UsageError):
    """The source as configured cannot be listed (bad path, bad manifest)."""


class SourceChanged(DataError):
    """The raw inputs changed since a store recorded them (a shard rewritten): the data moved under
    the store, not a mistake in the command, so it exits 1 like a store of another dataset."""


class InputError(DataError):
    """One row's input cannot be read or decoded; the row is marked invalid."""


@dataclass
class Source:
    kind: str
    modality: str  # "image" or "text"
    sample_ids: list[str]
    labels: np.ndarray
    classes: list[str]
    params: dict[str, Any]
    _load: Callable[[int], Any] = field(repr=False)
    # plain data a store keeps beside the description so a reopen skips costly listing work
    # (webdataset: the shard index); passed back as ``index=`` (see ``kinds.open_source``)
    reopen_index: dict[str, Any] | None = field(default=None, repr=False)
    # how many files opening had to read through because no index served them (webdataset: shard
    # header walks); torchrun ranks report it so a user sees the walk happened once, not per rank
    walked: int = 0

    def __len__(self) -> int:
        return len(self.sample_ids)

    def load(self, i: int) -> Any:
        """The raw input of row ``i``: an RGB PIL image or a non-empty string; InputError if unusable."""
        return self._load(i)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "modality": self.modality, "classes": list(self.classes), **self.params}


def head(source: Source, limit: int) -> Source:
    """The first ``limit`` rows (recorded as ``limit`` so the same rows reopen later)."""
    if limit <= 0 or limit >= len(source):
        return source
    return Source(source.kind, source.modality, source.sample_ids[:limit], source.labels[:limit],
                  source.classes, {**source.params, "limit": int(limit)}, source._load, source.reopen_index,
                  source.walked)


def named_labels(values: list[Any], names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Ints stay ints (with ``names`` as classes when known); strings become indices into their sorted set."""
    strings = [v for v in values if isinstance(v, str) and not v.lstrip("-").isdigit()]
    if strings:
        classes = sorted(set(strings))
        to_int = {c: i for i, c in enumerate(classes)}
        return np.array([to_int.get(v, -1) if isinstance(v, str) else -1 for v in values], np.int64), classes
    return np.array([-1 if v in (None, "") else int(v) for v in values], np.int64), list(names or [])
