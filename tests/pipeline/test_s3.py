"""Stores on object storage, end to end, against a real S3 server on loopback (moto's server mode).

The server enforces IAM: the tests run as a user allowed everything on S3, and a second
user who may only read. Nothing of s3fs or zarr is mocked.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from featcache.cache_tools import INDEX_PART, CacheError, FeatureCache, require_complete, verify
from featcache.plumbing import storage
from featcache.cache_tools.cli import main as cache_main
from featcache.plumbing.config import load_config

from extract_helpers import BUCKET, exe, extract, make_images, timm_teacher, write_extract_config  # noqa: E402

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


@pytest.fixture(autouse=True)
def fresh_options():
    """Storage options are per process; each test starts without any."""
    storage.reset()
    yield
    storage.reset()


def url(request, name: str) -> str:
    return f"s3://{BUCKET}/{request.node.name}/{name}"


def flag(s3, **extra) -> list[str]:
    opts = {"endpoint_url": s3["endpoint"], **extra}
    return [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]



def extract_config(path, images, ckpt, store, s3=None, name="effnet", image_size=64, views=2) -> str:
    teachers = [timm_teacher(ckpt, image_size=64)]
    if name != "effnet":
        teachers.append(timm_teacher(ckpt, name=name, image_size=image_size))
    storage = {"storage": {"endpoint_url": s3["endpoint"]}} if s3 else {}
    return write_extract_config(path, store, {"kind": "image_folder", "root": images}, teachers, views=views,
                                batch_size=4, output={"partition_rows": 4, **storage})

@pytest.fixture(scope="module")
def reference(tmp_path_factory, timm_ckpt):
    """40 images and their single-process store on local disk (one thread: bit-equal features)."""
    d = tmp_path_factory.mktemp("s3ref")
    images = make_images(d / "imgs", classes=4, per_class=10)
    cfg = extract_config(d / "ref.toml", images, timm_ckpt, str(d / "ref.zarr"))
    extract_here(cfg)
    return images, str(d / "ref.zarr")


def extract_here(cfg_path: str, *flags: str) -> None:
    """featcache-extract in this process, on one thread like the OMP_NUM_THREADS=1 subprocesses."""
    import torch
    from featcache.pipeline.cli import main as extract_main
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert extract_main([cfg_path, *flags]) == 0
    finally:
        torch.set_num_threads(threads)


def same_store(a: FeatureCache, b: FeatureCache) -> None:
    assert b.is_complete and verify(b).ok and a.teachers == b.teachers
    for t in a.teachers:
        np.testing.assert_array_equal(a.load(t), b.load(t))
    np.testing.assert_array_equal(a.view_params, b.view_params)
    assert {k: v["checksum"] for k, v in a.store.markers().items()} == \
           {k: v["checksum"] for k, v in b.store.markers().items()}


# -- publish, inspect, pull ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def published(s3, tmp_path_factory, timm_ckpt):
    """Team A's store in the bucket, written with the endpoint in [output.storage]; the same on local disk."""
    d = tmp_path_factory.mktemp("published")
    images = make_images(d / "images")
    store = f"s3://{BUCKET}/published/caches/imgs.zarr"
    src = {"kind": "image_folder", "root": images}
    s = extract(store, src, [timm_teacher(timm_ckpt)], output={"storage": {"endpoint_url": s3["endpoint"]}})
    assert s.complete and s.rows == 24 and s.path == store
    local = extract(d / "local.zarr", src, [timm_teacher(timm_ckpt)])
    storage.reset()
    return {"store": store, "local": local.path, "images": images}


