"""A store together with its raw inputs, as both stages reopen them."""

from __future__ import annotations

from typing import Sequence

from .cache import FeatureCache, require_complete
from .errors import FingerprintMismatch
from .fingerprint import dataset_fingerprint
from .sources import Source, open_source


def open_with_inputs(path: str, data_root: str = "", mode: str = "r",
                     teachers: Sequence[str] | None = None) -> tuple[FeatureCache, Source]:
    """A complete store (or complete for ``teachers``) and its raw inputs, refused if the inputs
    are not the ones it was built from."""
    cache = FeatureCache.open(path, mode=mode)
    require_complete(cache, teachers)
    return cache, source_of(cache, data_root)


def source_of(cache: FeatureCache, data_root: str = "") -> Source:
    """The raw inputs a store recorded, refused if they are not the ones it was built from."""
    source = open_source(cache.source, data_root or None)
    found = dataset_fingerprint(source.sample_ids, source.labels)
    if found != cache.dataset_fingerprint:
        raise FingerprintMismatch(
            f"{cache.path}: raw inputs at {source.params.get('root') or source.params.get('path')} are not the "
            f"dataset this store was built from (dataset fingerprint {cache.dataset_fingerprint[:12]} "
            f"expected, {found[:12]} found)")
    return source
