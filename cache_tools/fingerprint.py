"""Stable keys for teachers and documents (a dataset's key is in ``featcache.rawdata.identity``).

A fingerprint is the SHA-256 of the sorted JSON of plain values, so the same
inputs give the same key on any machine and any Python version.

Left out on purpose (they do not change the features): batch size, device,
number of workers, autocast on/off, progress settings, output path. Parameters
equal to their default are dropped before hashing (pass ``defaults``), so adding
a new option with a default keeps old caches valid. Change ``KEY_VERSION`` only
when the meaning of the hashed values changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

KEY_VERSION = 1


def _plain(value: Any) -> Any:
    """Refuse anything that is not JSON-plain: silent str() fallbacks cause silent misses."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot fingerprint a value of type {type(value).__name__}: {value!r}")


def fingerprint(values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """Hash a dict of plain values; keys whose value equals ``defaults[key]`` are dropped."""
    defaults = defaults or {}
    kept = {k: v for k, v in values.items() if not (k in defaults and defaults[k] == v)}
    text = json.dumps({"key_version": KEY_VERSION, **_plain(kept)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def array_checksum(values: np.ndarray) -> str:
    """Checksum of an array's bytes exactly as stored (C order, stored dtype)."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


DOC_CHECKSUM_KEY = "doc_checksum"


def doc_checksum(doc: Mapping[str, Any]) -> str:
    """Checksum of a metadata document (attributes, a done marker) as parsed JSON, leaving out its
    own ``doc_checksum`` entry, so a document can carry the checksum of everything else in it.
    Parsed, not raw bytes: whitespace and key order a writer chooses do not matter, any change
    of a key or value does."""
    body = {k: v for k, v in doc.items() if k != DOC_CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def short_pair(recorded: str, found: str) -> tuple[str, str]:
    """Two checksums cut short for a message, but long enough to show where they differ."""
    recorded, found = str(recorded), str(found)
    first = next((i for i, (a, b) in enumerate(zip(recorded, found)) if a != b), min(len(recorded), len(found)))
    n = max(12, first + 4)
    return recorded[:n], found[:n]
