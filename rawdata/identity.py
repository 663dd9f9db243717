"""The identity of a dataset split: what a store records so its raw inputs can be recognised later."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

def dataset_fingerprint(sample_ids: Iterable[str], labels: np.ndarray) -> str:
    """Hash of the ordered sample ids and labels: the identity of a dataset split."""
    h = hashlib.sha256(b"featcache-dataset-v1\0")
    count = 0
    for sid in sample_ids:
        h.update(str(sid).encode("utf-8"))
        h.update(b"\0")
        count += 1
    labels = np.ascontiguousarray(np.asarray(labels, dtype="<i8"))
    if labels.shape != (count,):
        raise ValueError(f"{count} sample ids but labels have shape {labels.shape}")
    h.update(labels.tobytes())
    return h.hexdigest()
