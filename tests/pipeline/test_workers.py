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


@pytest.mark.parametrize("where", ["local", "s3"])
def test_three_workers_at_once_one_killed_mid_partition_and_rerun(where, reference_store, request, tmp_path):
    """Started together (the first to win the lock prepares; on S3 worker 0), worker 2 SIGKILLed
    inside its second partition, the others finishing, then worker 2 rerun: the one-process store."""
    images, ckpt, ref = reference_store
    kw, opts = {}, {}
    if where == "s3":
        pytest.importorskip("s3fs")
        s3 = request.getfixturevalue("s3")
        opts = {"endpoint_url": s3["endpoint"]}
        store, kw = f"s3://{BUCKET}/workers/three.zarr", {"storage": opts}
    else:
        store = str(tmp_path / "three.zarr")
    cfg = partitioned_config(tmp_path, images, ckpt, store, **kw)
    held = tmp_path / "hold"
    held.mkdir()
    procs = [_worker(cfg, f"{i}/3", env=one_thread_env(**({HOLD_ENV: f"5:{held}"} if i == 2 else {})))
             for i in range(3)]
    deadline = time.time() + 300
    while not (held / "held").exists() and procs[2].poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (held / "held").exists(), procs[2].communicate()[1][-3000:]
    procs[2].send_signal(signal.SIGKILL)  # inside partition 5; its partition 2 is written
    procs[2].wait()
    logs = [finish(p, 600) for p in procs[:2]]
    assert sum("waiting for another worker to prepare" in log for log in logs) <= 2
    cache = FeatureCache.open(store, storage_options=opts) if opts else FeatureCache.open(store)
    assert set(cache.index.done()) == {0, 1, 2, 3, 4} and not cache.is_complete
    finish(_worker(cfg, "2/3"), 600)  # the killed share, rerun
    if where == "local":
        assert not os.path.exists(store + ".prepare.lock") and os.path.exists(store + ".prepared")
    assert_same_store(ref, store, **({"storage_options": opts} if opts else {}))


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


# -- the cluster doc's scripts, run as far as one machine allows ------------------------------------
CLUSTER_DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cluster.md")


def _doc_block(heading, first_line):
    """The indented code block under ``heading`` of docs/cluster.md that starts with ``first_line``."""
    text = open(CLUSTER_DOC, encoding="utf-8").read().split(f"## {heading}\n", 1)[1]
    lines = text[text.index(f"    {first_line}"):].split("\n")
    block = []
    for line in lines:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


def _in_pairs(commands, env_of):
    """Run ``sh -c`` commands two at a time (2 cores), each with its own environment and the
    console scripts on PATH, as on a node where featcache is installed; all must pass."""
    import sys

    bin_dir = os.path.dirname(sys.executable)
    for k in range(0, len(commands), 2):
        envs = [env_of(k + j) for j in range(len(commands[k:k + 2]))]
        envs = [{**e, "PATH": bin_dir + os.pathsep + e.get("PATH", "")} for e in envs]
        procs = [subprocess.Popen(["sh", "-c", c], env=envs[j], text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=cwd) for j, (c, cwd) in enumerate(commands[k:k + 2])]
        for p in procs:
            finish(p, 600)


def test_the_slurm_array_script_of_the_cluster_doc(reference_store, tmp_path):
    """Its prepare command, then the script by bash once per array index, as SLURM would set them."""
    import re
    import sys

    images, ckpt, ref = reference_store
    script = _doc_block("SLURM array", "#!/bin/bash")
    first, last = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", script).groups())
    prepare = re.search(r'--wrap "([^"]+)"', script).group(1)
    work = tmp_path / "work"
    (work / "configs").mkdir(parents=True)
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "activate").write_text(f'export PATH="{os.path.dirname(sys.executable)}:$PATH"\n')
    store = tmp_path / "shared" / "stores" / "train.zarr"  # the config's output.store, as the script's comment says
    (work / "configs" / "my.toml").write_text(open(partitioned_config(tmp_path, images, ckpt, store)).read())
    (work / "extract.sbatch").write_text(script)
    _in_pairs([(prepare, work)], lambda _i: one_thread_env())
    count = last - first + 1
    _in_pairs([("bash extract.sbatch", work) for _ in range(first, last + 1)],
              lambda i: one_thread_env(SLURM_ARRAY_TASK_ID=str(first + i), SLURM_ARRAY_TASK_COUNT=str(count)))
    assert_same_store(ref, str(store))


def test_the_kubernetes_indexed_job_of_the_cluster_doc(reference_store, s3, tmp_path):
    """The manifest as YAML: its container's command once per completion index on the loopback S3
    server, after the prepare step the doc asks for on object storage."""
    import re

    yaml = pytest.importorskip("yaml")
    pytest.importorskip("s3fs")
    images, ckpt, ref = reference_store
    job = yaml.safe_load(_doc_block("Kubernetes indexed Job", "apiVersion:"))
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    text = open(CLUSTER_DOC, encoding="utf-8").read()
    prepare = re.search(r"run `(featcache-extract /config/my.toml --prepare)` first", text).group(1)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    store = f"s3://{BUCKET}/k8s/train.zarr"
    cfg = partitioned_config(tmp_path, images, ckpt, store, storage={"endpoint_url": s3["endpoint"]})
    (config_dir / "my.toml").write_text(open(cfg).read())
    local = lambda command: (command.replace("/config/", f"{config_dir}/"), tmp_path)  # noqa: E731
    _in_pairs([local(prepare)], lambda _i: one_thread_env())
    _in_pairs([local(container["args"][0]) for _ in range(spec["completions"])],
              lambda i: one_thread_env(JOB_COMPLETION_INDEX=str(i)))
    assert_same_store(ref, store, storage_options={"endpoint_url": s3["endpoint"]})
