"""Store write and chunk-shuffled read throughput against a numpy memmap, in one run.

    python benchmarks/bench_store.py [--rows 200000] [--dim 768]

Prints ratios against the memmap measured in the same run and saves JSON under
benchmarks/results/. Goals (issue 2): chunk-shuffled Zarr reads >= 0.5x the memmap
rate; size on disk <= 1.03x the raw fp16 bytes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from featcache.cache_tools import FeatureCache
from common import result_path, save  # benchmarks/common.py
from featcache.plumbing.provenance import created_by, utc_now
from featcache.cache_tools.reading import iter_chunk_shuffled, iter_teacher_batches

BATCH = 256


def write_store(path: str, backend: str, data: np.ndarray, compressor: str) -> tuple[FeatureCache, float]:
    n = len(data)
    t0 = time.perf_counter()
    cache = FeatureCache.create(path, sample_ids=[str(i) for i in range(n)], backend=backend)
    cache.add_teacher("t", data.shape[1], {"model_id": "bench"}, compressor=compressor)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, features={"t": data[a:b]}, valid=np.ones(b - a, bool))
    return cache, time.perf_counter() - t0


def write_memmap(path: str, data: np.ndarray) -> tuple[np.memmap, float]:
    t0 = time.perf_counter()
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=data.dtype, shape=data.shape)
    step = 4096
    for a in range(0, len(data), step):
        mm[a:a + step] = data[a:a + step]
    mm.flush()
    return np.load(path, mmap_mode="r"), time.perf_counter() - t0


def time_epoch(batches) -> float:
    t0 = time.perf_counter()
    rows = 0
    for ids, vals in batches:
        rows += len(ids)
        vals.sum(dtype=np.float32)  # touch the bytes like a consumer would
    return rows / (time.perf_counter() - t0)


def best_of(fn, repeats: int) -> float:
    return max(fn() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=result_path("bench_store"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.rows, args.dim), dtype=np.float32).astype(np.float16)
    raw = data.nbytes
    tmp = tempfile.mkdtemp(prefix="featcache-bench-")
    results: dict = {"rows": args.rows, "dim": args.dim, "raw_bytes": raw, "batch": BATCH,
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "featcache": created_by(), "at": utc_now(), "backends": {}}
    try:
        mm, mm_write = write_memmap(os.path.join(tmp, "f.npy"), data)
        chunk_rows = 2048
        mm_read = best_of(lambda: time_epoch(iter_chunk_shuffled(
            lambda a, b: mm[a:b], len(mm), chunk_rows, BATCH, rng=np.random.default_rng(1))), args.repeats)
        results["memmap"] = {"write_rows_s": args.rows / mm_write, "read_rows_s": mm_read}
        print(f"memmap       write {args.rows / mm_write:>11,.0f} rows/s   chunk-shuffled read {mm_read:>11,.0f} rows/s")
        for backend, compressor, name in [("zarr", "none", "zarr"), ("zarr", "lz4", "zarr-lz4"),
                                          ("hdf5", "none", "hdf5")]:
            suffix = ".h5" if backend == "hdf5" else ".zarr"
            cache, secs = write_store(os.path.join(tmp, name + suffix), backend, data, compressor)
            cache.close()
            cache = FeatureCache.open(os.path.join(tmp, name + suffix))
            read = best_of(lambda: time_epoch(iter_teacher_batches(
                cache, "t", BATCH, rng=np.random.default_rng(1))), args.repeats)
            size = cache.store.size_on_disk()
            row = {"write_rows_s": args.rows / secs, "read_rows_s": read, "size_bytes": size,
                   "read_vs_memmap": read / mm_read, "write_vs_memmap": mm_write / secs,
                   "size_vs_raw": size / raw, "chunk_rows": cache.chunk_rows("t")}
            results["backends"][name] = row
            cache.close()
            print(f"{name:<12} write {row['write_rows_s']:>11,.0f} rows/s   chunk-shuffled read {read:>11,.0f} rows/s"
                  f"   read/memmap {row['read_vs_memmap']:.2f}x   size/raw {row['size_vs_raw']:.3f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    zr = results["backends"]["zarr"]
    results["goals"] = {"zarr_read_vs_memmap>=0.5": zr["read_vs_memmap"] >= 0.5,
                        "zarr_size_vs_raw<=1.03": zr["size_vs_raw"] <= 1.03}
    save(args.out, results)


if __name__ == "__main__":
    main()
