"""featcache-cache end to end: real files, real exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.cache import ROOT_KEY
from featcache.cache_tools.cli import main
from featcache.cache_tools.verify import verify_path


def run(*args):
    """The installed console script, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "featcache-cache")
    return subprocess.run([exe, *args], capture_output=True, text=True)


@pytest.fixture
def zstore(tmp_path, ids, fill):
    cache = FeatureCache.create(str(tmp_path / "a.zarr"), sample_ids=ids, labels=np.arange(100) % 5,
                                views=2, view_param_names=["x0", "y0"], partition_rows=16)
    data = fill(cache, teachers={"clip": 24, "text": 12})
    cache.close()
    return str(tmp_path / "a.zarr"), data


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_info_text_and_json(zstore, capsys):
    path, _ = zstore
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "rows        100  views 2" in out and "complete    yes" in out and "clip: 100x2x24 float16" in out
    assert main(["info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["teachers"]["text"]["shape"] == [100, 2, 12] and info["complete"] is True
    assert info["backend"] == "zarr" and info["size_on_disk"] > 100 * 2 * 36 * 2


def test_verify_ok_then_flipped_byte_in_zarr_chunk(zstore, capsys):
    path, _ = zstore
    assert main(["verify", path]) == 0
    flip_byte(os.path.join(path, "teachers/clip/features/c/1/0/0"), 100)
    assert main(["verify", path]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert bad == [line for line in bad if "clip partition" in line] and len(bad) == 1
    assert "checksum mismatch" in bad[0]


def test_verify_flipped_byte_in_hdf5_chunk(zstore, tmp_path, capsys):
    path, _ = zstore
    h5 = str(tmp_path / "b.h5")
    assert main(["convert", path, h5]) == 0
    with h5py.File(h5, "r") as f:
        offset = f["teachers/text/features"].id.get_chunk_info(3).byte_offset
    flip_byte(h5, offset + 7)
    assert main(["verify", h5]) == 1
    out = capsys.readouterr().out
    assert "BAD text partition 3: checksum mismatch" in out


def test_verify_missing_partition(tmp_path, ids, fill, capsys):
    cache = FeatureCache.create(str(tmp_path / "m.zarr"), sample_ids=ids, partition_rows=32)
    fill(cache, skip={2})
    assert main(["verify", cache.path]) == 1
    out = capsys.readouterr().out
    assert "BAD index partition 2: missing" in out and "BAD clip partition 2: missing" in out


@pytest.mark.parametrize("first,second", [("b.h5", "c.zarr"), ("b.hdf5", "c.h5")])
def test_convert_both_ways_equal(zstore, tmp_path, first, second):
    path, data = zstore
    assert main(["convert", path, str(tmp_path / first)]) == 0
    assert main(["convert", str(tmp_path / first), str(tmp_path / second)]) == 0
    a, b = FeatureCache.open(path), FeatureCache.open(str(tmp_path / second))
    assert b.backend == ("zarr" if second.endswith(".zarr") else "hdf5")
    assert a.meta == b.meta and a.teachers == b.teachers
    for t in a.teachers:
        np.testing.assert_array_equal(b.load(t), data[t])
        assert a.teacher_info(t)["spec"] == b.teacher_info(t)["spec"]
    np.testing.assert_array_equal(b.view_params, data["_params"])
    def content(cache):  # what a marker says about its rows; not when it was written
        return {k: {f: v for f, v in doc.items() if f not in ("written_at", "doc_checksum")}
                for k, doc in cache.store.markers().items()}
    assert content(a) == content(b) and verify_path(str(tmp_path / second)).ok
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_convert_refuses_existing_destination(zstore, tmp_path, capsys):
    path, _ = zstore
    (tmp_path / "b.h5").write_bytes(b"x")
    assert main(["convert", path, str(tmp_path / "b.h5")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_ls_lists_stores_and_flags_incomplete(zstore, tmp_path, ids, fill):
    path, _ = zstore
    main(["convert", path, str(tmp_path / "sub" / "b.h5")])
    cache = FeatureCache.create(str(tmp_path / "sub" / "half.zarr"), sample_ids=ids, partition_rows=32)
    fill(cache, skip={0})
    res = run("ls", str(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(path) and lines[0].endswith("complete") and "clip,text" in lines[0]
    assert "hdf5" in lines[1] and lines[2].endswith("INCOMPLETE")


@pytest.mark.parametrize("case,code,message", [
    ("missing", 2, "no such file or directory"),
    ("not_a_store", 2, "not a featcache store"),
    ("plain_file", 2, "not a featcache store"),
    ("truncated_h5", 1, "truncated or corrupt"),
    ("future_version", 1, "newer than this featcache reads"),
])
def test_error_paths_one_line_exit_code(zstore, tmp_path, case, code, message):
    path, _ = zstore
    if case == "missing":
        target = str(tmp_path / "nope.zarr")
    elif case == "not_a_store":
        import zarr
        target = str(tmp_path / "other.zarr")
        zarr.open_group(target, mode="w").attrs["x"] = 1
    elif case == "plain_file":
        target = str(tmp_path / "notes.txt")
        open(target, "w").write("hello")
    elif case == "truncated_h5":
        target = str(tmp_path / "t.h5")
        main(["convert", path, target])
        os.truncate(target, os.path.getsize(target) // 2)
    else:
        target = path
        cache = FeatureCache.open(path, mode="r+")
        cache.store.set_attrs("", {ROOT_KEY: dict(cache.meta, format_version=2)})
    res = run("info", target)
    assert res.returncode == code
    assert res.stderr.count("\n") == 1 and message in res.stderr and "Traceback" not in res.stderr
    debug = run("info", target, "--debug")
    assert "Traceback" in debug.stderr and debug.returncode == code


def test_usage_error_exits_2():
    res = run("frobnicate")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_a_locked_hdf5_store_is_in_use_not_corrupt(tmp_path, ids, fill):
    """While one process writes an HDF5 store, another is told it is in use (exit 1), never that the
    healthy file is truncated or corrupt, and overwriting it changes no byte (HDF5 itself would
    truncate the file to nothing before it finds the lock taken)."""
    import hashlib
    path = str(tmp_path / "s.h5")
    writer = FeatureCache.create(path, sample_ids=ids, partition_rows=16)
    fill(writer)
    writer.store.file.flush()
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    try:
        r = run("info", path)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.strip() == (f"featcache-cache: error: {path}: in use by another writer (HDF5 locks readers "
                                    "out while it writes); nothing was changed: run this again once it has finished")
        code = ("import sys; from featcache.cache_tools import FeatureCache\n"
                "FeatureCache.create(sys.argv[1], sample_ids=['x'], overwrite=True)")
        r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
        assert "StoreInUseError" in r.stderr and "in use by another writer or reader" in r.stderr
        assert "corrupt" not in r.stderr and hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    finally:
        writer.close()
    assert run("verify", path).returncode == 0
