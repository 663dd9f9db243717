"""What the cache buys in stage 2: epoch time of STL, AFT from the cache, and AFT with
the teacher run online on every batch; and peak memory on the streaming path.

    python benchmarks/bench_train.py [--rows 3000]

Same student, data and batches in one run. Goals (issue 4): AFT-cached / STL <= 1.05;
online / cached reported. Peak RSS of a training process whose store is 4x larger
than max_ram_gb (streaming) against the same process training STL (no features):
goal, extra memory below 2x max_ram_gb. Saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import torch

from featcache.cache_tools import FeatureCache
from featcache.plumbing.config import load_config
from common import EFFNET, result_path, save  # benchmarks/common.py
from featcache.plumbing.provenance import created_by, utc_now
from featcache.rawdata import fashion_mnist
from featcache.pipeline.config import TeacherConfig
from featcache.pipeline.teachers import build_teacher
from featcache.train.config import TrainConfig
from featcache.train.data import Inputs
from featcache.train.loop import Learner, make_optimizer, run
from featcache.train.losses import AFT
from featcache.train.students import StudentSpec, build_student



def random_feature_store(path: str, rows: int, dim: int, split: str = "train") -> str:
    """Fashion-MNIST rows with random fp16 features: timing and memory do not depend on the values."""
    src = fashion_mnist(split=split)
    from featcache.rawdata import head
    src = head(src, rows)
    cache = FeatureCache.create(path, sample_ids=src.sample_ids, labels=src.labels, split=split,
                                source=src.describe(), overwrite=True)
    cache.add_teacher("effnet_lite0", dim, {"model_id": "random-features-for-timing"})
    rng = np.random.default_rng(0)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, features={"effnet_lite0": rng.standard_normal((b - a, dim), np.float32)},
                              valid=np.ones(b - a, bool))
    return path


def cfg(tmp: str, store: str, method: str, **data) -> TrainConfig:
    return load_config(TrainConfig, data={
        "out_dir": os.path.join(tmp, f"run_{method}_{time.time_ns()}"),
        "data": {"store": store, "test_store": "", "val_fraction": 0.05, "test_fraction": 0.05, **data},
        "student": {"name": "small_cnn", "image_size": 32}, "method": {"name": method},
        "optim": {"epochs": 2, "batch_size": 64}})


def epoch_seconds(c: TrainConfig) -> float:
    res = run(c, log=lambda _m: None)
    hist = [json.loads(line) for line in open(os.path.join(c.out_dir, "metrics.jsonl"))]
    return min(h["epoch_seconds"] for h in hist) if res else float("nan")


def online_epoch_seconds(store: str, rows: int) -> float:
    """AFT with the teacher in the loop: the path the cache replaces."""
    torch.manual_seed(0)
    cache = FeatureCache.open(store)
    src = fashion_mnist(split="train")
    student_cfg = load_config(TrainConfig).student
    inputs = Inputs(src, student_cfg)
    teacher = build_teacher(TeacherConfig(**EFFNET), torch.device("cpu"), "image")
    student = build_student(StudentSpec("small_cnn", 10, 32))
    learner = Learner(student, AFT(teacher.dim))
    base = load_config(TrainConfig, data={"optim": {"batch_size": 64}})
    opt = make_optimizer(base, learner)
    ids = np.random.default_rng(0).permutation(np.arange(int(rows * 0.9)))
    t0 = time.perf_counter()
    for i in range(0, len(ids) - 63, 64):
        b = ids[i:i + 64]
        phi = teacher.encode(teacher.prepare([src.load(int(j)) for j in b])).clone()  # out of inference mode
        _, parts = learner(inputs.batch(b), phi, torch.from_numpy(cache.labels[b]))
        opt.zero_grad()
        sum(parts.values()).backward()
        opt.step()
    return time.perf_counter() - t0


def peak_rss_mb(config_path: str) -> float:
    """Peak RSS of one featcache-train process (read from the kernel after it exits)."""
    script = textwrap.dedent(f"""
        import resource, sys
        from featcache.train.cli import main
        rc = main([{config_path!r}])
        print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        sys.exit(rc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return int(out.split("PEAK_KB")[1].split()[0]) / 1024


def memory_check(tmp: str) -> dict:
    store = random_feature_store(os.path.join(tmp, "big.zarr"), 60000, 1536)
    nbytes = 60000 * 1536 * 2
    budget_gb = nbytes / 4 / 2 ** 30
    out = {}
    for method in ("stl", "aft"):
        path = os.path.join(tmp, f"mem_{method}.toml")
        with open(path, "w") as fh:
            fh.write(textwrap.dedent(f"""
                out_dir = {os.path.join(tmp, 'mem_' + method)!r}
                [data]
                store = {store!r}
                test_store = ""
                label_budget = 200
                max_ram_gb = {budget_gb!r}
                [method]
                name = "{method}"
                [optim]
                epochs = 1
                batch_size = 64
            """))
        out[method] = peak_rss_mb(path)
    extra = out["aft"] - out["stl"]
    return {"store_mb": nbytes / 2 ** 20, "max_ram_mb": budget_gb * 1024, "peak_rss_stl_mb": out["stl"],
            "peak_rss_aft_streaming_mb": out["aft"], "extra_mb": extra,
            "extra_over_budget": extra / (budget_gb * 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--out", default=result_path("bench_train"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="featcache-bench-train-")
    try:
        store = random_feature_store(os.path.join(tmp, "s.zarr"), args.rows, 1280)
        stl = epoch_seconds(cfg(tmp, store, "stl"))
        aft = epoch_seconds(cfg(tmp, store, "aft"))
        stl = min(stl, epoch_seconds(cfg(tmp, store, "stl")))
        aft = min(aft, epoch_seconds(cfg(tmp, store, "aft")))
        online = online_epoch_seconds(store, args.rows)
        mem = memory_check(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"rows": args.rows, "student": "small_cnn@32", "teacher": "efficientnet_lite0@112",
           "threads": torch.get_num_threads(), "featcache": created_by(), "at": utc_now(),
           "epoch_s": {"stl": stl, "aft_cached": aft, "aft_online": online},
           "aft_cached_over_stl": aft / stl, "online_over_cached": online / aft, "memory": mem}
    res["goals"] = {"aft_cached_over_stl<=1.05": res["aft_cached_over_stl"] <= 1.05,
                    "streaming_extra_below_2x_budget": mem["extra_over_budget"] < 2.0}
    print(f"epoch seconds: STL {stl:.2f}  AFT cached {aft:.2f}  AFT online {online:.2f}")
    print(f"AFT cached / STL {aft / stl:.3f}x (goal <= 1.05)   online / cached {online / aft:.1f}x")
    print(f"streaming: store {mem['store_mb']:.0f} MiB, max_ram {mem['max_ram_mb']:.0f} MiB, peak RSS STL "
          f"{mem['peak_rss_stl_mb']:.0f} MiB vs AFT {mem['peak_rss_aft_streaming_mb']:.0f} MiB: extra "
          f"{mem['extra_over_budget']:.2f}x the budget (goal < 2)")
    save(args.out, res)


if __name__ == "__main__":
    main()
