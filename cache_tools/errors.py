"""Errors raised by the cache layer.

Every message names the store path and, where it applies, what was expected
versus what was found, so the CLI can print it as one line.
"""

from featcache.plumbing.errors import DataError


class CacheError(DataError):
    """Base class: anything wrong with a cache that a user can act on."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """The path does not exist or holds no featcache store."""


class FormatVersionError(CacheError):
    """The store was written by a newer featcache than this one."""


class FingerprintMismatch(CacheError):
    """The data or teacher a caller expects is not what the store holds."""


class ReadOnlyError(CacheError, PermissionError):
    """A write was attempted on a store opened read-only."""


class CorruptCacheError(CacheError):
    """Bytes on disk do not decode or do not match their recorded checksum."""
