"""Streaming retrieval against the in-memory upper bound, in one run.

    python benchmarks/bench_retrieve.py [--pool 100000] [--queries 1000] [--dim 768] [--k 20]

Baseline: the pool already in memory as float32 unit vectors, one numpy matmul and one
argpartition. Ours: `retrieve`'s streaming top-k over a Zarr store, chunk by chunk,
reading fp16 from disk, plus the quota assignment. Goal (issue 5): >= 0.7x the
baseline's pool rows/s with memory bounded by queries x (k x slack + partition rows), whatever the pool size.
Saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc

import numpy as np

from featcache.cache_tools import FeatureCache
from common import result_path, save  # benchmarks/common.py
from featcache.plumbing.provenance import created_by, utc_now
from featcache.cache_tools.retrieve import retrieve


def make_store(path: str, feats: np.ndarray, labels: np.ndarray, prefix: str) -> FeatureCache:
    cache = FeatureCache.create(path, sample_ids=[f"{prefix}{i}" for i in range(len(feats))], labels=labels)
    cache.add_teacher("t", feats.shape[1], {"model_id": "bench"})
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, features={"t": feats[a:b]}, valid=np.ones(b - a, bool))
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default=result_path("bench_retrieve"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pool_f = rng.standard_normal((args.pool, args.dim), np.float32).astype(np.float16)
    q_f = rng.standard_normal((args.queries, args.dim), np.float32).astype(np.float16)
    tmp = tempfile.mkdtemp(prefix="featcache-bench-retrieve-")
    try:
        pool = make_store(os.path.join(tmp, "pool.zarr"), pool_f, np.full(args.pool, -1), "p")
        queries = make_store(os.path.join(tmp, "q.zarr"), q_f, np.arange(args.queries) % 10, "q")
        m = args.k * 4
        # baseline: in memory, unit vectors ready, one matmul + argpartition
        p32 = pool_f.astype(np.float32)
        p32 /= np.linalg.norm(p32, axis=1, keepdims=True)
        q32 = q_f.astype(np.float32)
        q32 /= np.linalg.norm(q32, axis=1, keepdims=True)
        base = []
        for _ in range(2):
            t0 = time.perf_counter()
            sims = q32 @ p32.T
            np.argpartition(-sims, m - 1, axis=1)[:, :m]
            base.append(time.perf_counter() - t0)
        del sims
        ours = []
        for _ in range(2):
            t0 = time.perf_counter()
            chosen = retrieve(queries, pool, "t", args.k)
            ours.append(time.perf_counter() - t0)
        # memory, traced apart from the timing (tracing slows allocation): the whole pool, then a quarter
        quarter = make_store(os.path.join(tmp, "quarter.zarr"), pool_f[: args.pool // 4],
                             np.full(args.pool // 4, -1), "p")
        peaks = {}
        for name, p in (("pool", pool), ("quarter_pool", quarter)):
            tracemalloc.start()
            retrieve(queries, p, "t", args.k)
            peaks[name] = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    b, o = min(base), min(ours)
    res = {"pool": args.pool, "queries": args.queries, "dim": args.dim, "k": args.k, "featcache": created_by(),
           "at": utc_now(), "baseline_rows_s": args.pool / b, "streaming_rows_s": args.pool / o,
           "ratio": b / o, "streaming_peak_traced_mb": peaks,
           "baseline_sims_matrix_mb": args.queries * args.pool * 4 / 2 ** 20, "chosen": int(len(chosen.rows))}
    res["goals"] = {"ratio>=0.7": res["ratio"] >= 0.7,
                    "memory_does_not_grow_with_pool": peaks["pool"] <= 1.1 * peaks["quarter_pool"]}
    print(f"in-memory matmul+argpartition {args.pool / b:,.0f} pool rows/s; streaming from Zarr "
          f"{args.pool / o:,.0f} rows/s: {b / o:.2f}x (goal >= 0.7)")
    print(f"streaming peak traced memory {peaks['pool']:.0f} MiB for the pool, {peaks['quarter_pool']:.0f} MiB for "
          f"a quarter of it (the baseline's similarity matrix alone is {res['baseline_sims_matrix_mb']:.0f} MiB)")
    save(args.out, res)


if __name__ == "__main__":
    main()
