"""featcache-extract behaviour: one decode per input, views, bad inputs, resume, refusals, torchrun."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from featcache.cache_tools import FeatureCache, FingerprintMismatch, verify
from featcache.rawdata import image_folder
from featcache.rawdata.views import apply_view
from featcache.plumbing.config import load_config
from featcache.pipeline.config import TeacherConfig
from featcache.pipeline.extract import ExtractError
from featcache.pipeline.teachers import build_teacher

from extract_helpers import clip_teacher, exe, extract, make_images, timm_teacher, write_extract_config  # noqa: E402


def test_two_teachers_one_decode_per_input(images, timm_ckpt, clip_files, tmp_path, monkeypatch):
    from featcache.rawdata import folders
    calls = []
    real = folders.read_image_file
    monkeypatch.setattr(folders, "read_image_file", lambda p, *more: calls.append(p) or real(p, *more))
    s = extract(tmp_path / "s.zarr", {"kind": "image_folder", "root": images},
                [timm_teacher(timm_ckpt), clip_teacher(clip_files)])
    assert s.complete and s.rows == 24 and len(calls) == 24 == len(set(calls))
    cache = FeatureCache.open(s.path)
    assert cache.teachers == ["clip", "effnet"] and verify(cache).ok
    assert cache.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8 and cache.split == "train"
    # the cached rows equal the teacher run on the raw input directly
    t = build_teacher(TeacherConfig(**timm_teacher(timm_ckpt)), torch.device("cpu"), "image")
    src = image_folder(images)
    direct = t.encode(t.prepare([src.load(i) for i in range(3)])).numpy()
    np.testing.assert_allclose(cache.read("effnet", 0, 3).astype(np.float32), direct, rtol=2e-3, atol=2e-3)


def test_views_replay_to_the_cached_feature(images, timm_ckpt, tmp_path):
    s = extract(tmp_path / "v.zarr", {"kind": "image_folder", "root": images}, [timm_teacher(timm_ckpt)], views=3)
    cache = FeatureCache.open(s.path)
    params = cache.view_params
    assert params.shape == (24, 3, 5) and np.all(params[:, 0] == [0, 0, 1, 1, 0])
    assert not np.allclose(params[:, 1], params[:, 2])
    t = build_teacher(TeacherConfig(**timm_teacher(timm_ckpt)), torch.device("cpu"), "image")
    src = image_folder(images)
    feats = cache.load("effnet")
    for row in (0, 9, 23):
        for v in range(3):
            replay = t.encode(t.prepare([apply_view(src.load(row), params[row, v])])).numpy()[0]
            np.testing.assert_allclose(feats[row, v].astype(np.float32), replay, rtol=2e-3, atol=2e-3)
    assert not np.allclose(feats[:, 1], feats[:, 2])


def test_bad_inputs_marked_invalid_logged_and_bounded(images, timm_ckpt, tmp_path):
    (open(os.path.join(images, "class1", "zero.png"), "wb")).close()
    with open(os.path.join(images, "class2", "001.png"), "r+b") as fh:
        fh.truncate(60)
    s = extract(tmp_path / "b.zarr", {"kind": "image_folder", "root": images}, [timm_teacher(timm_ckpt)],
                max_invalid_fraction=0.2)
    cache = FeatureCache.open(s.path)
    bad = [cache.sample_ids[i] for i in np.flatnonzero(~cache.valid)]
    assert sorted(bad) == ["class1/zero.png", "class2/001.png"] and s.valid_rows == 23 and s.complete
    log = open(s.invalid_log).read()
    assert "class1/zero.png\t" in log and "empty file" in log and "class2/001.png\t" in log
    with pytest.raises(ExtractError, match="2 inputs failed to decode, more than max_invalid_fraction=0.05"):
        extract(tmp_path / "c.zarr", {"kind": "image_folder", "root": images}, [timm_teacher(timm_ckpt)],
                max_invalid_fraction=0.05)


def test_refuses_other_teacher_or_data_then_adds_teacher_on_request(images, timm_ckpt, clip_files, tmp_path):
    src = {"kind": "image_folder", "root": images}
    extract(tmp_path / "s.zarr", src, [timm_teacher(timm_ckpt)])
    before = FeatureCache.open(str(tmp_path / "s.zarr")).load("effnet")
    with pytest.raises(FingerprintMismatch, match="effnet"):  # same name, other preprocessing
        extract(tmp_path / "s.zarr", src, [timm_teacher(timm_ckpt, image_size=48)])
    other = make_images(tmp_path / "other", classes=2)
    with pytest.raises(FingerprintMismatch, match="another dataset"):
        extract(tmp_path / "s.zarr", {"kind": "image_folder", "root": other}, [timm_teacher(timm_ckpt)])
    same_names = make_images(tmp_path / "same_names", seed=3)  # same ids and labels, other pixels
    with pytest.raises(FingerprintMismatch, match="was built from source"):
        extract(tmp_path / "s.zarr", {"kind": "image_folder", "root": same_names}, [timm_teacher(timm_ckpt)])
    with pytest.raises(FingerprintMismatch, match="--add-teacher"):
        extract(tmp_path / "s.zarr", src, [timm_teacher(timm_ckpt), clip_teacher(clip_files)])
    s = extract(tmp_path / "s.zarr", src, [timm_teacher(timm_ckpt), clip_teacher(clip_files)], add_teacher=True)
    cache = FeatureCache.open(s.path)
    assert s.complete and cache.teachers == ["clip", "effnet"]
    np.testing.assert_array_equal(cache.load("effnet"), before)


def _config_file(tmp_path, images, ckpt, store, views=2):
    return write_extract_config(tmp_path / f"{os.path.basename(store)}.toml", store,
                                {"kind": "image_folder", "root": images}, [timm_teacher(ckpt, image_size=64)],
                                views=views, batch_size=4, output={"partition_rows": 4})


def test_resume_after_kill_9_gives_the_same_store(tmp_path, timm_ckpt):
    images = make_images(tmp_path / "imgs", classes=4, per_class=15)
    ref = _config_file(tmp_path, images, timm_ckpt, str(tmp_path / "ref.zarr"))
    assert subprocess.run([exe("featcache-extract"), ref], capture_output=True).returncode == 0
    store = str(tmp_path / "killed.zarr")
    cfg = _config_file(tmp_path, images, timm_ckpt, store)
    proc = subprocess.Popen([exe("featcache-extract"), cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker_dir = os.path.join(store, "_partitions", "effnet")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(marker_dir) and len(os.listdir(marker_dir)) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    half = FeatureCache.open(store)
    assert not half.is_complete, "killed too late to test a resume"
    res = subprocess.run([exe("featcache-extract"), cfg], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout + res.stderr
    a, b = FeatureCache.open(str(tmp_path / "ref.zarr")), FeatureCache.open(store)
    assert b.is_complete and verify(b).ok
    np.testing.assert_array_equal(a.load("effnet"), b.load("effnet"))
    np.testing.assert_array_equal(a.view_params, b.view_params)
    assert {k: v["checksum"] for k, v in a.store.markers().items()} == \
           {k: v["checksum"] for k, v in b.store.markers().items()}


def test_torchrun_two_ranks_equal_single_process(tmp_path, timm_ckpt):
    images = make_images(tmp_path / "imgs", classes=2, per_class=10)
    one = _config_file(tmp_path, images, timm_ckpt, str(tmp_path / "one.zarr"))
    two = _config_file(tmp_path, images, timm_ckpt, str(tmp_path / "two.zarr"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels on both sides: bit-equal features
    assert subprocess.run([exe("featcache-extract"), one], capture_output=True, env=env).returncode == 0
    res = subprocess.run([exe("torchrun"), "--standalone", "--nproc_per_node=2", "-m", "featcache.pipeline.cli",
                          two], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = FeatureCache.open(str(tmp_path / "one.zarr")), FeatureCache.open(str(tmp_path / "two.zarr"))
    assert b.is_complete
    np.testing.assert_array_equal(a.load("effnet"), b.load("effnet"))
    np.testing.assert_array_equal(a.view_params, b.view_params)


def test_cli_errors_are_one_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[teachers]]\nname = "x"\nkind = "magic"\n')
    res = subprocess.run([exe("featcache-extract"), str(cfg)], capture_output=True, text=True)
    assert res.returncode == 2 and "teachers[0].kind: 'magic' is not one of" in res.stderr
    assert res.stderr.count("\n") == 1
    cfg.write_text('[source]\nkind = "image_folder"\nroot = "/no/such/dir"\n')
    res = subprocess.run([exe("featcache-extract"), str(cfg)], capture_output=True, text=True)
    assert res.returncode == 2 and "/no/such/dir: image folder not found" in res.stderr
    res = subprocess.run([exe("featcache-extract"), str(cfg), "--teachers", "clip"], capture_output=True, text=True)
    assert res.returncode == 2 and "--teachers: clip not in the config" in res.stderr


def test_teachers_flag_runs_a_subset(images, timm_ckpt, clip_files, tmp_path):
    from featcache.pipeline.cli import select_teachers
    from featcache.pipeline.config import ExtractConfig

    data = {"source": {"kind": "image_folder", "root": images}, "output": {"store": str(tmp_path / "s.zarr")},
            "teachers": [timm_teacher(timm_ckpt), clip_teacher(clip_files)]}
    cfg = select_teachers(load_config(ExtractConfig, data=data), "effnet")
    assert [t.name for t in cfg.teachers] == ["effnet"]


def test_never_overwrites_foreign_data_but_restarts_a_cut_off_creation(images, timm_ckpt, tmp_path):
    import h5py
    import zarr
    foreign = tmp_path / "theirs.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match="not a featcache store"):
        extract(foreign, {"kind": "image_folder", "root": images}, [timm_teacher(timm_ckpt)])
    with h5py.File(foreign, "r") as f:
        assert f["x"][:].tolist() == [0, 1, 2]
    cut = tmp_path / "cut.zarr"  # arrays written, root attributes never reached
    zarr.open_group(str(cut), mode="w").create_array("index/sample_id", shape=(2,), dtype=str)
    s = extract(cut, {"kind": "image_folder", "root": images}, [timm_teacher(timm_ckpt)])
    assert s.complete and s.rows == 24


def test_index_only_store_takes_teachers_later(tmp_path, images, timm_ckpt, capsys):
    from featcache.pipeline.cli import main
    store = str(tmp_path / "eval.zarr")
    cfg = _config_file(tmp_path, images, timm_ckpt, store, views=1)
    assert main([cfg, "--index-only"]) == 0
    assert "teachers  none (index only)" in capsys.readouterr().out
    cache = FeatureCache.open(store)
    assert cache.teachers == [] and cache.is_complete and cache.rows == 24 and cache.valid.all()
    assert main([cfg, "--index-only", "--teachers", "effnet"]) == 2
    assert "--index-only writes no teacher" in capsys.readouterr().err
    assert main([cfg, "--add-teacher"]) == 0
    cache = FeatureCache.open(store)
    assert cache.teachers == ["effnet"] and cache.is_complete and verify(cache).ok
