"""Check a store end to end: every metadata document against its own checksum, each teacher's
fingerprint against its recorded spec, the stored shard index against its checksum and the shard
fingerprints, every done marker against the rows it describes, and every partition's bytes
against its marker. Each problem is one line naming what is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featcache.rawdata.identity import dataset_fingerprint
from featcache.rawdata.tar_shards import members_fingerprint

from . import source_index
from .cache import FeatureCache
from .errors import CacheError, CacheNotFoundError, CorruptCacheError
from .fingerprint import short_pair
from .locate import open_backend
from .part import Part, marker_problem
from .part_kinds import BUDGET_HINT, IndexPart, InputsPart, TeacherPart
from .store import UNREADABLE, Store


@dataclass
class VerifyReport:
    path: str
    partitions_checked: int = 0
    documents_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _why(exc: BaseException, path: str = "") -> str:
    """One line: a cache error's own message (less the store path the line already names),
    anything else with its type."""
    if not isinstance(exc, CacheError):
        return f"{type(exc).__name__}: {exc}"
    text = str(exc)
    return text[len(path) + 2:] if path and text.startswith(f"{path}: ") else text


def partition_problem(cache: FeatureCache, part: str, p: int, marker: dict[str, Any]) -> tuple[str | None, dict]:
    """Why partition ``p`` of the part ``part`` (its marker key) does not match its (trusted)
    marker, or None; and the NaN/inf (or invalid-row) counts found in its bytes."""
    return cache.part(part).check(p, marker)


def _parts(cache: FeatureCache, damaged: set[str], report: VerifyReport) -> list[Part]:
    """The index, every teacher and input set, including those whose description is damaged (the
    document check names it), so their partitions are still checked."""
    try:
        return cache.parts(damaged=damaged)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"teachers or inputs: do not list ({_why(exc, cache.path)})")
        return [cache.index]


def _check_partitions(cache: FeatureCache, parts: list[Part], markers: dict[str, dict[str, Any]],
                      damaged: set[str], report: VerifyReport) -> None:
    """Markers, then partitions; a part read through a damaged document is not read (that
    document's own line says why), so one change gives one line."""
    keys = {part.key for part in parts}
    for key, doc in sorted(markers.items()):
        part_key, _, num = key.rpartition("/")
        if UNREADABLE in doc and not (part_key in keys and num.isdigit()):
            report.problems.append(f"marker {key}: {doc[UNREADABLE]}")
        elif part_key not in keys or not num.isdigit() or int(num) >= cache.num_partitions:
            report.problems.append(f"marker {key}: not a partition of this store")
        elif (problem := marker_problem(key, doc, cache.has_doc_checksums)) is not None:
            report.problems.append(f"{problem}; its partition is not checked and counts as not done")
        report.documents_checked += 1
    for part in parts:
        if part.nodes() & damaged:
            continue
        for p in range(cache.num_partitions):
            report.partitions_checked += 1
            key = part.marker_key(p)
            if key not in markers and isinstance(part, InputsPart):
                continue  # an input set still being written is incomplete, not damaged (noted below)
            if key not in markers:
                report.problems.append(f"{part.label} partition {p}: missing (no done marker)")
                continue
            if marker_problem(key, markers[key], cache.has_doc_checksums) is not None:
                continue  # reported above
            problem, counts = part.check(p, markers[key])
            if problem:
                report.problems.append(problem)
            if isinstance(part, TeacherPart) and counts:
                totals = report.nonfinite.setdefault(part.key, {"nan": 0, "inf": 0})
                totals["nan"] += counts["nan"]
                totals["inf"] += counts["inf"]
                if counts["nan"] or counts["inf"]:
                    report.problems.append(f"{part.key} partition {p}: {counts['nan']} NaN and {counts['inf']} inf values")


def _nodes(store: Store, node: str, report: VerifyReport) -> list[str]:
    """Every group and array under ``node``, parents first; a group that does not list is a problem."""
    if node:
        try:
            store.array_meta(node)
            return [node]
        except KeyError:
            pass  # a group
        except Exception:  # noqa: BLE001 - a damaged array document: its own check names it
            return [node]
    try:
        children = store.children(node)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"{node or '/'}: members do not list ({_why(exc)})")
        return [node]
    return [node] + [n for child in children for n in _nodes(store, f"{node}/{child}" if node else child, report)]


