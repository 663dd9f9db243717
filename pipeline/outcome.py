"""How an extraction run ends: its summary, the log of inputs that failed to decode, and the stop
when too many failed. Free of torch, so that a driver that runs no model (``--engine ray``)
starts without loading it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from featcache.cache_tools import CacheError, FeatureCache
from featcache.plumbing import atomic

from .config import ExtractConfig


class ExtractError(CacheError):
    """The run cannot go on (too many undecodable inputs, inputs changed under a resume)."""


@dataclass(frozen=True)
class Summary:
    """What one extraction run did; ``featcache-extract`` prints it, the Python API returns it."""

    path: str
    rows: int
    valid_rows: int
    teachers: dict[str, int]
    rows_done: int
    seconds: float
    size_bytes: int
    complete: bool
    invalid_log: str | None

    @property
    def rows_per_second(self) -> float:
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0


def invalid_log_path(store: str) -> str:
    if "://" in store:
        return os.path.abspath(f"featcache-invalid-{os.path.basename(store.rstrip('/'))}.log")
    return os.path.normpath(store) + ".invalid.log"


def write_invalid_log(cache: FeatureCache, path: str) -> str | None:
    """Every invalid row's id and reason, in row order (the index markers keep them by id)."""
    reasons = cache.index.invalid_reasons()
    row_of = {sid: i for i, sid in enumerate(cache.sample_ids) if sid in reasons}
    lines = [f"{sid}\t{reasons[sid]}" for sid in sorted(reasons, key=lambda sid: (row_of.get(sid, cache.rows), sid))]
    if not lines:
        if os.path.exists(path):
            os.remove(path)
        return None
    atomic.write_text(path, "".join(line + "\n" for line in lines))
    return path


def stop_over_budget(cfg: ExtractConfig, cache: FeatureCache, invalid: int, rows: int) -> None:
    """ExtractError when more inputs failed than ``max_invalid_fraction`` allows. The store records
    that budget (prepare.py), so until a run within it, it is not complete and says why."""
    if invalid > cfg.max_invalid_fraction * rows:
        logged = write_invalid_log(cache, invalid_log_path(cfg.output.store))
        raise ExtractError(f"{invalid} inputs failed to decode, more than max_invalid_fraction="
                           f"{cfg.max_invalid_fraction} of {rows}; see {logged}")
