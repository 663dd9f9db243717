"""WebDataset tar shards read in place: the headers are walked once into byte offsets (an index
of each shard), so one member is later one ranged read, and nothing is ever unpacked.

A shard's index is plain data (``ShardRecord.plain``), so a store can keep it and a later reopen
skips the walk (on object storage the walk costs about a request per member).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any

from .remote_files import Files, RangedFile, is_url
from .source import SourceError


_BRACE = re.compile(r"\{([^{}]*)\}")
BLOCK = 512


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar a-001.tar a-002.tar (zero padding kept); ``{x,y}`` lists."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        items = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(head + item + tail)]


def shard_list(root: str | list[str]) -> list[str]:
    patterns = [root] if isinstance(root, str) else list(root)
    return [path for p in patterns for path in expand_braces(p)]


def basename(path: str) -> str:
    return posixpath.basename(path) if is_url(path) else os.path.basename(path)


@dataclass
class Sample:
    """One sample of a shard: its members by extension -> (data offset, size, header crc)."""
    key: str
    members: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    problem: str = ""


@dataclass
class ShardRecord:
    """What the header walk finds in one shard: its file members in tar order as (name, data
    offset, size, crc32 of the header block just before the data), and why its end is unreadable
    ("" = read to its end-of-archive block)."""
    name: str
    size: int
    members: list[tuple[str, int, int, int]]
    cut: str = ""

    @property
    def fingerprint(self) -> str:
        return members_fingerprint(self.members)

    def plain(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "fingerprint": self.fingerprint, "cut": self.cut,
                "members": [list(m) for m in self.members]}

    @classmethod
    def from_plain(cls, doc: dict[str, Any]) -> "ShardRecord":
        return cls(str(doc["name"]), int(doc["size"]), [(str(n), int(o), int(s), int(h)) for n, o, s, h in doc["members"]],
                   str(doc.get("cut", "")))


def members_fingerprint(members: list[tuple[str, int, int, int]] | list[list[Any]]) -> str:
    """Hash of the sorted member names and sizes: no mtime, no offsets, so it survives a copy."""
    names = sorted(f"{m[0]}:{m[2]}" for m in members)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the key ends at the first dot of the basename."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (os.path.join(folder, stem) if folder else stem), ext.lower()


def samples_of(record: ShardRecord) -> list[Sample]:
    """The shard's samples, grouped by key in order of first appearance; a member whose data runs
    past the end of the file marks its sample, and then says where the shard ends (no cut row)."""
    samples: dict[str, Sample] = {}
    for name, offset, size, head in record.members:
        key, ext = split_name(name)
        sample = samples.setdefault(key, Sample(key))
        sample.members[ext] = (offset, size, head)
        if offset + size > record.size:
            sample.problem = (f"{record.name}: member {name} is truncated ({size} bytes at offset {offset}, "
                              f"the file has {record.size})")
    return list(samples.values())


def walk_shard(files: Files, path: str, size: int, keep: tuple[str, ...] = ()) -> tuple[ShardRecord, dict[str, bytes]]:
    """Walk the tar headers once (member data is skipped, except the small members whose extension
    is in ``keep``, such as labels, which usually sit in the bytes already fetched). A shard that
    ends without tar's end-of-archive block (cut inside a header, or garbage after the last member)
    gets ``cut``, the reason its remaining samples are lost."""
    base = basename(path)
    members: list[tuple[str, int, int, int]] = []
    kept: dict[str, bytes] = {}
    cut = ""
    fh = RangedFile(files, path, size) if is_url(path) else open(path, "rb")  # noqa: SIM115 - closed below
    try:
        try:
            tar = tarfile.open(fileobj=fh, mode="r:")
        except tarfile.ReadError as exc:
            raise SourceError(f"{path}: not a tar file ({exc})") from exc
        while True:
            try:
                info = tar.next()
            except tarfile.ReadError as exc:
                cut = f"{base}: unreadable tar header after {len(members)} members ({exc})"
                break
            if info is None:
                break
            if not info.isfile():
                continue
            fh.seek(info.offset_data - BLOCK)
            head = zlib.crc32(fh.read(BLOCK))
            members.append((info.name, info.offset_data, info.size, head))
            if split_name(info.name)[1] in keep and info.size <= 1 << 20 and info.offset_data + info.size <= size:
                fh.seek(info.offset_data)
                kept[info.name] = fh.read(info.size)
        end = tar.offset
        fh.seek(end)
        end_block = fh.read(BLOCK)
    finally:
        fh.close()
    record = ShardRecord(base, size, members, cut)
    if any(s.problem for s in samples_of(record)):
        record.cut = ""  # the truncated member's sample already says where the shard ends
    elif not cut and not (len(end_block) == BLOCK and not any(end_block)):
        record.cut = f"{base}: cut off after {len(members)} members (no end-of-archive block); later samples are lost"
    return record, kept


class ShardChanged(OSError):
    """A member's header is not what the index recorded: the shard was rewritten since."""


def read_member(files: Files, path: str, offset: int, size: int, head: int) -> bytes:
    """One ranged read of the member's header block and data; the header must be the one indexed
    (same name, size, mtime...), and a short read is a truncated shard."""
    data = files.read(path, offset - BLOCK, offset + size)
    if len(data) >= BLOCK and zlib.crc32(data[:BLOCK]) != head:
        raise ShardChanged(f"{basename(path)}: the member at offset {offset} is not the one indexed "
                           "(the shard changed since it was indexed)")
    if len(data) != size + BLOCK:
        raise OSError(f"{basename(path)}: member at offset {offset} truncated "
                      f"({max(0, len(data) - BLOCK)} of {size} bytes)")
    return data[BLOCK:]
