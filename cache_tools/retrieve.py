"""Query-balanced retrieval of a transfer set from an unlabeled pool (Vemulapalli et al., ICML 2024).

Every labeled row is a query. The pool streams through once, chunk by chunk, with a
running top-m per query (cosine similarity of one teacher's features), so memory
is O(queries x (m + partition rows)) whatever the pool size. Then each query
claims its nearest unclaimed neighbours in rounds, one per round, until it has k
(a pool row claimed by several queries counts once; the quota fills from the
next neighbours), or the budget is spent. Pool rows that are queries themselves
(same sample id) or exact duplicates of a labeled row (cosine >= 1 - 1e-6) are
never chosen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from featcache.plumbing import atomic

from .cache import FeatureCache, require_complete
from .convert import built_beside
from .errors import CacheError

DUPLICATE_COS = 1 - 1e-6
Progress = Callable[[int, int], None]


@dataclass
class TransferSet:
    rows: np.ndarray  # chosen pool rows, ascending
    query: np.ndarray  # the query row (in the labeled store) that claimed each chosen row
    similarity: np.ndarray  # its cosine similarity to that query
    short_queries: int  # queries that could not fill their quota


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32).reshape(len(x), -1) if x.ndim == 2 else x[:, 0].astype(np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def query_features(cache: FeatureCache, teacher: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm eval-view features of the valid labeled rows, and their row ids."""
    rows = cache.labeled_rows()
    if len(rows) == 0:
        raise CacheError(f"{cache.path}: no valid labeled rows to use as queries")
    return _unit(cache.take(teacher, rows)), rows


def _top_m(sims: np.ndarray, m: int) -> np.ndarray:
    """Column indices of the m largest values of each row (unordered)."""
    n = sims.shape[1]
    if n <= m:
        return np.broadcast_to(np.arange(n), sims.shape).copy()
    return np.argpartition(sims, n - m, axis=1)[:, n - m:]


