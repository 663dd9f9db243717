"""What a student's own inputs cost per step: a small CNN at 64 px on full-size JPEGs.

    python benchmarks/bench_inputs.py [--images 800] [--steps 8] [--rounds 3]

Makes its own image folder (Fashion-MNIST images, tinted and upscaled to 256-512 px,
re-encoded as JPEG; no download) and a store over it with two recorded views per row
and random teacher features, then trains the same student on the same batches four ways:

    (a) ceiling   pre-made input tensors in memory: compute only
    (b) decode    today's path: decode, crop, resize every batch on the step's thread
    (c) overlap   decoded by the overlapped pipeline (data.loader_workers threads ahead)
    (d) cached    student inputs cached in the store (featcache-cache inputs), overlapped

Reports rows/s and each one's ratio to (a), and what caching the inputs costs (time,
bytes). Goals on a CPU: (d)/(a) >= 0.9 and (c) no slower than (b); on a GPU, (c)/(a)
is the figure. The step runs on one intra-op thread by default (--torch-threads): on a
2-core machine shared with other work, two OpenMP threads made the step itself up to 3x
slower here, and one core is left for decoding. Saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from common import result_path, save  # benchmarks/common.py
from featcache.cache_tools import FeatureCache
from featcache.plumbing.cli import human_bytes
from featcache.plumbing.config import load_config
from featcache.plumbing.distributed import pick_device
from featcache.cache_tools.inputs import cache_inputs
from featcache.plumbing.provenance import created_by, utc_now
from featcache.rawdata import fashion_mnist, image_folder, source_of
from featcache.rawdata.views import VIEW_PARAMS, sample_view
from featcache.train.config import TrainConfig
from featcache.train.data import FeatureBank, build_splits
from featcache.train.batches import prepare_inputs, train_batches
from featcache.train.loop import Learner, make_optimizer
from featcache.train.losses import AFT
from featcache.train.students import StudentSpec, build_student

SIZE = 64
DIM = 384  # teacher feature width: the batches carry features, as an AFT run's do


def make_jpegs(root: str, count: int) -> None:
    """Fashion-MNIST images (synthetic patterns if it is not installed) as 256-512 px colour JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    try:
        src = fashion_mnist(split="test")
        images = [np.asarray(src.load(i)) for i in range(count)]
        labels = src.labels[:count]
    except Exception:  # no Debian dataset-fashion-mnist: smooth random blobs
        images = [np.repeat(rng.integers(0, 256, (7, 7, 1), dtype=np.uint8), 3, 2) for _ in range(count)]
        labels = rng.integers(0, 10, count)
    for i, (img, label) in enumerate(zip(images, labels)):
        w, h = (int(v) for v in rng.integers(256, 513, size=2))
        tint = rng.uniform(0.5, 1.0, 3)
        colour = (np.asarray(img, np.float32)[..., :3] * tint + rng.uniform(0, 60, 3)).clip(0, 255).astype(np.uint8)
        folder = os.path.join(root, f"class{int(label)}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(colour).resize((w, h), Image.Resampling.BICUBIC).save(
            os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def make_store(path: str, root: str, views: int = 2) -> None:
    """The store stage 1 would write: recorded views and (random) teacher features."""
    src = image_folder(root)
    cache = FeatureCache.create(path, sample_ids=src.sample_ids, labels=src.labels, views=views,
                                view_param_names=VIEW_PARAMS, partition_rows=256, source=src.describe())
    cache.add_teacher("teacher", DIM, {"model_id": "random-features-for-timing"})
    rng = np.random.default_rng(1)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        params = np.stack([[np.array([0, 0, 1, 1, 0], np.float32)]
                           + [sample_view(rng, *src.load(i).size) for _ in range(views - 1)] for i in range(a, b)])
        feats = rng.standard_normal((b - a, views, DIM)).astype(np.float16)
        cache.write_partition(p, features={"teacher": feats}, valid=np.ones(b - a, bool), view_params=params)
    cache.close()


def config(store: str, cached: str, workers: int, batch: int) -> TrainConfig:
    return load_config(TrainConfig, data={
        "data": {"store": store, "test_store": "", "val_fraction": 0.0, "test_fraction": 0.05,
                 "cached_inputs": cached, "loader_workers": workers, "prefetch": 4},
        "student": {"name": "small_cnn", "image_size": SIZE}, "method": {"name": "aft"},
        "optim": {"batch_size": batch}})


class Bench:
    """One student, one optimiser, the same batch order for every mode."""

    def __init__(self, store: str, batch: int, steps: int, width: int, device: torch.device) -> None:
        self.store, self.batch, self.steps, self.device = store, batch, steps, device
        base = config(store, "off", 0, batch)
        self.splits, self.num_classes = build_splits(base)
        train = self.splits["train"]
        self.bank = FeatureBank(train.cache, (), train.rows, 4.0)
        torch.manual_seed(0)
        student = build_student(StudentSpec("small_cnn", self.num_classes, SIZE, width=width))
        self.learner = Learner(student, AFT(DIM)).to(device)
        self.optimizer = make_optimizer(base, self.learner)

    def batches(self, cached: str, workers: int):
        cfg = config(self.store, cached, workers, self.batch)
        train = build_splits(cfg)[0]["train"]
        assert (train.inputs.cached is not None) == (cached == "auto"), train.inputs.origin
        return train_batches(train, self.bank, train.rows, self.batch, np.random.default_rng(0),
                             workers=workers, depth=4, device=self.device)

    def step(self, x, phi, y) -> torch.Tensor:
        x, y, phi = prepare_inputs(x, self.device), y.to(self.device, non_blocking=True), phi.to(self.device)
        _, parts = self.learner(x, phi, y)
        loss = sum(parts.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def rows_per_second(self, batches) -> float:
        """Two warm-up steps, then ``steps`` timed steps; losses summed on the device, read once."""
        it = iter(batches)
        for _ in range(2):
            self.step(*next(it))
        total = torch.zeros((), device=self.device)
        t0 = time.perf_counter()
        for _ in range(self.steps):
            total += self.step(*next(it))
        float(total)  # waits for the device
        secs = time.perf_counter() - t0
        if hasattr(batches, "close"):
            batches.close()
        return self.steps * self.batch / secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each mode's best counts")
    ap.add_argument("--width", type=int, default=64, help="student.width of the small CNN")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="data.loader_workers of (c) and (d)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="intra-op threads of the step (0 = torch's default); 1 leaves a core to the loader")
    ap.add_argument("--out", default=result_path("bench_inputs"))
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = pick_device(0)
    tmp = tempfile.mkdtemp(prefix="featcache-bench-inputs-")
    try:
        root, store = os.path.join(tmp, "jpegs"), os.path.join(tmp, "s.zarr")
        make_jpegs(root, args.images)
        jpeg_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        make_store(store, root)
        with FeatureCache.open(store, mode="r+") as cache:
            before = cache.store.size_on_disk()
            s = cache_inputs(cache, source_of(cache), SIZE, threads=2)
            after = cache.store.size_on_disk()
        bench = Bench(store, args.batch, args.steps, args.width, device)
        need = (args.steps + 2) * args.batch
        if need > len(bench.splits["train"].rows):
            sys.exit(f"--steps {args.steps} x --batch {args.batch} needs more than {args.images} images")
        premade = [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in b)
                   for _, b in zip(range(args.steps + 2), bench.batches("auto", 0))]
        modes = {"a_ceiling": lambda: premade, "b_decode": lambda: bench.batches("off", 0),
                 "c_overlap": lambda: bench.batches("off", args.workers),
                 "d_cached": lambda: bench.batches("auto", args.workers)}
        rates = {k: 0.0 for k in modes}
        for _ in range(args.rounds):  # interleaved, best of rounds: other load on the machine hits every mode
            for key, batches in modes.items():
                rates[key] = max(rates[key], bench.rows_per_second(batches()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {k: v / rates["a_ceiling"] for k, v in rates.items()}
    res = {"images": args.images, "jpeg_sizes": "256-512 px", "jpeg_bytes": jpeg_bytes, "views": 2,
           "student": f"small_cnn@{SIZE} width {args.width}", "batch": args.batch, "timed_steps": args.steps,
           "rounds": args.rounds,
           "loader_workers": args.workers, "device": str(device), "threads": torch.get_num_threads(),
           "featcache": created_by(), "at": utc_now(), "rows_per_s": rates, "ratio_to_ceiling": ratios,
           "overlap_over_decode": rates["c_overlap"] / rates["b_decode"],
           "cache_inputs": {"seconds": s.seconds, "rows_per_s": s.rows_written / s.seconds, "bytes": s.nbytes,
                            "store_bytes_before": before, "store_bytes_after": after}}
    res["goals"] = {"cached/ceiling>=0.9": ratios["d_cached"] >= 0.9,
                    "overlap_no_slower_than_decode": rates["c_overlap"] >= rates["b_decode"]}
    names = {"a_ceiling": "(a) ceiling: tensors in memory", "b_decode": "(b) decode every step",
             "c_overlap": f"(c) decode, {args.workers} workers ahead", "d_cached": "(d) cached inputs"}
    print(f"{'mode':<34} {'rows/s':>8} {'/ (a)':>6}")
    for key, label in names.items():
        print(f"{label:<34} {rates[key]:>8.0f} {ratios[key]:>6.2f}")
    print(f"caching {args.images} rows x 2 views at {SIZE} px: {s.seconds:.1f} s "
          f"({s.rows_written / s.seconds:.0f} rows/s), {human_bytes(s.nbytes)} "
          f"(JPEGs {human_bytes(jpeg_bytes)}; store {human_bytes(before)} -> {human_bytes(after)})")
    save(args.out, res)


if __name__ == "__main__":
    main()