def _check_documents(store: Store, expect_checksums: bool, report: VerifyReport) -> set[str]:
    """Every node's document against its checksum; returns the nodes found damaged."""
    old, damaged = 0, set()
    for node in _nodes(store, "", report):
        try:
            problem = store.doc_problem(node)
            attrs = (store.node_doc(node) or {}).get("attributes") if problem == "" else None
        except Exception as exc:  # noqa: BLE001
            problem, attrs = f"{node or '/'}: metadata unreadable ({_why(exc, store.path)})", None
        report.documents_checked += 1
        if problem == "" and expect_checksums:
            problem = (f"{node or '/'}: metadata document has no checksum, unlike the rest of this store "
                       "(changed since it was written)")
        elif problem == "" and (attrs or not node):  # (an old store's group with no attributes says nothing)
            old += 1
        if problem:
            report.problems.append(problem)
            damaged.add(node)
    if old:
        report.notes.append(f"{old} metadata documents predate document checksums (written by an older "
                            "featcache); they are checked against the data only")
    return damaged


def _check_teachers(parts: list[Part], damaged: set[str], report: VerifyReport) -> None:
    for part in parts:
        if not isinstance(part, TeacherPart) or part.node in damaged:
            continue
        try:
            problem = part.fingerprint_problem()
        except Exception as exc:  # noqa: BLE001
            problem = f"{part.node}: description unreadable ({_why(exc, part.store.path)})"
        if problem:
            report.problems.append(problem)


def _recorded_fingerprints(source: dict[str, Any]) -> dict[str, str] | None:
    """The shard fingerprints the source description records (a subset's: its parent's)."""
    while source.get("kind") == "subset":
        source = dict(source.get("parent") or {})
    found = source.get("fingerprints")
    return dict(found) if isinstance(found, dict) else None


def _check_source_index(cache: FeatureCache, damaged: set[str], report: VerifyReport) -> None:
    """The stored shard index: its bytes against their sha256, and each shard's members against
    the fingerprint the source description records (so a reopen can trust its offsets)."""
    if source_index.SOURCE_GROUP in damaged:  # already reported, and read through it the index cannot be
        return
    try:
        doc = cache.source_index_doc()
        if doc is None or source_index.nodes(doc) & damaged:
            return
        index = cache.source_index(strict=True)
    except Exception as exc:  # noqa: BLE001 - damaged bytes are a finding
        report.problems.append(f"source index: unreadable ({_why(exc, cache.path)})")
        return
    report.documents_checked += 1
    if index.get("kind") != "webdataset":
        return
    recorded = _recorded_fingerprints(cache.source)
    shards = index.get("shards") or {}
    for name, shard in sorted(shards.items()):
        found = members_fingerprint(shard.get("members") or [])
        if found != shard.get("fingerprint"):
            report.problems.append(f"source index: shard {name}: its members hash to {found[:12]}, not the "
                                   f"fingerprint it records ({str(shard.get('fingerprint'))[:12]})")
        elif recorded is not None and recorded.get(name) != found:
            report.problems.append(f"source index: shard {name}: fingerprint {found[:12]} is not the one the "
                                   f"source description records ({str(recorded.get(name))[:12]})")
    if recorded is not None and set(recorded) != set(shards):
        report.problems.append(f"source index: lists {len(shards)} shards, the source description "
                               f"{len(recorded)}")


