"""featcache-extract --engine ray on a local Ray instance (loopback only): a pool of actors gives
the store one process gives, also when an actor's process is killed mid-partition (Ray restarts
it and reruns the partition), and on the loopback S3 server; a user's mistakes are one line."""

import os
import signal
import subprocess
import time

import pytest

from featcache.cache_tools import FeatureCache
from featcache.pipeline.ray_engine import HOLD_ENV, plan_pool

from extract_helpers import BUCKET, assert_same_store, exe, make_images, timm_teacher, write_extract_config

pytest.importorskip("ray")


def env(**extra):
    """One thread: bit-equal features (each actor also sets its CPUs, one here, as torch's threads)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, timm_ckpt):
    """The images and a one-process reference store."""
    root = tmp_path_factory.mktemp("ray")
    images = make_images(root / "imgs", classes=3, per_class=8)
    ref = _config(root, images, timm_ckpt, root / "ref.zarr")
    res = subprocess.run([exe("featcache-extract"), ref], capture_output=True, text=True, env=env())
    assert res.returncode == 0, res.stderr
    return images, timm_ckpt, str(root / "ref.zarr")


def _config(folder, images, ckpt, store, **output):
    return write_extract_config(folder / f"{os.path.basename(str(store))}.toml", store,
                                {"kind": "image_folder", "root": images}, [timm_teacher(ckpt, image_size=64)],
                                views=2, batch_size=4, output={"partition_rows": 4, **output})


def _extract_on_ray(cfg, address, *more, **env_extra):
    return subprocess.Popen([exe("featcache-extract"), cfg, "--engine", "ray", "--address", address,
                             "--ray-workers", "2", *more], env=env(**env_extra), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out + err


def test_pool_sizes():
    assert plan_pool(64, 8) == plan_pool(64, 8, workers=8)
    assert (plan_pool(64, 8).actors, plan_pool(64, 8).gpus) == (8, 1)
    assert (plan_pool(16, 0).actors, plan_pool(16, 0).cpus) == (4, 4)
    assert (plan_pool(2, 0).actors, plan_pool(2, 0).cpus) == (1, 2)
    assert (plan_pool(2, 0, workers=2).actors, plan_pool(2, 0, workers=2).cpus) == (2, 1)
    assert plan_pool(16, 0, cpus=8).actors == 2


def test_ray_actors_give_the_one_process_store(ray_address, setup, tmp_path):
    images, ckpt, ref = setup
    store = str(tmp_path / "ray.zarr")
    out = _finish(_extract_on_ray(_config(tmp_path, images, ckpt, store), ray_address))
    assert "ray: 2 actors (1 CPU each) for 6 partitions" in out and "(complete," in out
    assert_same_store(ref, store)
    again = _finish(_extract_on_ray(_config(tmp_path, images, ckpt, store), ray_address))
    assert "resuming: 6 of 6 partitions already done" in again and "for 0 partitions" in again


def test_an_actor_killed_mid_partition_is_restarted_and_its_partition_rerun(ray_address, setup, tmp_path):
    images, ckpt, ref = setup
    store = str(tmp_path / "killed.zarr")
    held = tmp_path / "hold"
    held.mkdir()
    proc = _extract_on_ray(_config(tmp_path, images, ckpt, store), ray_address, **{HOLD_ENV: f"3:{held}"})
    deadline = time.time() + 120
    while not (held / "held").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (held / "held").exists(), proc.communicate()[1][-3000:]
    pid = int((held / "held").read_text())
    assert 3 not in FeatureCache.open(store).index.done()  # the kill lands inside partition 3
    os.kill(pid, signal.SIGKILL)
    out = _finish(proc)
    assert "(complete," in out
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that actor's process is gone: a restarted actor did partition 3
    assert_same_store(ref, store)


def test_ray_actors_on_the_loopback_s3_server(ray_address, setup, s3, tmp_path):
    """The credentials travel in [output.storage] (never saved): the actors' processes predate them."""
    pytest.importorskip("s3fs")
    images, ckpt, ref = setup
    store = f"s3://{BUCKET}/ray/two.zarr"
    options = {"endpoint_url": s3["endpoint"], "key": s3["writer"]["key"], "secret": s3["writer"]["secret"]}
    _finish(_extract_on_ray(_config(tmp_path, images, ckpt, store, storage=options), ray_address))
    assert_same_store(ref, store, storage_options=options)


def test_hdf5_refuses_several_actors_in_one_line(ray_address, setup, tmp_path):
    images, ckpt, _ref = setup
    cfg = _config(tmp_path, images, ckpt, tmp_path / "one.h5")
    proc = _extract_on_ray(cfg, ray_address)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and "one writer" in err, err
    assert not os.path.exists(tmp_path / "one.h5")


def test_a_bad_address_or_no_ray_is_one_line(setup, tmp_path):
    images, ckpt, _ref = setup
    cfg = _config(tmp_path, images, ckpt, tmp_path / "none.zarr")
    t0 = time.time()
    bad = subprocess.run([exe("featcache-extract"), cfg, "--engine", "ray", "--address", "127.0.0.1:1"],
                         capture_output=True, text=True, env=env())
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in bad.stderr and time.time() - t0 < 60
    fake = tmp_path / "no_ray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    missing = subprocess.run([exe("featcache-extract"), cfg, "--engine", "ray"], capture_output=True, text=True,
                             env=env(PYTHONPATH=str(fake)))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "pip install 'featcache[ray]'" in missing.stderr
    stray = subprocess.run([exe("featcache-extract"), cfg, "--ray-workers", "2"], capture_output=True, text=True)
    assert stray.returncode == 2 and "only with --engine ray" in stray.stderr
    assert not os.path.exists(tmp_path / "none.zarr")
