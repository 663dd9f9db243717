"""Check a store end to end: every metadata document against its own checksum, each teacher's
fingerprint against its recorded spec, the stored shard index against its checksum and the shard
fingerprints, every done marker against the rows it describes, and every partition's bytes
against its marker. Each problem is one line naming what is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featcache.rawdata.identity import dataset_fingerprint
from featcache.rawdata.tar_shards import members_fingerprint

from .cache import (BUDGET_HINT, INDEX_PART, INPUTS_KEY, SOURCE_GROUP, TEACHER_KEY, FeatureCache, _index_checksum,
                    _nonfinite, inputs_checksum, read_source_index)
from .errors import CacheError, CacheNotFoundError, CorruptCacheError
from .fingerprint import array_checksum, fingerprint, short_pair
from .locate import open_backend
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


def _read_part(cache: FeatureCache, part: str, start: int, stop: int) -> tuple[str, dict[str, int]]:
    if part == INDEX_PART:
        valid = cache.store.read("index/valid", start, stop)
        params = cache.store.read("views/params", start, stop) if cache.view_param_names else None
        return _index_checksum(valid, params), {"invalid": int((~valid.astype(bool)).sum())}
    if part.startswith("inputs/"):
        arrays = cache.store.get_attrs(part)[INPUTS_KEY]["arrays"]
        return inputs_checksum({a: cache.store.read(f"{part}/{a}", start, stop) for a in arrays}), {}
    values = cache.store.read(f"teachers/{part}/features", start, stop)
    return array_checksum(values), _nonfinite(values)


def partition_problem(cache: FeatureCache, part: str, p: int, marker: dict[str, Any]) -> tuple[str | None, dict]:
    """Why partition ``p`` of ``part`` does not match its (trusted) marker, or None; and the
    NaN/inf (or invalid-row) counts found in its bytes."""
    where = f"{part} partition {p}" if part != INDEX_PART else f"index partition {p}"
    start, stop = cache.partition_range(p)
    if (marker.get("start"), marker.get("stop"), marker.get("rows")) != (start, stop, stop - start):
        return (f"{where}: marker covers rows {marker.get('start')}:{marker.get('stop')} ({marker.get('rows')} rows), "
                f"expected {start}:{stop}"), {}
    try:
        checksum, counts = _read_part(cache, part, start, stop)
    except Exception as exc:  # noqa: BLE001 - whatever damaged bytes raise is a finding, not a crash
        return f"{where}: unreadable ({_why(exc, cache.path)})", {}
    if checksum != marker.get("checksum"):
        return (f"{where}: checksum mismatch (rows {start}:{stop}; expected %s, found %s)"
                % short_pair(marker.get("checksum"), checksum)), counts
    recorded = {k: marker.get(k) for k in counts}
    if recorded != counts:
        return f"{where}: marker records {recorded}, the rows hold {counts}", counts
    return None, counts


def _teacher_names(cache: FeatureCache, damaged: set[str]) -> list[str]:
    """The teachers, including one whose document is damaged (the document check names it),
    so its partitions are still checked."""
    store = cache.store
    names = store.children("teachers") if "teachers" in store.children("") else []
    out = []
    for name in names:
        try:
            if f"teachers/{name}" in damaged or TEACHER_KEY in store.get_attrs(f"teachers/{name}"):
                out.append(name)
        except Exception:  # noqa: BLE001
            out.append(name)
    return out


def _part_nodes(part: str) -> set[str]:
    """The documents a part's partitions are read through."""
    if part == INDEX_PART:
        return {"", "index", "index/valid", "views", "views/params"}
    if part.startswith("inputs/"):
        return {"", "inputs", part, f"{part}/pixels", f"{part}/ids", f"{part}/lengths"}
    return {"", "teachers", f"teachers/{part}", f"teachers/{part}/features"}


def _input_parts(cache: FeatureCache, damaged: set[str], report: VerifyReport) -> list[str]:
    """``inputs/<name>`` of each cached input set (`featcache-cache inputs`)."""
    try:
        names = cache.store.children("inputs") if "inputs" in cache.store.children("") else []
        return [f"inputs/{n}" for n in names if f"inputs/{n}" in damaged
                or INPUTS_KEY in cache.store.get_attrs(f"inputs/{n}")]
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"inputs: do not list ({_why(exc, cache.path)})")
        return []


