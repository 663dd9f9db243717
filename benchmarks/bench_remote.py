"""Chunk-shuffled feature reads from an S3 server on loopback against the same store on local disk.

    python benchmarks/bench_remote.py [--rows 100000] [--dim 768] [--repeats 3]

One run: writes a store locally, pushes it to a moto S3 server started on 127.0.0.1
(in its own process, as a real server would be), then reads an epoch chunk-shuffled
(the way training streams features: one read per chunk, 4 threads) from each, with
1, 4 and 8 reader threads; and it reads
blocks of chunks in one call under zarr's ``async.concurrency`` settings (how many
chunk fetches one call keeps in flight). Peak Python allocations during an epoch
show the memory stays bounded by the blocks in flight, as for local streaming.
Every figure is the best of ``--repeats`` runs (3: about a minute on 2 cores at the default
size). Goal (issue 11): remote/local >= 0.3 on loopback with the reader training uses.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import socket
import tempfile
import time
import tracemalloc

import numpy as np
import zarr

from common import result_path, save  # benchmarks/common.py
from featcache.cache_tools import FeatureCache, convert
from featcache.plumbing import storage
from featcache.plumbing.provenance import created_by, utc_now
from featcache.cache_tools.reading import iter_chunk_shuffled

BATCH = 256
BUCKET = "bench"
READER_THREADS = (1, 4, 8)
TRAINING_THREADS = 4  # training streams with this many reader threads: the goal is measured there
CHUNKS_PER_BLOCK = 8  # chunks shuffled together in one epoch block
CHUNKS_PER_CALL = 8  # chunks per read call in the async.concurrency comparison
ASYNC_CONCURRENCY = (1, 4, 10, 32)
GOAL = 0.3


def _serve(port: int) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    while True:
        time.sleep(3600)


def start_server() -> tuple[mp.Process, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = mp.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    proc.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def write_local(path: str, data: np.ndarray) -> FeatureCache:
    n = len(data)
    cache = FeatureCache.create(path, sample_ids=[str(i) for i in range(n)])
    cache.add_teacher("t", data.shape[1], {"model_id": "bench"})
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, features={"t": data[a:b]}, valid=np.ones(b - a, bool))
    return cache


def epoch(cache: FeatureCache, workers: int, chunks_per_block: int = CHUNKS_PER_BLOCK) -> tuple[float, int]:
    """Rows/s of one chunk-shuffled epoch (one read per chunk from ``workers`` threads, as
    training streams) and the peak bytes Python allocated during it."""
    chunk = cache.chunk_rows("t")
    tracemalloc.start()
    t0 = time.perf_counter()
    rows = 0
    for ids, vals in iter_chunk_shuffled(lambda a, b: cache.read("t", a, b), cache.rows, chunk, BATCH,
                                         rng=np.random.default_rng(1), chunks_per_block=chunks_per_block,
                                         workers=workers):
        rows += len(ids)
        vals.sum(dtype=np.float32)  # touch the bytes like a consumer would
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return rows / secs, peak


def block_reads(cache: FeatureCache, chunks_per_call: int) -> float:
    """Rows/s reading the store in calls of several chunks each, in shuffled block order (one thread)."""
    span = cache.chunk_rows("t") * chunks_per_call
    starts = np.random.default_rng(2).permutation(np.arange(0, cache.rows, span))
    t0 = time.perf_counter()
    for a in starts:
        cache.read("t", int(a), int(min(a + span, cache.rows))).sum(dtype=np.float32)
    return cache.rows / (time.perf_counter() - t0)


def best(fn, repeats: int):
    runs = [fn() for _ in range(repeats)]
    return max(runs, key=lambda r: r[0] if isinstance(r, tuple) else r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3, help="every figure is the best of this many runs")
    ap.add_argument("--out", default=result_path("bench_remote"))
    args = ap.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # the loopback server takes any key
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server, endpoint = start_server()
    storage.set_options({"endpoint_url": endpoint})
    tmp = tempfile.mkdtemp(prefix="featcache-bench-remote-")
    data = np.random.default_rng(0).standard_normal((args.rows, args.dim), dtype=np.float32).astype(np.float16)
    results: dict = {"rows": args.rows, "dim": args.dim, "raw_bytes": data.nbytes, "batch": BATCH,
                     "repeats": args.repeats, "best_of": "max rows/s of the repeats",
                     "reader_threads": list(READER_THREADS), "training_reader_threads": TRAINING_THREADS,
                     "chunks_per_block": CHUNKS_PER_BLOCK, "chunks_per_call": CHUNKS_PER_CALL,
                     "async_concurrency_levels": list(ASYNC_CONCURRENCY),
                     "server": "moto (ThreadedMotoServer) on 127.0.0.1, own process",
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "featcache": created_by(), "at": utc_now()}
    try:
        import s3fs
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(BUCKET)
        local = write_local(os.path.join(tmp, "local.zarr"), data)
        remote_url = f"s3://{BUCKET}/caches/bench.zarr"
        t0 = time.perf_counter()
        convert(local.path, remote_url).close()
        upload = time.perf_counter() - t0
        remote = FeatureCache.open(remote_url)
        chunk_mib = local.chunk_rows("t") * args.dim * 2 / 2**20
        results.update(chunk_rows=local.chunk_rows("t"), chunk_mib=chunk_mib,
                       push_seconds=upload, push_mib_s=data.nbytes / 2**20 / upload)
        print(f"{args.rows} x {args.dim} fp16, chunks of {local.chunk_rows('t')} rows ({chunk_mib:.1f} MiB); "
              f"pushed with featcache-cache convert at {data.nbytes / 2**20 / upload:.0f} MiB/s")
        shuffled: dict = {}
        for workers in READER_THREADS:
            how = f"{workers} reader threads" + (" (as training)" if workers == TRAINING_THREADS else "")
            row = {}
            for name, cache in (("local", local), ("s3", remote)):
                rate, peak = best(lambda: epoch(cache, workers), args.repeats)
                row[name] = {"rows_s": rate, "peak_alloc_mib": peak / 2**20}
            row["s3_vs_local"] = row["s3"]["rows_s"] / row["local"]["rows_s"]
            shuffled[f"threads{workers}"] = row
            print(f"chunk-shuffled epoch, {how:<29}: local {row['local']['rows_s']:>9,.0f} rows/s   s3 "
                  f"{row['s3']['rows_s']:>9,.0f} rows/s   s3/local {row['s3_vs_local']:.2f}x   peak alloc "
                  f"local {row['local']['peak_alloc_mib']:.0f} MiB, s3 {row['s3']['peak_alloc_mib']:.0f} MiB")
        results["chunk_shuffled"] = shuffled
        concurrency: dict = {}
        for level in ASYNC_CONCURRENCY:
            with zarr.config.set({"async.concurrency": level}):
                rate = best(lambda: block_reads(remote, CHUNKS_PER_CALL), args.repeats)
            concurrency[str(level)] = rate
            print(f"s3 reads of {CHUNKS_PER_CALL} chunks per call, zarr async.concurrency={level:<2}: "
                  f"{rate:>10,.0f} rows/s")
        local_block = best(lambda: block_reads(local, CHUNKS_PER_CALL), args.repeats)
        print(f"local reads of {CHUNKS_PER_CALL} chunks per call (default concurrency):  {local_block:>10,.0f} rows/s")
        results["block_reads_8_chunks"] = {"s3_by_async_concurrency": concurrency, "local": local_block}
        local.close()
        remote.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        server.terminate()
    ratio = shuffled[f"threads{TRAINING_THREADS}"]["s3_vs_local"]
    results["goals"] = {f"s3_vs_local_chunk_shuffled>={GOAL}": ratio >= GOAL}
    save(args.out, results)


if __name__ == "__main__":
    main()
