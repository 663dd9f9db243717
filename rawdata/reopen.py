"""Reopening the raw inputs a store recorded, as both stages (and the inputs tool) do.

Takes anything with the store's ``source`` description, ``dataset_fingerprint`` and ``path`` (a
``FeatureCache``), and its ``source_index()`` when it has one (the plain data a source asked to
keep, such as a shard index), so this room never needs to know how stores are laid out.
"""

from __future__ import annotations

from typing import Any, Protocol

from featcache.plumbing.errors import DataError

from .identity import dataset_fingerprint
from .kinds import open_source
from .source import Source


class SourceMismatch(DataError):
    """The raw inputs found are not the dataset the store was built from."""


class Recorded(Protocol):
    path: str
    source: dict[str, Any]
    dataset_fingerprint: str


def source_of(store: Recorded, data_root: str = "") -> Source:
    """The raw inputs a store recorded (moved to ``data_root`` if given), refused if they are not
    the ones it was built from."""
    reader = getattr(store, "source_index", None)
    index = reader() if callable(reader) else None
    source = open_source(store.source, data_root or None, index)
    found = dataset_fingerprint(source.sample_ids, source.labels)
    if found != store.dataset_fingerprint:
        raise SourceMismatch(
            f"{store.path}: raw inputs at {source.params.get('root') or source.params.get('path')} are not the "
            f"dataset this store was built from (dataset fingerprint {store.dataset_fingerprint[:12]} "
            f"expected, {found[:12]} found)")
    return source
