"""Files of a source behind a local path or any fsspec URL (s3://, gs://, az://, memory://).

Reads are ranged: one member of a shard, one Parquet column chunk, never a whole object to get one
row. Options (endpoint, credentials) come from ``plumbing.storage``; a source passes its own
``[source.storage]`` table as ``options``, which is never recorded anywhere.
"""

from __future__ import annotations

import os
import posixpath
import threading
from typing import Any, Mapping

from featcache.plumbing import storage


def is_url(path: str) -> bool:
    return "://" in str(path)


def normalise(path: str) -> str:
    """Local paths absolute (so a store records where they are); URLs as given."""
    return str(path) if is_url(path) else os.path.abspath(path)


def join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if is_url(folder) else os.path.join(folder, name)


class Files:
    """The filesystem(s) a source's paths live on, opened once, with a count of the requests sent
    (ranged reads and listings), so tests and benchmarks can say what a scan cost."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self._fs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_read = 0

    def fs(self, path: str) -> tuple[Any, str]:
        """(fsspec filesystem, path inside it); one filesystem per protocol."""
        proto = storage.protocol(path)
        if proto not in self._fs:
            self._fs[proto] = storage.filesystem(path, self.options)[0]
        fs = self._fs[proto]
        return fs, fs._strip_protocol(path) if is_url(path) else path

    def _count(self, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_read += nbytes

    def read(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``start:end`` (fewer at the end of the file): one request."""
        if not is_url(path):
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read(end - start)
        else:
            fs, inner = self.fs(path)
            data = fs.cat_file(inner, start=start, end=end)
        self._count(len(data))
        return data

    def cat(self, path: str) -> bytes:
        """A whole (small) file, such as an image a Parquet path column names: one request."""
        if not is_url(path):
            with open(path, "rb") as fh:
                data = fh.read()
        else:
            fs, inner = self.fs(path)
            data = fs.cat_file(inner)
        self._count(len(data))
        return data

    def sizes(self, paths: list[str]) -> dict[str, int | None]:
        """Each file's size (None: not found): a stat per local file, one listing per remote folder."""
        out: dict[str, int | None] = {}
        folders: dict[str, list[str]] = {}
        for p in paths:
            if is_url(p):
                folders.setdefault(posixpath.dirname(p), []).append(p)
            else:
                out[p] = os.path.getsize(p) if os.path.isfile(p) else None
        for folder, members in folders.items():
            fs, inner = self.fs(folder)
            try:
                listing = fs.ls(inner, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                listing = []
            self._count(0)
            found = {posixpath.basename(e["name"].rstrip("/")): e.get("size") for e in listing
                     if e.get("type") != "directory"}
            for p in members:
                out[p] = found.get(posixpath.basename(p))
        return out

    def open(self, path: str, **kw: Any) -> Any:
        """A seekable binary file: a local file, or an fsspec file for a URL."""
        if not is_url(path):
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        fs, inner = self.fs(path)
        return fs.open(inner, "rb", **kw)


class RangedFile:
    """A read-only file over ranged reads: a read outside the current window fetches ``window``
    bytes from there, so walking tar headers costs about one request per member whose data is
    larger than the window (and none for the small members in between), never the whole file."""

    def __init__(self, files: Files, path: str, size: int, window: int = 16 << 10) -> None:
        self.files, self.path, self.size, self.window = files, path, size, window
        self.pos, self._start, self._buf = 0, 0, b""
        self.name = path

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.pos + n, self.size)
        if end <= self.pos:
            return b""
        if not (self._start <= self.pos and end <= self._start + len(self._buf)):
            self._start = self.pos
            self._buf = self.files.read(self.path, self.pos, min(self.size, max(end, self.pos + self.window)))
        out = self._buf[self.pos - self._start:end - self._start]
        self.pos += len(out)
        return out

    def close(self) -> None:
        self._buf = b""