def _check_partitions(cache: FeatureCache, teachers: list[str], markers: dict[str, dict[str, Any]],
                      damaged: set[str], report: VerifyReport) -> None:
    """Markers, then partitions; a part read through a damaged document is not read (that
    document's own line says why), so one change gives one line."""
    inputs = _input_parts(cache, damaged, report)
    parts = [INDEX_PART, *teachers, *inputs]
    for key, doc in sorted(markers.items()):
        part, _, num = key.rpartition("/")
        if UNREADABLE in doc and not (part in parts and num.isdigit()):
            report.problems.append(f"marker {key}: {doc[UNREADABLE]}")
        elif part not in parts or not num.isdigit() or int(num) >= cache.num_partitions:
            report.problems.append(f"marker {key}: not a partition of this store")
        elif (problem := cache.marker_problem(key, doc)) is not None:
            report.problems.append(f"{problem}; its partition is not checked and counts as not done")
        report.documents_checked += 1
    for part in parts:
        if _part_nodes(part) & damaged:
            continue
        for p in range(cache.num_partitions):
            report.partitions_checked += 1
            key = f"{part}/{p:06d}"
            if key not in markers and part in inputs:
                continue  # an input set still being written is incomplete, not damaged (noted below)
            if key not in markers:
                report.problems.append(f"{part if part != INDEX_PART else 'index'} partition {p}: "
                                       "missing (no done marker)")
                continue
            if cache.marker_problem(key, markers[key]) is not None:
                continue  # reported above
            problem, counts = partition_problem(cache, part, p, markers[key])
            if problem:
                report.problems.append(problem)
            if part != INDEX_PART and counts:
                totals = report.nonfinite.setdefault(part, {"nan": 0, "inf": 0})
                totals["nan"] += counts["nan"]
                totals["inf"] += counts["inf"]
                if counts["nan"] or counts["inf"]:
                    report.problems.append(f"{part} partition {p}: {counts['nan']} NaN and {counts['inf']} inf values")


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


def _check_teachers(cache: FeatureCache, teachers: list[str], damaged: set[str], report: VerifyReport) -> None:
    for name in teachers:
        if f"teachers/{name}" in damaged:
            continue
        try:
            doc = cache.store.get_attrs(f"teachers/{name}")[TEACHER_KEY]
            found = fingerprint({**doc["spec"], "dim": int(doc["dim"]), "dtype": doc["dtype"]})
        except Exception as exc:  # noqa: BLE001
            report.problems.append(f"teachers/{name}: description unreadable ({_why(exc, cache.path)})")
            continue
        if found != doc.get("fingerprint"):
            report.problems.append(f"teachers/{name}: fingerprint {str(doc.get('fingerprint'))[:12]} is not the "
                                   f"hash of its recorded spec ({found[:12]})")


def _recorded_fingerprints(source: dict[str, Any]) -> dict[str, str] | None:
    """The shard fingerprints the source description records (a subset's: its parent's)."""
    while source.get("kind") == "subset":
        source = dict(source.get("parent") or {})
    found = source.get("fingerprints")
    return dict(found) if isinstance(found, dict) else None


def _check_source_index(cache: FeatureCache, damaged: set[str], report: VerifyReport) -> None:
    """The stored shard index: its bytes against their sha256, and each shard's members against
    the fingerprint the source description records (so a reopen can trust its offsets)."""
    if SOURCE_GROUP in damaged:
        return
    try:
        doc = cache.source_index_doc()
        if doc is None:
            return
        if str(doc.get("node")) in damaged:
            return
        index = read_source_index(cache.store, doc)
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
    try:
        teachers = _teacher_names(cache, damaged)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"teachers: do not list ({_why(exc, cache.path)})")
        teachers = []
    _check_teachers(cache, teachers, damaged, report)
    _check_source_index(cache, damaged, report)
    if not {"", "index", "index/sample_id", "index/label"} & damaged:
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
    _check_partitions(cache, teachers, markers, damaged, report)
    if not {"index", *_part_nodes(INDEX_PART)} & damaged:
        try:
            over = cache.budget_problem()
        except Exception as exc:  # noqa: BLE001
            over = f"invalid-row budget unreadable ({_why(exc, cache.path)})"
        if over:
            report.problems.append(f"index: {over}; {BUDGET_HINT}")
    inputs = _input_parts(cache, damaged, report)
    trusted = cache.trusted_done(inputs)
    for part in inputs:
        done = len(trusted[part])
        if done < cache.num_partitions:
            report.notes.append(f"{part}: {done} of {cache.num_partitions} partitions written (incomplete: "
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
        if cache.marker_problem(key, doc) is None:
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
        problem, _ = partition_problem(cache, part, int(num), markers[key])
        if problem:
            cache.store.delete_marker(key)
            problems.append(problem)
    return checked, problems
