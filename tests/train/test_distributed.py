import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from featcache.plumbing.distributed import Dist
from featcache.train.batches import shard_rows, steps_per_epoch

from train_helpers import write_config  # noqa: E402


def test_shards_are_disjoint_and_cover_all_rows():
    rows = np.arange(0, 1000, 3)
    shards = [shard_rows(rows, Dist(rank=r, world=3)) for r in range(3)]
    assert sum(len(s) for s in shards) == len(rows)
    assert len(set(np.concatenate(shards).tolist())) == len(rows)


def test_streamed_shards_own_whole_chunks():
    rows = np.sort(np.random.default_rng(0).choice(5000, 1200, replace=False))
    shards = [shard_rows(rows, Dist(rank=r, world=2), chunk_rows=256) for r in range(2)]
    chunks = [set((s // 256).tolist()) for s in shards]
    assert not chunks[0] & chunks[1] and sorted(np.concatenate(shards).tolist()) == rows.tolist()
    steps = steps_per_epoch(rows, Dist(rank=0, world=2), 32, chunk_rows=256)
    assert steps == min(len(s) for s in shards) // 32


@pytest.mark.parametrize("max_ram_gb", [4.0, 1e-6], ids=["in_memory", "streamed"])
def test_torchrun_two_cpu_processes_gloo(synth, tmp_path, max_ram_gb):
    train, test = synth
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    assert shutil.which(torchrun)
    write_config(tmp_path / "c.toml", train, test, str(tmp_path / "run"), epochs=2, batch_size=32, width=32,
                 max_ram_gb=max_ram_gb)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "featcache.train.cli",
                          str(tmp_path / "c.toml")], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    results = [f for f in os.listdir(tmp_path / "run") if f.startswith("results")]
    assert results == ["results.json"]
    out = json.loads((tmp_path / "run" / "results.json").read_text())
    assert out["world_size"] == 2 and out["test_rows"] == 600 and out["epochs"] == 2
    assert res.stdout.count("done:") == 1  # only rank 0 reports


class _FakeGPUs:
    """CUDA reported present (two devices) and a process group that records instead of connecting."""

    def __init__(self, monkeypatch, devices: int = 2):
        import torch
        import torch.distributed as tdist
        self.calls: list[tuple[str, object]] = []
        self.started = False
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: self.calls.append(("set_device", d)))
        monkeypatch.setattr(tdist, "is_initialized", lambda: self.started)
        monkeypatch.setattr(tdist, "init_process_group", self._init)
        monkeypatch.setattr(tdist, "all_reduce", lambda t, op=None: self.calls.append(("all_reduce", t.device.type)))

    def _init(self, backend, **kw):
        self.calls.append(("init", backend))
        self.started = True


def test_gpu_ranks_bind_their_device_before_the_group_starts_with_a_cpu_backend(monkeypatch):
    from featcache.plumbing import distributed
    fake = _FakeGPUs(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = distributed.setup()
    assert fake.calls == [("set_device", 1), ("init", "cpu:gloo,cuda:nccl")]
    assert (d.rank, d.world, d.local_rank) == (1, 2, 1)
    assert str(distributed.pick_device(d.local_rank)) == "cuda:1"


def test_every_collective_device_has_a_backend(monkeypatch, synth, tmp_path):
    """The CPU counts of evaluation and extraction travel over gloo: each device is in the backend string."""
    import torch
    from featcache.plumbing import distributed
    from featcache.plumbing.config import load_config
    from featcache.train.config import TrainConfig
    from featcache.train.data import build_splits
    from featcache.train.evaluation import evaluate
    from featcache.train.loop import Learner
    from featcache.train.losses import MethodLoss
    from featcache.train.students import StudentSpec, build_student

    fake = _FakeGPUs(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    d = distributed.setup()
    train, test = synth
    cfg = load_config(TrainConfig, data={"data": {"store": train, "test_store": test}, "student": {"image_size": 28,
                                                                                                  "width": 16}})
    splits, classes = build_splits(cfg)
    learner = Learner(build_student(StudentSpec("small_cnn", classes, 28, 0, 0, 16)), MethodLoss())
    evaluate(learner, splits["val"], classes, torch.device("cpu"), d)
    distributed.all_sum(torch.tensor([3]))  # extraction's rows_done
    backends = dict(part.split(":") for part in distributed.backend_for(True).split(","))
    devices = [dev for what, dev in fake.calls if what == "all_reduce"]
    assert len(devices) == 4 and all(dev in backends for dev in devices)
    assert distributed.backend_for(False) == "gloo"


def test_more_ranks_than_gpus_is_one_clear_error(monkeypatch):
    from featcache.plumbing import distributed
    _FakeGPUs(monkeypatch, devices=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="LOCAL_RANK 1: only 1 CUDA device"):
        distributed.setup()
