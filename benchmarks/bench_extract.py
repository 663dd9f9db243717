"""Extraction overhead against the bare work, and the payoff of one pass for two teachers.

    python benchmarks/bench_extract.py [--rows 2000]

(a) the minimal loop a user would write by hand: decode the inputs, batch them, run
the teacher, keep the features in memory; (b) the full featcache-extract path into a
Zarr store (partitions, checksums, markers). Goal (issue 3): (b)/(a) <= 1.10.
Then two teachers in one pass against two single-teacher runs (goal < 1.0).
Then the same PNGs as WebDataset tar shards and as a Parquet file (issue 15): featcache-extract
rows/s from each against the image folder, same teacher, in the same run (goal: >= 0.9x).
Then (when moto and s3fs are installed) the same shards and Parquet file on a loopback S3 server
(moto, in another process): rows/s against the local shards, and what reopening the shards costs
(requests, seconds) when every shard's headers are walked against the index a store keeps.
Inputs are real Fashion-MNIST images written as PNG files (an image folder), so
decoding costs what it costs on real data. Saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

from featcache.plumbing.config import load_config
from common import EFFNET, result_path, save  # benchmarks/common.py
from featcache.plumbing.provenance import created_by, utc_now
from featcache.rawdata import fashion_mnist, image_folder
from featcache.pipeline.config import ExtractConfig, TeacherConfig
from featcache.pipeline.extract import run_extract
from featcache.pipeline.teachers import build_teacher

SECOND = {**EFFNET, "name": "effnet_lite0_64", "image_size": 64}
BATCH = 128


def write_pngs(root: str, rows: int) -> str:
    src = fashion_mnist(split="train")
    for i in range(rows):
        folder = os.path.join(root, f"{int(src.labels[i])}")
        os.makedirs(folder, exist_ok=True)
        src.load(i).save(os.path.join(folder, f"{i:05d}.png"))
    return root


def hand_loop(root: str, teacher_cfgs: list[dict]) -> float:
    """Decode, batch, encode, keep in memory: nothing else."""
    src = image_folder(root)
    teachers = [build_teacher(TeacherConfig(**t), torch.device("cpu"), "image") for t in teacher_cfgs]
    t0 = time.perf_counter()
    kept = {t.name: [] for t in teachers}
    for a in range(0, len(src), BATCH):
        imgs = [src.load(i) for i in range(a, min(a + BATCH, len(src)))]
        for t in teachers:
            kept[t.name].append(t.encode(t.prepare(imgs)).numpy())
    return time.perf_counter() - t0


def write_shards(root: str, out: str, per_shard: int = 500) -> str:
    """The image folder as WebDataset shards (<key>.png + <key>.cls) and as one Parquet file."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = image_folder(root)
    os.makedirs(out)
    blobs = [open(os.path.join(root, sid), "rb").read() for sid in src.sample_ids]
    for s in range(0, len(blobs), per_shard):
        with tarfile.open(os.path.join(out, f"train-{s // per_shard:06d}.tar"), "w") as tar:
            for i in range(s, min(s + per_shard, len(blobs))):
                for name, data in ((f"{i:06d}.png", blobs[i]), (f"{i:06d}.cls", str(src.labels[i]).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    table = pa.table({"image": blobs, "label": src.labels.tolist()})
    pq.write_table(table, os.path.join(out, "train.parquet"), row_group_size=1000)
    last = (len(blobs) - 1) // per_shard
    return os.path.join(out, f"train-{{000000..{last:06d}}}.tar")


def remote_rows(root: str, tmp: str, pattern: str, local_wds_s: float) -> dict:
    """The shards and the Parquet file behind s3:// URLs on a moto server (another process)."""
    try:
        import s3fs
        from bench_remote import start_server  # benchmarks/bench_remote.py
    except ImportError:
        return {}
    from featcache.cache_tools import FeatureCache
    from featcache.plumbing import storage
    from featcache.rawdata import source_of, webdataset

    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)  # the loopback server takes any key
    proc, endpoint = start_server()
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir("bench-extract")
        folder = os.path.dirname(pattern)
        for name in sorted(os.listdir(folder)):
            fs.put(os.path.join(folder, name), f"bench-extract/{name}")
        opts = {"endpoint_url": endpoint}
        url = f"s3://bench-extract/{os.path.basename(pattern)}"
        store = os.path.join(tmp, "s3wds.zarr")
        wds = min(full_path(root, [EFFNET], store, {"kind": "webdataset", "root": url, "storage": opts})
                  for _ in range(2))
        pqt = min(full_path(root, [EFFNET], os.path.join(tmp, "s3pq.zarr"),
                            {"kind": "parquet", "root": "s3://bench-extract/train.parquet", "storage": opts})
                  for _ in range(2))
        t0 = time.perf_counter()
        walked = webdataset(url, storage_options=opts)
        walk_s = time.perf_counter() - t0
        storage.set_options(opts)
        with FeatureCache.open(store) as cache:
            t0 = time.perf_counter()
            reopened = source_of(cache)
            reopen_s = time.perf_counter() - t0
        storage.reset()
    finally:
        proc.terminate()
    return {"s3_webdataset_s": wds, "s3_parquet_s": pqt, "s3_webdataset_rows_per_s_over_local_shards": local_wds_s / wds,
            "s3_open_walk_requests": walked.files.requests, "s3_open_walk_s": walk_s,
            "s3_reopen_from_index_requests": reopened.files.requests, "s3_reopen_from_index_s": reopen_s}


def full_path(root: str, teacher_cfgs: list[dict], store: str, source: dict | None = None) -> float:
    source = source or {"kind": "image_folder", "root": root}
    cfg = load_config(ExtractConfig, data={"source": source, "teachers": teacher_cfgs,
                                           "batch_size": BATCH, "output": {"store": store, "overwrite": True,
                                                                           "partition_rows": 512}})
    s = run_extract(cfg, log=lambda _m: None)
    assert s.complete
    return s.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--out", default=result_path("bench_extract"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="featcache-bench-extract-")
    try:
        root = write_pngs(os.path.join(tmp, "images"), args.rows)
        hand_loop(root, [EFFNET])  # warm-up: first calls allocate and tune kernels
        a = min(hand_loop(root, [EFFNET]) for _ in range(2))
        b = min(full_path(root, [EFFNET], os.path.join(tmp, "one.zarr")) for _ in range(2))
        sep = sum(min(full_path(root, [t], os.path.join(tmp, f"{t['name']}.zarr")) for _ in range(2))
                  for t in (EFFNET, SECOND))
        both = min(full_path(root, [EFFNET, SECOND], os.path.join(tmp, "both.zarr")) for _ in range(2))
        pattern = write_shards(root, os.path.join(tmp, "shards"))
        wds = min(full_path(root, [EFFNET], os.path.join(tmp, "wds.zarr"), {"kind": "webdataset", "root": pattern})
                  for _ in range(2))
        pqt = min(full_path(root, [EFFNET], os.path.join(tmp, "pq.zarr"),
                            {"kind": "parquet", "root": os.path.join(tmp, "shards", "train.parquet")})
                  for _ in range(2))
        remote = remote_rows(root, tmp, pattern, wds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"rows": args.rows, "batch": BATCH, "threads": torch.get_num_threads(), "featcache": created_by(),
           "at": utc_now(), "hand_loop_s": a, "featcache_extract_s": b, "extract_over_hand": b / a,
           "rows_per_s": {"effnet_lite0@112": args.rows / b}, "two_separate_s": sep, "two_in_one_pass_s": both,
           "one_pass_over_separate": both / sep, "webdataset_s": wds, "parquet_s": pqt,
           "webdataset_rows_per_s_over_folder": b / wds, "parquet_rows_per_s_over_folder": b / pqt, **remote}
    res["goals"] = {"extract_over_hand<=1.10": res["extract_over_hand"] <= 1.10,
                    "one_pass_over_separate<1.0": res["one_pass_over_separate"] < 1.0,
                    "webdataset_over_folder>=0.9": b / wds >= 0.9, "parquet_over_folder>=0.9": b / pqt >= 0.9}
    print(f"hand loop            {a:7.2f} s  ({args.rows / a:,.0f} rows/s)")
    print(f"featcache-extract    {b:7.2f} s  ({args.rows / b:,.0f} rows/s)   ratio {b / a:.3f}x (goal <= 1.10)")
    print(f"two teachers: separate {sep:7.2f} s, one pass {both:7.2f} s   ratio {both / sep:.3f}x (goal < 1.0)")
    print(f"webdataset shards    {wds:7.2f} s  ({args.rows / wds:,.0f} rows/s)   {b / wds:.3f}x the folder's rows/s")
    print(f"parquet              {pqt:7.2f} s  ({args.rows / pqt:,.0f} rows/s)   {b / pqt:.3f}x the folder's rows/s")
    if remote:
        print(f"s3:// shards         {remote['s3_webdataset_s']:7.2f} s  ({args.rows / remote['s3_webdataset_s']:,.0f} "
              f"rows/s)   {remote['s3_webdataset_rows_per_s_over_local_shards']:.3f}x the local shards' rows/s")
        print(f"s3:// parquet        {remote['s3_parquet_s']:7.2f} s  ({args.rows / remote['s3_parquet_s']:,.0f} rows/s)")
        print(f"s3:// open: walk every header {remote['s3_open_walk_requests']} requests "
              f"{remote['s3_open_walk_s']:.2f} s; from the store's index {remote['s3_reopen_from_index_requests']} "
              f"requests {remote['s3_reopen_from_index_s']:.2f} s")
    save(args.out, res)


if __name__ == "__main__":
    main()