def verify(cache: FeatureCache) -> VerifyReport:
    report = VerifyReport(cache.path)
    damaged = _check_documents(cache.store, cache.has_doc_checksums, report)
    parts = _parts(cache, damaged, report)
    _check_teachers(parts, damaged, report)
    _check_source_index(cache, damaged, report)
    if not IndexPart.id_nodes() & damaged:
        try:
            found = dataset_fingerprint(cache.sample_ids, cache.labels)
            if found != cache.dataset_fingerprint:
                report.problems.append("index: dataset fingerprint mismatch (expected %s, found %s)"
                                       % short_pair(cache.dataset_fingerprint, found))
        except Exception as exc:  # noqa: BLE001
            report.problems.append(f"index: sample ids or labels unreadable ({_why(exc, cache.path)})")
    try:
        markers = cache.store.markers()
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"markers: unreadable ({_why(exc, cache.path)})")
        return report
    _check_partitions(cache, parts, markers, damaged, report)
    if not cache.index.nodes() & damaged:
        try:
            over = cache.budget_problem()
        except Exception as exc:  # noqa: BLE001
            over = f"invalid-row budget unreadable ({_why(exc, cache.path)})"
        if over:
            report.problems.append(f"index: {over}; {BUDGET_HINT}")
    for part in parts:
        done = len(part.done(markers)) if isinstance(part, InputsPart) else cache.num_partitions
        if done < cache.num_partitions:
            report.notes.append(f"{part.label}: {done} of {cache.num_partitions} partitions written (incomplete: "
                                "stage 2 decodes the raw inputs instead)")
    return report


def verify_path(path: str) -> VerifyReport:
    """``verify`` from a path, reporting a store whose root document no longer opens as a problem
    (exit 1) rather than as a usage error; a path holding no store at all still raises."""
    try:
        store = open_backend(path, read_only=True)
    except CorruptCacheError as exc:  # the root document itself does not decode
        report = VerifyReport(path)
        report.problems.append(f"/: the store does not open ({_why(exc, path)})")
        return report
    try:
        try:
            cache = FeatureCache(store)
        except CacheNotFoundError as exc:
            problem = store.doc_problem("")
            if not problem:  # no document of ours, or one that is intact: not a featcache store
                raise
            report = VerifyReport(path)
            report.problems.append(f"{problem}; the store does not open ({_why(exc, path)})")
            return report
        except (CacheError, ValueError) as exc:
            report = VerifyReport(path)
            report.problems.append(f"{store.doc_problem('') or '/'}: the store does not open ({_why(exc, path)})")
            return report
        return verify(cache)
    finally:
        store.close()


RECHECK_WINDOW_S = 60.0  # a power cut loses what the OS had not written back: Linux writes back within ~30 s
RECHECK_MAX = 64  # per part, so a resume stays cheap however fast the last run was


def newest_partitions(cache: FeatureCache, markers: dict[str, dict[str, Any]]) -> list[str]:
    """Marker keys of the partitions each part marked last: those written within RECHECK_WINDOW_S
    of its newest marker (markers without a time: the highest partition, the last one a single
    process writes)."""
    by_part: dict[str, list[tuple[float, int, str]]] = {}
    for key, doc in markers.items():
        if marker_problem(key, doc, cache.has_doc_checksums) is None:
            part, _, num = key.rpartition("/")
            when = doc.get("written_at")
            by_part.setdefault(part, []).append((float(when) if isinstance(when, (int, float)) else float("-inf"),
                                                 int(num), key))
    keys = []
    for entries in by_part.values():
        entries.sort(reverse=True)
        newest = entries[0][0]
        keys += [key for when, _, key in entries[:RECHECK_MAX]
                 if when >= newest - RECHECK_WINDOW_S or key == entries[0][2]]
    return sorted(keys)


def recheck_newest(cache: FeatureCache) -> tuple[list[str], list[str]]:
    """Re-read the partitions the last run marked last and drop the markers of those whose bytes
    do not match (lost writes after a crash), so a resume redoes them. Returns (checked, redone
    problems). The store must be open for writing."""
    markers = cache.store.markers()
    checked = newest_partitions(cache, markers)
    problems = []
    for key in checked:
        part, _, num = key.rpartition("/")
        problem, _ = cache.part(part).check(int(num), markers[key])
        if problem:
            cache.store.delete_marker(key)
            problems.append(problem)
    return checked, problems
