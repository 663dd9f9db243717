"""A store's root document (``attrs["featcache"]``) and the order a new store is written in.

The root document records the format version, the ``Layout`` (rows, views, view parameter
names, partition rows), the dataset fingerprint, split, source and provenance; docs/store-format.md
lists its keys. It is written last at creation, so a creation cut off half-way leaves something
that does not open as a featcache store (``locate.creation_cut_off`` tells that apart).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from featcache.plumbing import provenance
from featcache.plumbing.errors import UsageError
from featcache.rawdata.identity import dataset_fingerprint

from . import source_index as _source_index
from .errors import CacheNotFoundError, FormatVersionError
from .layout import Layout
from .part_kinds import IndexPart
from .store import Store

FORMAT_VERSION = 1  # stores with document checksums are still 1: older readers ignore the extra keys
DOC_CHECKSUMS = 1  # root meta "doc_checksums": every document of this store carries its checksum
ROOT_KEY = "featcache"


def read(store: Store) -> dict[str, Any]:
    """The root document; CacheNotFoundError when there is none, FormatVersionError when a newer
    featcache wrote it."""
    try:
        meta = store.get_attrs("").get(ROOT_KEY)
    except KeyError:
        meta = None
    if not isinstance(meta, dict):
        raise CacheNotFoundError(f"{store.path}: not a featcache store (no '{ROOT_KEY}' attributes)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{store.path}: store format version {version} is newer than this featcache reads "
            f"({FORMAT_VERSION}); upgrade featcache")
    return meta


def write(store: Store, meta: Mapping[str, Any]) -> None:
    store.set_attrs("", {ROOT_KEY: dict(meta)})


def rows_of(sample_ids: Sequence[str], labels: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The ids (str objects) and labels (int64, -1 where unlabeled) of a new store, checked before
    anything is written."""
    ids = np.asarray([str(s) for s in sample_ids], dtype=object)
    n = len(ids)
    labels_arr = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if labels_arr.shape != (n,):
        raise UsageError(f"{n} sample ids but {labels_arr.shape[0]} labels")
    if len(set(ids.tolist())) != n:
        raise UsageError("sample ids must be unique")
    return ids, labels_arr


def create(store: Store, layout: Layout, ids: np.ndarray, labels: np.ndarray, *, split: str | None,
           source: Mapping[str, Any] | None, source_index: Mapping[str, Any] | None) -> None:
    """A new, empty store: the index (ids and labels), the source's reopen index, the root document last."""
    IndexPart.create(store, layout, ids, labels)
    if source_index is not None:
        _source_index.write(store, source_index)
    write(store, {
        "format_version": FORMAT_VERSION, "doc_checksums": DOC_CHECKSUMS, "rows": layout.rows, "views": layout.views,
        "view_params": list(layout.view_param_names), "partition_rows": layout.partition_rows,
        "dataset_fingerprint": dataset_fingerprint(ids, labels), "split": split, "source": dict(source or {}),
        "created_by": provenance.created_by(), "created_at": provenance.utc_now(),
    })
