"""Chunk-shuffled sampling: the fast way to read a chunked store in random order.

Random single-row reads cost one store call each (milliseconds in Zarr). Instead
visit chunks in a random order, read several chunks concurrently, permute their
rows in memory, and cut batches. Over an epoch every row is seen once; the order
is random at the block level, which is enough for SGD in practice.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from .cache import FeatureCache

ReadFn = Callable[[int, int], np.ndarray]
ReadManyFn = Callable[[list[tuple[int, int]]], list[np.ndarray]]


def _chunk_rows_wanted(rows: np.ndarray | None, n_rows: int, chunk_rows: int) -> dict[int, np.ndarray]:
    wanted = np.arange(n_rows) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    chunk_of = wanted // chunk_rows
    bounds = np.flatnonzero(np.diff(chunk_of)) + 1
    return {int(group[0] // chunk_rows): group for group in np.split(wanted, bounds) if len(group)}


def iter_chunk_shuffled(read: ReadFn, n_rows: int, chunk_rows: int, batch_size: int, *,
                        rng: np.random.Generator, rows: np.ndarray | None = None, chunks_per_block: int = 8,
                        workers: int = 4, drop_last: bool = False,
                        read_many: ReadManyFn | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row_ids, values)`` batches covering ``rows`` (default: all) once each.

    Memory stays bounded by about ``2 * chunks_per_block`` chunks in flight. With
    ``read_many`` (several row ranges in one call, fetched concurrently by the store)
    each block is one call, two blocks in flight: on object storage this beats one
    call per chunk from a thread pool (benchmarks/bench_remote.py); on a local disk the
    thread pool is as fast. The batches are the same either way.
    """
    by_chunk = _chunk_rows_wanted(rows, n_rows, chunk_rows)
    order = rng.permutation(np.array(sorted(by_chunk), dtype=np.int64)).tolist()

    def load(chunks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        starts = [c * chunk_rows for c in chunks]
        ranges = [(a, min(a + chunk_rows, n_rows)) for a in starts]
        blocks = read_many(ranges) if read_many is not None else [read(a, b) for a, b in ranges]
        return [(by_chunk[c], block[by_chunk[c] - a]) for c, a, block in zip(chunks, starts, blocks)]

    if read_many is None:  # one chunk per task
        units, per_block, in_flight = [[c] for c in order], chunks_per_block, 2 * chunks_per_block
    else:  # one block per task
        units = [order[i:i + chunks_per_block] for i in range(0, len(order), chunks_per_block)]
        per_block, in_flight, workers = 1, 2, 2
    carry_ids = np.empty(0, np.int64)
    carry_vals: np.ndarray | None = None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[Future] = deque()
        todo = iter(units)
        for unit in todo:
            pending.append(pool.submit(load, unit))
            if len(pending) >= in_flight:
                break
        while pending:
            got: list[tuple[np.ndarray, np.ndarray]] = []
            for _ in range(per_block):
                if not pending:
                    break
                got.extend(pending.popleft().result())
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(load, nxt))
            ids = np.concatenate([carry_ids, *[g[0] for g in got]])
            parts = [g[1] for g in got] if carry_vals is None else [carry_vals, *[g[1] for g in got]]
            vals = np.concatenate(parts)
            perm = rng.permutation(len(ids))
            full = (len(ids) // batch_size) * batch_size
            for i in range(0, full, batch_size):
                sel = perm[i:i + batch_size]
                yield ids[sel], vals[sel]
            rest = perm[full:]
            carry_ids, carry_vals = ids[rest], vals[rest]
    if len(carry_ids) and not drop_last:
        yield carry_ids, carry_vals


def iter_teacher_batches(cache: FeatureCache, teacher: str, batch_size: int, *, rng: np.random.Generator,
                         rows: np.ndarray | None = None, **kwargs) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunk-shuffled ``(row_ids, features)`` batches of one teacher of a store."""
    return iter_chunk_shuffled(lambda a, b: cache.read(teacher, a, b), cache.rows, cache.chunk_rows(teacher),
                               batch_size, rng=rng, rows=rows, **kwargs,
                               read_many=(lambda r: cache.read_many(teacher, r)) if cache.remote else None)
