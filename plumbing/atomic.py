"""Every whole file featcache writes (results, configs, checkpoints, logs, manifests, markers)
goes through here, so a reader never sees half of one and a crash never leaves one half-written.

The bytes go to a temp file beside the target (same directory, so the rename stays on one
filesystem), named per writer (pid + random: two processes or threads writing the same
target never share a temp file), are flushed and fsync'd, then ``os.replace`` puts them in
place in one step, and on POSIX the directory is fsync'd so the rename itself survives a
power cut. On any error the temp file is removed and the old content stays as it was.

Local paths only: object stores (s3:// ...) publish a PUT atomically on their own.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator

__all__ = ["atomic_open", "write_bytes", "write_text", "write_json", "write_with", "temp_name", "fsync_dir",
           "exchange", "swap_into", "remove_path"]


def temp_name(path: str) -> str:
    """A name beside ``path`` that no other writer (process or thread) picks."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


def fsync_dir(folder: str) -> None:
    """Make a rename or a new name in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: the rename is still atomic
        pass
    finally:
        os.close(fd)


def _discard(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO[Any]]:
    """``with atomic_open(p, "w") as fh: ...``: ``p`` gets everything written, or keeps its old content."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    tmp = temp_name(path)
    # O_EXCL: never reuse a file someone else made; 0o666 lets the umask decide, as open() would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if mode == "wb":
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Sorted keys and a final newline: outputs diff cleanly between runs."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[IO[bytes]], Any]) -> None:
    """Let ``writer`` fill a binary file handle: ``write_with(p, lambda fh: torch.save(obj, fh))``."""
    with atomic_open(path, "wb") as fh:
        writer(fh)


def exchange(a: str, b: str) -> bool:
    """Swap two paths (files or directories) in one atomic step where the OS can (Linux renameat2
    RENAME_EXCHANGE); False where it cannot, so the caller falls back to two renames."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        fsync_dir(os.path.dirname(os.path.abspath(a)))
        return True
    return False  # e.g. EINVAL on a filesystem without exchange support


def remove_path(path: str) -> None:
    """A file or a directory tree; nothing if absent."""
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def swap_into(new: str, dst: str) -> None:
    """Put the finished file or folder ``new`` at ``dst``; what was at ``dst`` is deleted only after.

    A file over a file is one ``os.replace``. Otherwise (a folder, as a Zarr store is) the two
    are exchanged in one step where the OS can, then the old one, now at ``new``, is deleted.
    Elsewhere: the old one is renamed away, the new one renamed in, the old one deleted; a kill
    between those two renames leaves both complete, the old one at ``dst + '.old-*'``.
    """
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.lexists(dst) or (os.path.isfile(dst) and os.path.isfile(new)):
        os.replace(new, dst)
        fsync_dir(folder)
        return
    if exchange(new, dst):
        remove_path(new)
        return
    old = f"{dst}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(dst, old)
    try:
        os.rename(new, dst)
    except BaseException:
        os.rename(old, dst)  # put the old one back: the destination is never left empty by an error
        raise
    fsync_dir(folder)
    remove_path(old)
