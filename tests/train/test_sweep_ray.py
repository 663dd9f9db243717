"""featcache-train sweep --engine ray on a local Ray instance: each run a Ray task, the same
results.json values as the sequential sweep for the same seeds, in a directory compare reads."""

import json
import os
import subprocess
import sys

import pytest

from train_helpers import write_config  # noqa: E402

pytest.importorskip("ray")
EXE = os.path.join(os.path.dirname(sys.executable), "featcache-train")
GRID = ["--grid", "method=stl,aft", "--grid", "seed=0,1", "--set", "data.label_budget=40"]
TIMING = {"wall_seconds", "seconds", "steps_per_second", "rows_per_second"}  # how long, not what


def _sweep(cfg, runs_dir, *more):
    """One thread (OMP_NUM_THREADS=1 here, --ray-cpus 1 on Ray): bit-equal training on the CPU."""
    res = subprocess.run([EXE, "sweep", cfg, *GRID, "--out", str(runs_dir), *more], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    return res.stdout


def _values(runs_dir):
    """Each run's results.json without its timings and its own directory, by run name."""
    out = {}
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, "results.json")
        if os.path.exists(path):
            data = json.load(open(path))
            data["config"].pop("out_dir")
            out[name] = _drop_timing(data)
    return out


def _drop_timing(value):
    if isinstance(value, dict):
        return {k: _drop_timing(v) for k, v in value.items() if k not in TIMING and "seconds" not in k}
    if isinstance(value, list):
        return [_drop_timing(v) for v in value]
    return value


def test_a_sweep_on_ray_gives_the_sequential_results(ray_address, synth, tmp_path):
    train, test = synth
    cfg = write_config(tmp_path / "c.toml", train, test, str(tmp_path / "unused"), epochs=1, batch_size=32, width=16)
    _sweep(cfg, tmp_path / "seq")
    out = _sweep(cfg, tmp_path / "ray", "--engine", "ray", "--address", ray_address, "--ray-cpus", "1")
    assert "4 to run, on Ray" in out and out.count("test accuracy") == 4, out
    seq, on_ray = _values(tmp_path / "seq"), _values(tmp_path / "ray")
    assert len(seq) == 4 and set(on_ray) == set(seq)
    assert all({"test_accuracy", "val_accuracy", "final_losses"} <= set(v) for v in seq.values())
    assert on_ray == seq
    table = subprocess.run([EXE, "compare", str(tmp_path / "ray")], capture_output=True, text=True)
    assert table.returncode == 0 and "| stl |" in table.stdout and "| aft |" in table.stdout, table.stderr
    again = _sweep(cfg, tmp_path / "ray", "--engine", "ray", "--address", ray_address)
    assert "4 already finished, 0 to run" in again
    from featcache.train import train_sweep  # the Python API on this session's Ray instance

    lines = []
    res = train_sweep(cfg, grid={"method": ["stl", "aft"], "seed": [0, 1]}, out=str(tmp_path / "api"),
                      engine="ray", log=lines.append, data={"label_budget": 40})
    assert (res.ran, res.failed) == (4, ()) and any("on Ray" in line for line in lines)
    assert _values(tmp_path / "api") == seq


def test_ray_flags_without_the_engine_are_refused(tmp_path):
    res = subprocess.run([EXE, "sweep", str(tmp_path / "c.toml"), *GRID, "--ray-gpus", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--engine ray" in res.stderr