def test_ls_info_verify_and_convert_both_ways(s3, request, published, tmp_path, capsys):
    store = published["store"]  # from here on only the flags say where the server is
    assert cache_main(["ls", f"s3://{BUCKET}/published/caches", *flag(s3)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{store}\tzarr\t24 rows\teffnet\t") and line.endswith("\tcomplete")
    assert cache_main(["info", store, "--json", *flag(s3)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["teachers"]["effnet"]["shape"] == [24, 256]
    assert cache_main(["verify", store, *flag(s3)]) == 0
    assert capsys.readouterr().out.strip().endswith("6 partitions checked, OK")
    pulled = str(tmp_path / "pulled.zarr")
    assert cache_main(["convert", store, pulled, *flag(s3)]) == 0
    pushed = url(request, "pushed.zarr")
    assert cache_main(["convert", pulled, pushed, *flag(s3)]) == 0
    assert cache_main(["verify", pushed, *flag(s3)]) == 0
    storage.set_options({"endpoint_url": s3["endpoint"]})
    with FeatureCache.open(published["local"]) as a, FeatureCache.open(pushed) as b, FeatureCache.open(pulled) as c:
        for other in (b, c):
            np.testing.assert_array_equal(a.load("effnet"), other.load("effnet"))
            assert other.dataset_fingerprint == a.dataset_fingerprint and verify(other).ok
    storage.reset()
    assert cache_main(["ls", f"s3://{BUCKET}/{request.node.name}/nothing", *flag(s3)]) == 2
    assert "no such bucket or prefix" in capsys.readouterr().err


# -- train straight from the bucket ----------------------------------------------------------------
def train_config(out_dir, store, s3, **data):
    from featcache.train.config import TrainConfig
    cfg = {"out_dir": str(out_dir), "data": {"store": store, "test_store": "", "max_ram_gb": 1e-6,
                                             "storage": {"endpoint_url": s3["endpoint"]}, **data},
           "student": {"image_size": 32, "width": 16}, "method": {"name": "aft"},
           "optim": {"epochs": 1, "batch_size": 8}}
    return load_config(TrainConfig, data=cfg)


def test_training_streams_chunk_shuffled_features_from_s3(s3, published, tmp_path):
    from featcache.train.loop import run
    said = []
    res = run(train_config(tmp_path / "run", published["store"], s3), log=said.append)
    assert res["store"]["path"] == published["store"] and res["epochs"] == 1 and res["test_rows"] > 0
    assert any("streamed chunk by chunk" in m for m in said)


# -- several processes at once ----------------------------------------------------------------------
def test_torchrun_two_ranks_into_one_s3_store_equal_single_process(s3, request, reference, timm_ckpt, tmp_path):
    images, ref = reference
    store = url(request, "two.zarr")
    cfg = extract_config(tmp_path / "two.toml", images, timm_ckpt, store)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "featcache.pipeline.cli",
                          cfg, *flag(s3)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    storage.set_options({"endpoint_url": s3["endpoint"]})
    with FeatureCache.open(ref) as a, FeatureCache.open(store) as b:
        same_store(a, b)


def test_resume_after_kill_9_during_s3_extraction(s3, request, reference, timm_ckpt, tmp_path, capsys):
    import s3fs
    images, ref = reference
    store = url(request, "killed.zarr")
    cfg = extract_config(tmp_path / "k.toml", images, timm_ckpt, store, s3=s3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([exe("featcache-extract"), cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    fs = s3fs.S3FileSystem(endpoint_url=s3["endpoint"], skip_instance_cache=True)
    markers = f"{store[5:]}/_partitions/effnet"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if fs.exists(markers) and len(fs.ls(markers)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    storage.set_options({"endpoint_url": s3["endpoint"]})
    with FeatureCache.open(store) as half:
        assert not half.is_complete, "killed too late to test a resume"
    storage.reset()
    extract_here(cfg)
    assert "resuming" in capsys.readouterr().out
    storage.set_options({"endpoint_url": s3["endpoint"]})
    with FeatureCache.open(ref) as a, FeatureCache.open(store) as b:
        same_store(a, b)


def refuses_naming_unfinished(cache: FeatureCache) -> list[str]:
    """What training with data.teachers = [] does with a store another team is adding a teacher to:
    require_complete(cache) refuses in one line naming every teacher still missing partitions.
    Markers only appear during the adds, so a teacher unfinished when looked at *after* the
    refusal was unfinished when it was made: the message must name it. Returns those teachers."""
    try:
        require_complete(cache)  # data.teachers = [] reaches it as None: every teacher listed
        said = None
    except CacheError as exc:
        said = str(exc)
    unfinished = [part for part in cache.missing_partitions() if part != INDEX_PART]
    if said is not None:
        assert "\n" not in said and "store is incomplete" in said, said
    for name in unfinished:
        assert said is not None and f"{name}: " in said, (name, said)
    return unfinished


def test_two_writers_add_teachers_while_readers_read(s3, request, images, timm_ckpt, tmp_path):
    """Team C and team D each add a teacher to team A's store at once; team B reads and trains."""
    from featcache.train.loop import run
    store = url(request, "shared.zarr")
    extract(store, {"kind": "image_folder", "root": images}, [timm_teacher(timm_ckpt)],
            output={"storage": {"endpoint_url": s3["endpoint"]}, "partition_rows": 4})
    cfgs = [extract_config(tmp_path / f"{n}.toml", images, timm_ckpt, store, s3=s3, name=n, image_size=size, views=1)
            for n, size in (("effnet48", 48), ("effnet40", 40))]
    procs = [subprocess.Popen([exe("featcache-extract"), c, "--add-teacher", "--teachers", n], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c, n in zip(cfgs, ("effnet48", "effnet40"))]
    seen: list[list[str]] = []
    refused: list[str] = []  # a look may catch a teacher half-way (the next test makes sure of one)
    errors: list[BaseException] = []

    def poll_info():
        while any(p.poll() is None for p in procs):
            try:
                with FeatureCache.open(store) as cache:
                    info = cache.info()
                    refused.extend(refuses_naming_unfinished(cache))
                for name, t in info["teachers"].items():  # a listed teacher is fully described
                    assert t["fingerprint"] and t["shape"][0] == 24 and t["partitions_done"] <= 6
                seen.append(sorted(info["teachers"]))
                time.sleep(0.25)  # the server shares this process: leave it time for the writers
            except BaseException as exc:  # noqa: BLE001 - the main thread reports it
                errors.append(exc)
                return

    reader = threading.Thread(target=poll_info)
    reader.start()
    res = run(train_config(tmp_path / "run", store, s3, teachers=["effnet"]), log=lambda _m: None)
    outs = [p.communicate(timeout=120) for p in procs]
    reader.join()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert not errors, errors[0]
    assert res["epochs"] == 1 and len(seen) > 1 and seen[0][0] == "effnet"
    with FeatureCache.open(store) as cache:
        assert cache.teachers == ["effnet", "effnet40", "effnet48"] and cache.is_complete and verify(cache).ok
        assert cache.load("effnet40").shape == (24, 256) and not np.array_equal(cache.load("effnet40"),
                                                                                cache.load("effnet48"))


def test_training_every_teacher_refuses_while_a_teacher_is_added(s3, request, images, timm_ckpt, tmp_path,
                                                                  capsys, monkeypatch):
    """The moment the test above may miss, made certain: an --add-teacher held after its first
    partition (the store lists the teacher, 1 of 6 partitions written). Training with
    data.teachers = [] refuses in one line naming it; naming the complete teacher trains."""
    from featcache.train.cli import main as train_main
    from featcache.train.loop import run
    store = url(request, "adding.zarr")
    src, opts = {"kind": "image_folder", "root": images}, {"storage": {"endpoint_url": s3["endpoint"]},
                                                            "partition_rows": 4}
    extract(store, src, [timm_teacher(timm_ckpt)], output=opts)
    written, resume = threading.Event(), threading.Event()
    real = FeatureCache.write_partition

    def held(self, p, **kw):  # the real write; then the writer waits before its next partition
        real(self, p, **kw)
        if "effnet48" in (kw.get("features") or {}) and not written.is_set():
            written.set()
            resume.wait(120)

    monkeypatch.setattr(FeatureCache, "write_partition", held)
    adding = [timm_teacher(timm_ckpt), timm_teacher(timm_ckpt, name="effnet48", image_size=48)]
    writer = threading.Thread(target=lambda: extract(store, src, adding, add_teacher=True, output=opts, views=1))
    writer.start()
    try:
        assert written.wait(120), "the added teacher's first partition was never written"
        storage.set_options({"endpoint_url": s3["endpoint"]})
        with FeatureCache.open(store) as cache:
            assert cache.teachers == ["effnet", "effnet48"] and refuses_naming_unfinished(cache) == ["effnet48"]
        tcfg = tmp_path / "t.toml"
        tcfg.write_text(f"out_dir = {str(tmp_path / 'all')!r}\n[data]\nstore = {store!r}\ntest_store = \"\"\n"
                        "teachers = []\n[student]\nimage_size = 32\nwidth = 16\n")
        capsys.readouterr()
        assert train_main([str(tcfg), *flag(s3)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "store is incomplete" in err and "effnet48: 5 of 6" in err, err
        assert "effnet: " not in err and "Traceback" not in err
        res = run(train_config(tmp_path / "named", store, s3, teachers=["effnet"]), log=lambda _m: None)
        assert res["epochs"] == 1
    finally:
        resume.set()
        writer.join(120)
    with FeatureCache.open(store) as cache:  # released, the add finishes as if never held
        require_complete(cache)
        assert cache.teachers == ["effnet", "effnet48"] and verify(cache).ok


# -- credentials ------------------------------------------------------------------------------------
def test_read_only_credentials_read_and_train_but_writes_fail_in_one_line(s3, request, published, timm_ckpt,
                                                                          tmp_path, capsys):
    from featcache.pipeline.cli import main as extract_main
    from featcache.train.loop import run
    store = published["store"]
    ro = flag(s3, key=s3["reader"]["key"], secret=s3["reader"]["secret"])
    assert cache_main(["info", store, *ro]) == 0 and "complete    yes" in capsys.readouterr().out
    res = run(train_config(tmp_path / "run", store, s3, storage={"endpoint_url": s3["endpoint"],
                                                               **s3["reader"]}), log=lambda _m: None)
    assert res["epochs"] == 1
    storage.reset()
    cfg = extract_config(tmp_path / "add.toml", published["images"], timm_ckpt, store, name="effnet48",
                         image_size=48, views=1)
    assert extract_main([cfg, "--add-teacher", "--teachers", "effnet48", *ro]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "featcache-extract: error:" in err and "Access Denied" in err
    storage.reset()
    assert cache_main(["convert", published["local"], url(request, "copy.zarr"), *ro]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Access Denied" in err
    storage.reset()
    assert cache_main(["info", store, *flag(s3)]) == 0 and "teachers    1" in capsys.readouterr().out


def test_storage_options_never_reach_a_file_or_log(s3, request, images, timm_ckpt, tmp_path, capsys, monkeypatch):
    """Credentials given as options: not in the store, results, saved configs, checkpoints, or output."""
    import s3fs
    from featcache.train.cli import main as train_main
    w = s3["writer"]
    store = url(request, "secret.zarr")
    cfg = extract_config(tmp_path / "e.toml", images, timm_ckpt, store, s3=s3, views=1)
    creds = flag(s3, key=w["key"], secret=w["secret"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # only the flags hold credentials
        monkeypatch.delenv(name)
    extract_here(cfg, *creds)
    tcfg = tmp_path / "t.toml"
    tcfg.write_text(textwrap.dedent(f"""
        out_dir = {str(tmp_path / 'run')!r}
        [data]
        store = {store!r}
        test_store = ""
        max_ram_gb = 1e-6
        [data.storage]
        endpoint_url = "{s3['endpoint']}"
        [student]
        image_size = 32
        width = 16
        [optim]
        epochs = 1
        batch_size = 8
    """))
    assert train_main([str(tcfg), *creds]) == 0
    assert train_main(["sweep", str(tcfg), "--grid", "method=stl", "--out", str(tmp_path / "sweep"), *creds]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    fs = s3fs.S3FileSystem(endpoint_url=s3["endpoint"], skip_instance_cache=True, **w)
    blobs = [fs.cat(p) for p in fs.find(store[5:])]
    for root, _dirs, files in os.walk(tmp_path):
        blobs += [open(os.path.join(root, f), "rb").read() for f in files]
    assert len(blobs) > 20 and os.path.exists(tmp_path / "run" / "results.json")
    for secret in (w["key"], w["secret"]):
        assert secret not in out and not any(secret.encode() in b for b in blobs)
