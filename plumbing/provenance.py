"""Who wrote a file: package version and git revision, recorded in every store and run."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import subprocess
from importlib import metadata


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    try:
        return metadata.version("featcache")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The checkout's commit (with '-dirty' when it has changes), or None outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def created_by() -> dict[str, str | None]:
    return {"package": "featcache", "version": package_version(), "git": git_revision()}