def stream_topk(queries: np.ndarray, pool: FeatureCache, teacher: str, m: int, excluded_ids: set[str],
                progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each (Q, m) sorted by similarity descending; -inf marks no candidate.

    Per partition: one matmul, the block's own top-m, then a merge with the running top-m
    (Q x 2m), so nothing larger than Q x partition rows is ever held.
    """
    q = len(queries)
    best_s = np.full((q, 0), -np.inf, np.float32)
    best_i = np.zeros((q, 0), np.int64)
    ids = pool.sample_ids
    valid = pool.valid
    for p in range(pool.num_partitions):
        a, b = pool.partition_range(p)
        sims = queries @ _unit(pool.read(teacher, a, b)).T
        bad = ~valid[a:b]
        if excluded_ids:
            bad |= np.fromiter((s in excluded_ids for s in ids[a:b]), bool, b - a)
        sims[:, bad] = -np.inf
        top = _top_m(sims, m)
        top_s = np.take_along_axis(sims, top, 1)
        # an exact duplicate of some labeled row is in that row's top-m: drop it for every query
        dup = np.unique(top[top_s >= DUPLICATE_COS])
        if len(dup):
            top_s[np.isin(top, dup)] = -np.inf
        cat_s = np.concatenate([best_s, top_s], axis=1)
        cat_i = np.concatenate([best_i, top + a], axis=1)
        keep = _top_m(cat_s, m)
        best_s, best_i = np.take_along_axis(cat_s, keep, 1), np.take_along_axis(cat_i, keep, 1)
        if progress:
            progress(p + 1, pool.num_partitions)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)


def assign_quota(idx: np.ndarray, sims: np.ndarray, k: int, budget: int | None = None) -> TransferSet:
    """Round-robin claiming: in each round every unfilled query takes its nearest unclaimed candidate."""
    q, m = idx.shape
    pointer = np.zeros(q, np.int64)
    counts = np.zeros(q, np.int64)
    claimed: dict[int, tuple[int, float]] = {}
    limit = budget if budget is not None else q * k
    active = list(range(q))
    while active and len(claimed) < limit:
        still = []
        for qi in active:
            while pointer[qi] < m and (not np.isfinite(sims[qi, pointer[qi]]) or int(idx[qi, pointer[qi]]) in claimed):
                pointer[qi] += 1
            if pointer[qi] >= m:
                continue
            claimed[int(idx[qi, pointer[qi]])] = (qi, float(sims[qi, pointer[qi]]))
            counts[qi] += 1
            pointer[qi] += 1
            if len(claimed) >= limit:
                break
            if counts[qi] < k:
                still.append(qi)
        active = still
    rows = np.array(sorted(claimed), np.int64)
    short = int(((counts < k) & (pointer >= m)).sum())
    return TransferSet(rows, np.array([claimed[r][0] for r in rows], np.int64),
                       np.array([claimed[r][1] for r in rows], np.float32), short)


def retrieve(queries: FeatureCache, pool: FeatureCache, teacher: str, per_query: int, budget: int | None = None,
             slack: int = 4, progress: Progress | None = None) -> TransferSet:
    require_complete(pool)
    qf, qrows = query_features(queries, teacher)
    excluded = set(queries.sample_ids[qrows].tolist())
    idx, sims = stream_topk(qf, pool, teacher, max(1, per_query * slack), excluded, progress)
    chosen = assign_quota(idx, sims, per_query, budget)
    chosen.query = qrows[chosen.query]  # from query index to the labeled store's row id
    return chosen


def random_transfer(queries: FeatureCache, pool: FeatureCache, size: int, seed: int = 0) -> TransferSet:
    """The paper's control: the same number of pool rows, drawn uniformly (same exclusions)."""
    excluded = set(queries.sample_ids[queries.labeled_rows()].tolist())
    eligible = np.array([i for i in np.flatnonzero(pool.valid) if pool.sample_ids[i] not in excluded], np.int64)
    rows = np.sort(np.random.default_rng(seed).choice(eligible, size=min(size, len(eligible)), replace=False))
    return TransferSet(rows, np.full(len(rows), -1, np.int64), np.full(len(rows), np.nan, np.float32), 0)


def write_subset_store(out: str, src: FeatureCache, rows: np.ndarray, *, keep_labels: bool, split: str,
                       extra: dict[str, Any] | None = None, overwrite: bool = False) -> FeatureCache:
    """A store of some rows of ``src``: its sample ids and raw inputs (by reference), features copied.

    A local ``out`` is built beside itself and swapped in when complete (as ``convert`` does), so
    ``overwrite`` never removes the old store before the new one is whole.
    """
    if "://" in out:
        return _write_subset(out, src, rows, keep_labels=keep_labels, split=split, extra=extra, overwrite=overwrite)
    with built_beside(out, overwrite) as build:
        _write_subset(build, src, rows, keep_labels=keep_labels, split=split, extra=extra).close()
    return FeatureCache.open(out, mode="r+")


def _write_subset(out: str, src: FeatureCache, rows: np.ndarray, *, keep_labels: bool, split: str,
                  extra: dict[str, Any] | None = None, overwrite: bool = False) -> FeatureCache:
    rows = np.asarray(rows, np.int64)
    source = {"kind": "subset", "modality": src.source.get("modality"), "classes": src.source.get("classes", []),
              "parent": src.source, "rows": rows.tolist(), **({"keep_labels": True} if keep_labels else {})}
    labels = src.labels[rows] if keep_labels else np.full(len(rows), -1)
    dst = FeatureCache.create(out, sample_ids=src.sample_ids[rows], labels=labels, views=src.views,
                              view_param_names=src.view_param_names, partition_rows=src.partition_rows,
                              split=split, source=source, overwrite=overwrite)
    for name in src.teachers:
        t = src.teacher_info(name)
        dst.add_teacher(name, t["dim"], t["spec"], dtype=t["dtype"], compressor=t["compressor"],
                        teacher_fingerprint=t["fingerprint"])
    valid = src.valid[rows]
    params = src.view_params[rows] if src.view_param_names else None
    for p in range(dst.num_partitions):
        a, b = dst.partition_range(p)
        feats = {name: src.take(name, rows[a:b]) for name in src.teachers}
        more = {"view_params": params[a:b]} if params is not None else {}
        dst.write_partition(p, features=feats, valid=valid[a:b], **more)
    if extra:
        dst.update_meta(extra)
    return dst


def labeled_subset(src: FeatureCache, per_class: int, seed: int = 0) -> np.ndarray:
    """``per_class`` valid labeled rows of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    rows = src.labeled_rows()
    perm = rng.permutation(rows)
    return np.sort(np.concatenate([perm[src.labels[perm] == c][:per_class] for c in np.unique(src.labels[rows])]))


def write_transfer_store(out: str, pool: FeatureCache, chosen: TransferSet, info: dict[str, Any],
                         overwrite: bool = False, queries: FeatureCache | None = None) -> FeatureCache:
    """The transfer set as a store (labels hidden) plus ``OUT.manifest.jsonl`` (query -> rows, similarity)."""
    dst = write_subset_store(out, pool, chosen.rows, keep_labels=False, split="transfer",
                             extra={"retrieval": info}, overwrite=overwrite)
    if "://" not in out:
        atomic.write_text(os.path.normpath(out) + ".manifest.jsonl",
                          "".join(json.dumps(line) + "\n" for line in _manifest(pool, chosen, queries)))
    return dst


def _manifest(pool: FeatureCache, chosen: TransferSet, queries: FeatureCache | None) -> list[dict[str, Any]]:
    by_query: dict[int, list[int]] = {}
    for i, q in enumerate(chosen.query.tolist()):
        by_query.setdefault(q, []).append(i)
    lines = []
    for q, members in sorted(by_query.items()):
        lines.append({"query_row": q, "query_id": None if queries is None or q < 0 else str(queries.sample_ids[q]),
                      "pool_rows": chosen.rows[members].tolist(),
                      "pool_ids": [str(s) for s in pool.sample_ids[chosen.rows[members]]],
                      "similarities": [None if np.isnan(s) else round(float(s), 6) for s in chosen.similarity[members]]})
    return lines
