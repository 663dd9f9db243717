"""The source's reopen index kept in a store (webdataset: per shard its size, member offsets,
fingerprint, labels), so a reopen skips walking every shard's headers.

    /source                    attrs["featcache_source_index"]: node, sha256, bytes, kind, shards
    /source/index-<sha>  (B,)  uint8   the index as zlib'd JSON, named by its hash
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any, Mapping

import numpy as np

from featcache.plumbing import provenance

from .errors import CacheError, CorruptCacheError
from .fingerprint import short_pair
from .layout import TARGET_CHUNK_BYTES
from .store import Store

SOURCE_INDEX_KEY = "featcache_source_index"
SOURCE_GROUP = "source"


def description(store: Store) -> dict[str, Any] | None:
    """The description of the stored index (node, sha256, bytes...), or None."""
    try:
        if SOURCE_GROUP not in store.children(""):
            return None
        doc = store.get_attrs(SOURCE_GROUP).get(SOURCE_INDEX_KEY)
    except KeyError:
        return None
    return dict(doc) if isinstance(doc, dict) else None


def nodes(doc: Mapping[str, Any]) -> set[str]:
    """The documents the index is read through."""
    return {SOURCE_GROUP, str(doc.get("node"))}


def write(store: Store, index: Mapping[str, Any]) -> None:
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


def read(store: Store, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The stored index; CorruptCacheError when its bytes are not the ones described."""
    data = np.asarray(store.read(str(doc["node"]), 0, int(doc["bytes"])), np.uint8).tobytes()
    found = hashlib.sha256(data).hexdigest()
    if found != doc.get("sha256"):
        raise CorruptCacheError("%s: bytes changed since written (sha256 %s, now %s)"
                                % (doc["node"], *short_pair(doc.get("sha256"), found)))
    return json.loads(zlib.decompress(data))


def kept(store: Store, *, strict: bool = False) -> dict[str, Any] | None:
    """The index the source kept when the store was made, or None (none kept, or its bytes fail
    their checksum: then the source walks its files again, and ``verify`` says why; ``strict``
    raises instead)."""
    doc = description(store)
    if doc is None:
        return None
    try:
        return read(store, doc)
    except (ValueError, KeyError, OSError, CacheError):
        if strict:
            raise
        return None
