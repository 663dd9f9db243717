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


class StoreInUseError(CacheError):
    """Another process holds the store's lock (HDF5: one writer, and no reader while it writes).
    The store is not damaged: nothing was changed, and the same command works once it is free."""


class CorruptCacheError(CacheError):
    """Bytes on disk do not decode or do not match their recorded checksum."""


class NotInStoreError(CacheError, KeyError):
    """The store holds no teacher (or input set) of the name asked for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ShapeMismatch(CacheError, ValueError):
    """Values handed to the store do not have the shape it recorded (a teacher's width changed...)."""


class MissingNodeError(CorruptCacheError, KeyError):
    """A group or array the store should hold is not there. Still a KeyError: callers probing
    whether a node exists catch it; one that reaches the command line reads as a damaged store."""

    def __init__(self, path: str, node: str) -> None:
        super().__init__(f"{path}: {node or '/'}: no such group or array")
        self.path, self.node = path, node

    def __reduce__(self):  # rebuilt from its two arguments, not the message: it crosses processes (Ray)
        return type(self), (self.path, self.node)

    def __str__(self) -> str:
        return str(self.args[0])
