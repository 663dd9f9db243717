"""featcache.cache_tools: the feature-store format, its backends, and the tools around it.

Knows nothing about models: stores hold arrays, fingerprints and done markers.
"""

from featcache.rawdata.identity import dataset_fingerprint

from ._hdf5 import HDF5Store
from ._memory import MemoryStore
from ._zarr import ZarrStore
from .cache import FORMAT_VERSION, INDEX_PART, FeatureCache, require_complete
from .convert import convert
from .errors import (CacheError, CacheNotFoundError, CorruptCacheError, FingerprintMismatch,
                     FormatVersionError, MissingNodeError, NotInStoreError, ReadOnlyError, ShapeMismatch,
                     StoreInUseError)
from .fingerprint import fingerprint
from .store import ArrayMeta, Store
from .verify import VerifyReport, verify

__all__ = [
    "ArrayMeta", "CacheError", "CacheNotFoundError", "CorruptCacheError", "FORMAT_VERSION", "FeatureCache",
    "FingerprintMismatch", "FormatVersionError", "HDF5Store", "INDEX_PART", "MemoryStore", "MissingNodeError",
    "NotInStoreError", "ReadOnlyError", "ShapeMismatch",
    "Store", "StoreInUseError", "VerifyReport", "ZarrStore", "convert", "dataset_fingerprint", "fingerprint",
    "require_complete", "verify",
]
