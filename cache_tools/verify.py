"""Re-read every partition, recompute its checksum, and count non-finite values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from .cache import INDEX_PART, FeatureCache, _index_checksum, _nonfinite
from .errors import CacheError
from .fingerprint import array_checksum, dataset_fingerprint


@dataclass
class VerifyReport:
    path: str
    partitions_checked: int = 0
    problems: list[str] = field(default_factory=list)
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_part(cache: FeatureCache, part: str, start: int, stop: int) -> tuple[str, dict[str, int]]:
    if part == INDEX_PART:
        valid = cache.store.read("index/valid", start, stop)
        params = cache.store.read("views/params", start, stop) if cache.view_param_names else None
        return _index_checksum(valid, params), {}
    values = cache.read(part, start, stop)
    return array_checksum(values), _nonfinite(values)


def _check_partition(cache: FeatureCache, part: str, p: int, marker: dict[str, Any] | None,
                     report: VerifyReport) -> None:
    where = f"{part} partition {p}" if part != INDEX_PART else f"index partition {p}"
    if marker is None:
        report.problems.append(f"{where}: missing (no done marker)")
        return
    start, stop = cache.partition_range(p)
    if (marker.get("start"), marker.get("stop")) != (start, stop):
        report.problems.append(f"{where}: marker covers rows {marker.get('start')}:{marker.get('stop')}, "
                               f"expected {start}:{stop}")
        return
    try:
        checksum, counts = _read_part(cache, part, start, stop)
    except (CacheError, OSError, ValueError, RuntimeError) as exc:
        report.problems.append(f"{where}: unreadable ({exc})")
        return
    if checksum != marker.get("checksum"):
        report.problems.append(f"{where}: checksum mismatch (rows {start}:{stop}; "
                               f"expected {str(marker.get('checksum'))[:12]}, found {checksum[:12]})")
    if counts:
        totals = report.nonfinite.setdefault(part, {"nan": 0, "inf": 0})
        totals["nan"] += counts["nan"]
        totals["inf"] += counts["inf"]
        if counts["nan"] or counts["inf"]:
            report.problems.append(f"{where}: {counts['nan']} NaN and {counts['inf']} inf values")


def verify(cache: FeatureCache) -> VerifyReport:
    report = VerifyReport(cache.path)
    try:
        found = dataset_fingerprint(cache.sample_ids, cache.labels)
        if found != cache.dataset_fingerprint:
            report.problems.append(f"index: dataset fingerprint mismatch (expected "
                                   f"{cache.dataset_fingerprint[:12]}, found {found[:12]})")
    except (CacheError, OSError, ValueError) as exc:
        report.problems.append(f"index: sample ids or labels unreadable ({exc})")
    markers = cache.store.markers()
    for part in [INDEX_PART, *cache.teachers]:
        for p in range(cache.num_partitions):
            _check_partition(cache, part, p, markers.get(f"{part}/{p:06d}"), report)
            report.partitions_checked += 1
    return report
