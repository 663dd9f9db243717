import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from featcache.cache_tools.distributed import Dist
from featcache.train.loop import shard_rows, steps_per_epoch

from conftest import write_config  # noqa: E402  (tests/train/conftest.py)


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
