"""featcache-extract --worker I/N and --prepare: shares run by separate processes, in any order,
killed and rerun, give the store one process gives."""

import os
import signal
import subprocess
import time

import pytest

from featcache.cache_tools import FeatureCache
from featcache.pipeline.workers import HOLD_ENV, parse_worker
from featcache.plumbing.errors import UsageError

from extract_helpers import BUCKET, assert_same_store, exe, finish, one_thread_env, partitioned_config



def _worker(cfg, share, env=None, **kw):
    return subprocess.Popen([exe("featcache-extract"), cfg, "--worker", share], env=env or one_thread_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_three_workers_started_together_equal_one_process(reference_store, tmp_path):
    images, ckpt, ref = reference_store
    store = str(tmp_path / "three.zarr")
    cfg = partitioned_config(tmp_path, images, ckpt, store)
    procs = [_worker(cfg, f"{i}/3") for i in range(3)]
    logs = [finish(p, 600) for p in procs]
    assert sum("waiting for another worker to prepare" in log for log in logs) <= 2
    assert not os.path.exists(store + ".prepare.lock") and os.path.exists(store + ".prepared")
    assert_same_store(ref, store)


def test_shares_in_any_order_and_a_killed_worker_rerun(reference_store, tmp_path):
    images, ckpt, ref = reference_store
    store = str(tmp_path / "killed.zarr")
    cfg = partitioned_config(tmp_path, images, ckpt, store)
    prep = subprocess.run([exe("featcache-extract"), cfg, "--prepare"], capture_output=True, text=True, env=one_thread_env())
    assert prep.returncode == 0 and "prepared" in prep.stdout, prep.stderr
    assert not FeatureCache.open(store).index.done()  # --prepare writes no partition
    held = tmp_path / "hold"
    held.mkdir()
    proc = _worker(cfg, "2/3", env=one_thread_env(**{HOLD_ENV: f"5:{held}"}))  # share 2: partitions 2 and 5
    deadline = time.time() + 120
    while not (held / "held").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (held / "held").exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)  # inside partition 5, partition 2 written
    proc.wait()
    assert set(FeatureCache.open(store).index.done()) == {2}
    finish(_worker(cfg, "1/3"), 600)
    finish(_worker(cfg, "2/3"), 600)  # the killed share, rerun
    assert not FeatureCache.open(store).is_complete  # share 0 has not run
    finish(_worker(cfg, "0/3"), 600)
    assert_same_store(ref, store)
    again = finish(_worker(cfg, "0/3"), 600)  # a rerun of a finished share does nothing
    assert "resuming: 6 of 6 partitions already done" in again


@pytest.mark.parametrize("bad", ["3/3", "-1/3", "0/0", "x", "1/2/3"])
def test_bad_worker_value_is_a_usage_error(bad, tmp_path):
    with pytest.raises(UsageError):
        parse_worker(bad)
    res = subprocess.run([exe("featcache-extract"), str(tmp_path / "none.toml"), f"--worker={bad}"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--worker" in res.stderr


def test_hdf5_refuses_several_workers_in_one_line(reference_store, tmp_path):
    images, ckpt, _ref = reference_store
    cfg = partitioned_config(tmp_path, images, ckpt, tmp_path / "one.h5")
    res = subprocess.run([exe("featcache-extract"), cfg, "--worker", "0/2"], capture_output=True, text=True)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "one writer" in res.stderr and not os.path.exists(tmp_path / "one.h5")


def test_workers_on_the_loopback_s3_server_worker_0_prepares(reference_store, s3, tmp_path):
    """No exclusive create on object storage: worker 1 waits for worker 0 to prepare, started after it."""
    pytest.importorskip("s3fs")
    images, ckpt, ref = reference_store
    store = f"s3://{BUCKET}/workers/two.zarr"
    cfg = partitioned_config(tmp_path, images, ckpt, store, storage={"endpoint_url": s3["endpoint"]})
    first = _worker(cfg, "1/2")
    time.sleep(2)
    second = _worker(cfg, "0/2")
    assert "waiting for another worker to prepare" in finish(first, 600)
    finish(second, 600)
    assert_same_store(ref, store, storage_options={"endpoint_url": s3["endpoint"]})
