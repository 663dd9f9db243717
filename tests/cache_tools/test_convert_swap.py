"""`convert --overwrite` never deletes the old store before the new one is complete: at every step,
and after a failure at any step, the destination holds the old store or the new one, whole."""

from __future__ import annotations

import os

import numpy as np
import pytest

import importlib

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.cli import main
from featcache.cache_tools.verify import verify_path
from featcache.plumbing import atomic

convert_mod = importlib.import_module("featcache.cache_tools.convert")
OLD_ROWS, NEW_ROWS = 48, 100


@pytest.fixture
def stores(tmp_path, ids, fill):
    """A source store (the new content) and an older store already at the destination."""
    src = FeatureCache.create(str(tmp_path / "src.zarr"), sample_ids=ids, labels=np.arange(100) % 5,
                              partition_rows=16)
    fill(src, teachers={"clip": 24})
    src.close()
    old = FeatureCache.create(str(tmp_path / "dst.zarr"), sample_ids=ids[:OLD_ROWS], partition_rows=16)
    fill(old, seed=1, teachers={"other": 8})
    old.close()
    return str(tmp_path / "src.zarr"), str(tmp_path / "dst.zarr")


def whole_at(dst: str) -> str:
    """'old' or 'new': which complete, intact store is at ``dst`` (anything else fails the test)."""
    with FeatureCache.open(dst) as cache:
        which = {OLD_ROWS: "old", NEW_ROWS: "new"}[cache.rows]
        assert cache.is_complete
    assert verify_path(dst).ok
    return which


def leftovers(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p not in ("src.zarr", "dst.zarr"))


@pytest.fixture(params=["exchange", "two_renames"])
def swap_kind(request, monkeypatch):
    if request.param == "two_renames":  # platforms without an atomic exchange
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    return request.param


def _spy(monkeypatch, target, name, dst, seen):
    real = getattr(target, name)

    def state() -> str:
        if os.path.isdir(dst):
            return whole_at(dst)
        aside = [p for p in os.listdir(os.path.dirname(dst)) if ".old-" in p]  # two renames: the window
        return "old-aside" if len(aside) == 1 and whole_at(os.path.join(os.path.dirname(dst), aside[0])) == "old" \
            else "missing"

    def step(*args, **kwargs):
        if not any(os.path.dirname(os.path.abspath(os.fspath(a))) == os.path.dirname(dst) for a in args):
            return real(*args, **kwargs)  # a write inside a store, not a step of the swap
        seen.append((name, "before", state()))
        out = real(*args, **kwargs)
        seen.append((name, "after", state()))
        return out

    monkeypatch.setattr(target, name, step)


def test_every_step_leaves_a_whole_store(stores, monkeypatch, swap_kind):
    src, dst = stores
    seen: list[tuple[str, str, str]] = []
    for target, name in ((atomic, "exchange"), (atomic, "remove_path"), (atomic.os, "rename"),
                         (atomic.os, "replace")):
        _spy(monkeypatch, target, name, dst, seen)
    convert_mod.convert(src, dst, overwrite=True).close()
    # with an atomic exchange the destination always holds a whole store; with two renames there
    # is one moment between them when it is empty and the old store sits, whole, beside it
    allowed = ("old", "new") if swap_kind == "exchange" else ("old", "new", "old-aside")
    assert seen and all(state in allowed for _, _, state in seen), seen
    assert [s for _, _, s in seen][0] == "old" and whole_at(dst) == "new"
    assert leftovers(os.path.dirname(dst)) == []


@pytest.mark.parametrize("fail_at", ["copy", "check", "exchange", "rename_away", "rename_in", "delete_old"])
def test_failure_at_each_step(stores, monkeypatch, fail_at, swap_kind):
    src, dst = stores

    def boom(*_a, **_k):
        raise OSError(5, f"injected failure at {fail_at}")

    if fail_at == "copy":
        monkeypatch.setattr(convert_mod, "_copy_partitions", boom)
    elif fail_at == "check":
        monkeypatch.setattr(convert_mod, "_check_equal", boom)
    elif fail_at == "exchange":
        monkeypatch.setattr(atomic, "exchange", boom)
    elif fail_at in ("rename_away", "rename_in"):
        if swap_kind == "exchange":
            pytest.skip("the exchange path makes no renames")
        real, calls = os.rename, []

        def rename(a, b):
            calls.append(a)
            if len(calls) == (1 if fail_at == "rename_away" else 2):
                boom()
            return real(a, b)

        monkeypatch.setattr(atomic.os, "rename", rename)
    else:
        real_remove = atomic.remove_path

        def remove(path):  # the old store: renamed away, or (exchange) now at the build name
            if ".old-" in path or (swap_kind == "exchange" and "partial" in path):
                boom()
            real_remove(path)

        monkeypatch.setattr(atomic, "remove_path", remove)
    with pytest.raises(OSError, match="injected"):
        convert_mod.convert(src, dst, overwrite=True)
    state = whole_at(dst)
    assert state == ("new" if fail_at == "delete_old" else "old")
    if fail_at != "delete_old":
        assert [p for p in leftovers(os.path.dirname(dst)) if "partial" in p] == []


def test_hdf5_file_over_file_and_cli(stores, tmp_path):
    src, _ = stores
    h5 = str(tmp_path / "x.h5")
    assert main(["convert", src, h5]) == 0
    assert main(["convert", str(tmp_path / "dst.zarr"), h5, "--overwrite"]) == 0
    with FeatureCache.open(h5) as cache:
        assert cache.rows == OLD_ROWS and cache.backend == "hdf5"
    assert verify_path(h5).ok
    assert [p for p in os.listdir(tmp_path) if "partial" in p or ".old-" in p] == []


def test_zarr_over_hdf5_file_swaps_kinds(stores, tmp_path):
    src, _ = stores
    target = str(tmp_path / "y.store")
    assert main(["convert", src, target, "--backend", "hdf5"]) == 0
    assert main(["convert", src, target, "--backend", "zarr", "--overwrite"]) == 0
    assert os.path.isdir(target) and whole_at(target) == "new"


def test_subset_overwrite_keeps_the_old_store_until_the_new_one_is_whole(stores, monkeypatch, capsys):
    src, dst = stores
    real, calls = FeatureCache.write_partition, []

    def dies_midway(self, p, **_kw):
        calls.append(p)  # the subset's first partition: the new store is half built
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FeatureCache, "write_partition", dies_midway)
    assert main(["subset", src, "--labels-per-class", "3", "--out", dst, "--overwrite"]) == 1
    assert "No space left" in capsys.readouterr().err
    assert whole_at(dst) == "old" and leftovers(os.path.dirname(dst)) == []
    monkeypatch.setattr(FeatureCache, "write_partition", real)
    assert main(["subset", src, "--labels-per-class", "3", "--out", dst, "--overwrite"]) == 0
    with FeatureCache.open(dst) as cache:
        assert cache.rows == 15 and cache.is_complete
    assert leftovers(os.path.dirname(dst)) == []
