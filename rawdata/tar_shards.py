"""WebDataset tar shards read in place: the headers are scanned once into byte offsets, so one
member is later one seek + read, and nothing is ever unpacked."""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from dataclasses import dataclass, field

from .source import SourceError


_BRACE = re.compile(r"\{([^{}]*)\}")


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


@dataclass
class Sample:
    """One sample of a shard: its members by extension -> (data offset, size)."""
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    problem: str = ""


@dataclass
class ShardIndex:
    path: str
    samples: list[Sample]
    fingerprint: str  # hash of the sorted member names and sizes: no mtime, survives a copy
    cut: str = ""  # why the shard's end is unreadable ("" = read to its end-of-archive block)


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the key ends at the first dot of the basename."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (os.path.join(folder, stem) if folder else stem), ext.lower()


def index_shard(path: str) -> ShardIndex:
    """Scan the tar headers once (no member data is read). A member whose data runs past the end
    of the file marks its sample; a shard that ends without tar's end-of-archive block (cut inside
    a header, or garbage after the last member) gets ``cut``, the reason its remaining samples are lost."""
    size = os.path.getsize(path)
    samples: dict[str, Sample] = {}
    names: list[str] = []
    base = os.path.basename(path)
    cut = ""
    try:
        with tarfile.open(path, mode="r:") as tar:
            while True:
                try:
                    info = tar.next()
                except tarfile.ReadError as exc:
                    cut = f"{base}: unreadable tar header after {len(names)} members ({exc})"
                    break
                if info is None:
                    break
                if not info.isfile():
                    continue
                key, ext = _split_name(info.name)
                sample = samples.setdefault(key, Sample(key))
                sample.members[ext] = (info.offset_data, info.size)
                names.append(f"{info.name}:{info.size}")
                if info.offset_data + info.size > size:
                    sample.problem = (f"{base}: member {info.name} is truncated ({info.size} bytes at offset "
                                      f"{info.offset_data}, the file has {size})")
            end = tar.offset
    except tarfile.ReadError as exc:
        raise SourceError(f"{path}: not a tar file ({exc})") from exc
    if any(s.problem for s in samples.values()):
        cut = ""  # the truncated member's sample already says where the shard ends
    elif not cut and not _has_end_block(path, end):
        cut = f"{base}: cut off after {len(names)} members (no end-of-archive block); later samples are lost"
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return ShardIndex(path, list(samples.values()), digest, cut)


def _has_end_block(path: str, offset: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(offset)
        block = fh.read(512)
    return len(block) == 512 and not any(block)


def read_member(path: str, offset: int, size: int) -> bytes:
    """One seek + read; a short read is a truncated shard."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{os.path.basename(path)}: member at offset {offset} truncated ({len(data)} of {size} bytes)")
    return data
