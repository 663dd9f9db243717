"""Every kind of source by name, and reopening one from what a store recorded."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .folders import image_folder, text_categories, text_folder
from .idx_files import fashion_mnist
from .manifests import manifest
from .parquet_tables import parquet
from .source import Source, SourceError, head
from .webdataset_shards import webdataset


def subset(parent: dict[str, Any], rows: list[int], root: str | None = None, keep_labels: bool = False,
           index: dict[str, Any] | None = None) -> Source:
    """Some rows of another source: a labeled subset, or (labels hidden) a transfer set from a pool."""
    base = open_source(parent, root, index)
    idx = np.asarray(rows, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(base)):
        raise SourceError(f"subset rows out of range for a source of {len(base)} rows")
    labels = base.labels[idx] if keep_labels else np.full(len(idx), -1, np.int64)
    params = {"parent": parent, "rows": idx.tolist(), **({"keep_labels": True} if keep_labels else {})}
    return Source("subset", base.modality, [base.sample_ids[i] for i in idx], labels, base.classes, params,
                  lambda i: base.load(int(idx[i])), base.reopen_index, base.walked)


KINDS: dict[str, Callable[..., Source]] = {
    "image_folder": image_folder, "manifest": manifest, "fashion_mnist": fashion_mnist,
    "text_folder": text_folder, "text_categories": text_categories, "subset": subset,
    "parquet": parquet, "webdataset": webdataset,
}


def open_source(description: dict[str, Any], root: str | None = None, index: dict[str, Any] | None = None) -> Source:
    """Reopen a source from what a store recorded; ``root`` relocates its files; ``index`` is the
    plain data the store kept beside the description (``Source.reopen_index``), or None."""
    desc = dict(description)
    kind = desc.pop("kind", None)
    if kind not in KINDS:
        raise SourceError(f"unknown source kind {kind!r} (known: {', '.join(KINDS)})")
    for key in ("modality", "classes") if kind != "webdataset" else ("classes",):
        desc.pop(key, None)
    limit = desc.pop("limit", None)
    if root and kind == "webdataset":  # the same shard names (patterns kept) in another folder
        recorded = desc["root"]
        moved = [os.path.join(root, os.path.basename(r)) for r in ([recorded] if isinstance(recorded, str) else recorded)]
        desc["root"] = moved[0] if isinstance(recorded, str) else moved
    elif root and kind == "parquet" and str(desc.get("root", "")).endswith(".parquet"):
        desc["root"] = os.path.join(root, os.path.basename(desc["root"]))
    elif root:
        desc["root"] = root
    if kind == "subset":
        return subset(desc["parent"], desc["rows"], root, bool(desc.get("keep_labels", False)), index)
    if kind == "manifest" and root:
        desc["path"] = os.path.join(root, os.path.basename(desc["path"]))
    if kind == "webdataset" and index and index.get("kind") == "webdataset":
        desc["index"] = index
    if kind == "parquet":
        desc["from_store"] = True  # a file gone says how to train without it (webdataset: by its fingerprints)
    try:
        source = KINDS[kind](**desc)
    except TypeError as exc:
        raise SourceError(f"source {kind}: {exc}") from exc
    return head(source, limit) if limit else source
