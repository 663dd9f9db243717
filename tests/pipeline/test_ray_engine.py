"""featcache-extract --engine ray on a local Ray instance (loopback only): a pool of actors gives
the store one process gives, also when an actor's process is killed mid-partition (Ray restarts
it and reruns the partition), and on the loopback S3 server; a user's mistakes are one line."""

import os
import signal
import subprocess
import time

import pytest

from featcache.cache_tools import FeatureCache
from featcache.pipeline.ray_engine import plan_pool
from featcache.pipeline.workers import HOLD_ENV

from extract_helpers import BUCKET, assert_same_store, exe, finish, one_thread_env, partitioned_config

pytest.importorskip("ray")


def _extract_on_ray(cfg, address, *more, **env_extra):
    return subprocess.Popen([exe("featcache-extract"), cfg, "--engine", "ray", "--address", address,
                             "--ray-workers", "2", *more], env=one_thread_env(**env_extra), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_pool_sizes():
    assert plan_pool(64, 8) == plan_pool(64, 8, workers=8)
    assert (plan_pool(64, 8).actors, plan_pool(64, 8).gpus) == (8, 1)
    assert (plan_pool(16, 0).actors, plan_pool(16, 0).cpus) == (4, 4)
    assert (plan_pool(2, 0).actors, plan_pool(2, 0).cpus) == (1, 2)
    assert (plan_pool(2, 0, workers=2).actors, plan_pool(2, 0, workers=2).cpus) == (2, 1)
    assert plan_pool(16, 0, cpus=8).actors == 2


def test_the_driver_loads_no_model():
    """Only the actors run teachers: the driver's module leaves torch and the model libraries alone."""
    import sys

    code = ("import sys, featcache.pipeline.cli, featcache.pipeline.ray_engine; "
            "print(sorted(m for m in ('torch', 'timm', 'transformers', 'open_clip') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr + res.stdout


def test_ray_actors_give_the_one_process_store(ray_address, reference_store, tmp_path):
    images, ckpt, ref = reference_store
    store = str(tmp_path / "ray.zarr")
    out = finish(_extract_on_ray(partitioned_config(tmp_path, images, ckpt, store), ray_address), 300, 3000)
    assert "ray: 2 actors (1 CPU each) for 6 partitions" in out and "(complete," in out
    assert_same_store(ref, store)
    again = finish(_extract_on_ray(partitioned_config(tmp_path, images, ckpt, store), ray_address), 300, 3000)
    assert "resuming: 6 of 6 partitions already done" in again and "for 0 partitions" in again


def test_the_python_api_runs_on_the_sessions_ray_instance(ray_address, reference_store, tmp_path):
    """extract_features(engine="ray") in a process where ray.init already ran (a notebook): that
    instance is used, and left running."""
    import ray

    from featcache.pipeline import extract_features

    images, ckpt, ref = reference_store
    store = str(tmp_path / "api.zarr")
    lines = []
    summary = extract_features(partitioned_config(tmp_path, images, ckpt, store), engine="ray", ray_workers=2,
                               log=lines.append)
    assert summary.complete and summary.rows_done == summary.rows and ray.is_initialized()
    assert "ray: 2 actors (1 CPU each) for 6 partitions" in lines
    assert_same_store(ref, store)


def test_an_actor_killed_mid_partition_is_restarted_and_its_partition_rerun(ray_address, reference_store, tmp_path):
    images, ckpt, ref = reference_store
    store = str(tmp_path / "killed.zarr")
    held = tmp_path / "hold"
    held.mkdir()
    proc = _extract_on_ray(partitioned_config(tmp_path, images, ckpt, store), ray_address, **{HOLD_ENV: f"3:{held}"})
    deadline = time.time() + 300  # actors' start, the preparation and partitions 0-2 on a busy CI machine
    while not (held / "held").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (held / "held").exists(), proc.communicate()[1][-3000:]
    pid = int((held / "held").read_text())
    assert 3 not in FeatureCache.open(store).index.done()  # the kill lands inside partition 3
    os.kill(pid, signal.SIGKILL)
    out = finish(proc, 300, 3000)
    assert "(complete," in out
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that actor's process is gone: a restarted actor did partition 3
    assert_same_store(ref, store)


def test_ray_actors_on_the_loopback_s3_server(ray_address, reference_store, s3, tmp_path):
    """The credentials travel in [output.storage] (never saved): the actors' processes predate them."""
    pytest.importorskip("s3fs")
    images, ckpt, ref = reference_store
    store = f"s3://{BUCKET}/ray/two.zarr"
    options = {"endpoint_url": s3["endpoint"], "key": s3["writer"]["key"], "secret": s3["writer"]["secret"]}
    finish(_extract_on_ray(partitioned_config(tmp_path, images, ckpt, store, storage=options), ray_address), 300, 3000)
    assert_same_store(ref, store, storage_options=options)


def test_hdf5_refuses_several_actors_in_one_line_and_takes_one(ray_address, reference_store, tmp_path):
    images, ckpt, ref = reference_store
    cfg = partitioned_config(tmp_path, images, ckpt, tmp_path / "one.h5")
    proc = _extract_on_ray(cfg, ray_address)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and "one writer" in err, err
    assert not os.path.exists(tmp_path / "one.h5")
    one = subprocess.run([exe("featcache-extract"), cfg, "--engine", "ray", "--address", ray_address, "--ray-workers",
                          "1", "--ray-cpus", "1"], capture_output=True, text=True, env=one_thread_env())
    assert one.returncode == 0, one.stderr[-3000:]  # the actor closed its file before the driver reopened it
    assert_same_store(ref, str(tmp_path / "one.h5"))


def test_a_mistake_found_while_an_actor_prepares_is_one_line(ray_address, reference_store, tmp_path):
    """The first actor prepares the store: its refusal reaches the user as the driver's would."""
    images, ckpt, _ref = reference_store
    taken = tmp_path / "taken.zarr"
    taken.mkdir()
    (taken / "notes.txt").write_text("not a store\n")
    proc = _extract_on_ray(partitioned_config(tmp_path, images, ckpt, taken), ray_address)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "exists and is not a featcache store" in err
    assert sorted(os.listdir(taken)) == ["notes.txt"]


def test_a_bad_address_or_no_ray_is_one_line(reference_store, tmp_path):
    images, ckpt, _ref = reference_store
    cfg = partitioned_config(tmp_path, images, ckpt, tmp_path / "none.zarr")
    t0 = time.time()
    bad = subprocess.run([exe("featcache-extract"), cfg, "--engine", "ray", "--address", "127.0.0.1:1"],
                         capture_output=True, text=True, env=one_thread_env())
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in bad.stderr and time.time() - t0 < 60
    fake = tmp_path / "no_ray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    missing = subprocess.run([exe("featcache-extract"), cfg, "--engine", "ray"], capture_output=True, text=True,
                             env=one_thread_env(PYTHONPATH=str(fake)))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "pip install 'featcache[ray]'" in missing.stderr
    stray = subprocess.run([exe("featcache-extract"), cfg, "--ray-workers", "2"], capture_output=True, text=True)
    assert stray.returncode == 2 and "only with --engine ray" in stray.stderr
    assert not os.path.exists(tmp_path / "none.zarr")
