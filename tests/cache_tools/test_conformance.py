"""One behaviour contract, run against every backend."""

import numpy as np
import pytest

from featcache.cache_tools import (CacheError, FeatureCache, FingerprintMismatch, FormatVersionError, MemoryStore,
                                   ReadOnlyError, require_complete, verify)
from featcache.cache_tools.cache import ROOT_KEY, chunk_rows_for


class StoreContract:
    """Subclasses say how to make a fresh target and how to reopen it."""

    def target(self, tmp_path):
        raise NotImplementedError

    def reopen(self, cache, mode="r"):
        return FeatureCache.open(cache.path, mode=mode)

    def make(self, tmp_path, ids, **kw):
        kw.setdefault("labels", np.arange(len(ids)) % 7)
        kw.setdefault("partition_rows", 16)
        return FeatureCache.create(self.target(tmp_path), sample_ids=ids, **kw)

    def test_round_trip_values_and_index(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids, split="train", source={"kind": "manifest"})
        data = fill(cache, teachers={"clip": 24, "dino": 40})
        back = self.reopen(cache)
        assert back.rows == 100 and back.num_partitions == 7 and back.split == "train"
        assert back.source == {"kind": "manifest"}
        assert list(back.sample_ids) == ids
        np.testing.assert_array_equal(back.labels, np.arange(100) % 7)
        np.testing.assert_array_equal(back.valid, data["_valid"])
        for name in ("clip", "dino"):
            np.testing.assert_array_equal(back.load(name), data[name])
            assert back.load(name).dtype == np.float16
        assert back.is_complete
        assert back.teachers == ["clip", "dino"]

    def test_take_shuffled_ids_any_order_with_repeats(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids)
        data = fill(cache)
        rows = np.random.default_rng(1).permutation(100)
        rows = np.concatenate([rows, rows[:5]])
        np.testing.assert_array_equal(self.reopen(cache).take("clip", rows), data["clip"][rows])
        with pytest.raises(IndexError):
            cache.take("clip", [100])

    def test_views_and_params(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids, views=3, view_param_names=["x0", "y0", "x1", "y1", "flip"])
        data = fill(cache)
        back = self.reopen(cache)
        assert back.teacher_info("clip")["shape"] == [100, 3, 24]
        np.testing.assert_array_equal(back.view_params, data["_params"])
        np.testing.assert_array_equal(back.read("clip", 16, 32), data["clip"][16:32])

    def test_float32_on_request(self, tmp_path, ids):
        cache = self.make(tmp_path, ids)
        cache.add_teacher("t", 4, {"m": 1}, dtype="float32")
        x = np.random.default_rng(0).standard_normal((16, 4))
        cache.write_partition(0, features={"t": x})
        np.testing.assert_array_equal(self.reopen(cache).read("t", 0, 16), x.astype(np.float32))

    def test_partition_without_marker_is_not_complete(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids)
        fill(cache, skip={3})
        start, stop = cache.partition_range(3)
        # the bytes of partition 3 land, but the writer dies before its marker
        cache.store.write("teachers/clip/features", start, np.ones((stop - start, 24), np.float16))
        back = self.reopen(cache)
        assert not back.is_complete
        assert back.missing_partitions() == {"_index": [3], "clip": [3]}
        with pytest.raises(CacheError, match="incomplete"):
            require_complete(back)
        report = verify(back)
        assert not report.ok and any("partition 3: missing" in p for p in report.problems)

    def test_rewriting_a_partition_clears_its_marker_first(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids)
        fill(cache)
        calls = []
        original = cache.store._write

        def crash(node, start, values):
            calls.append(node)
            raise RuntimeError("killed")

        cache.store._write = crash
        with pytest.raises(RuntimeError):
            cache.write_partition(2, features={"clip": np.zeros((16, 24))})
        cache.store._write = original
        assert 2 not in self.reopen(cache).done_partitions()["clip"]

    def test_adding_a_teacher_keeps_others_byte_identical(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids)
        data = fill(cache)
        before = {k: v["checksum"] for k, v in cache.store.markers().items()}
        cache = self.reopen(cache, mode="r+")
        cache.add_teacher("new", 8, {"model_id": "new"})
        assert not cache.is_complete
        for p in range(cache.num_partitions):
            a, b = cache.partition_range(p)
            cache.write_partition(p, features={"new": np.ones((b - a, 8))})
        back = self.reopen(cache)
        np.testing.assert_array_equal(back.load("clip"), data["clip"])
        after = {k: v["checksum"] for k, v in back.store.markers().items() if not k.startswith("new/")}
        assert after == before and back.is_complete and verify(back).ok

    def test_re_adding_a_different_teacher_refuses(self, tmp_path, ids):
        cache = self.make(tmp_path, ids)
        cache.add_teacher("clip", 8, {"model_id": "a"})
        assert cache.add_teacher("clip", 8, {"model_id": "a"})  # same: a no-op
        with pytest.raises(FingerprintMismatch, match="clip"):
            cache.add_teacher("clip", 8, {"model_id": "b"})

    def test_read_only_refuses_writes(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids)
        fill(cache)
        ro = self.reopen(cache)
        with pytest.raises(ReadOnlyError):
            ro.write_partition(0, features={"clip": np.zeros((16, 24))})
        with pytest.raises(ReadOnlyError):
            ro.add_teacher("x", 3, {})

    def test_newer_format_version_refused(self, tmp_path, ids):
        cache = self.make(tmp_path, ids)
        meta = dict(cache.meta, format_version=99)
        cache.store.set_attrs("", {ROOT_KEY: meta})
        with pytest.raises(FormatVersionError, match="version 99"):
            self.reopen(cache)

    def test_verify_counts_nonfinite(self, tmp_path, ids, fill):
        cache = self.make(tmp_path, ids)
        fill(cache)
        bad = np.zeros((16, 24))
        bad[0, 0], bad[1, 1] = np.nan, np.inf
        cache.write_partition(1, features={"clip": bad})
        report = verify(self.reopen(cache))
        assert report.nonfinite["clip"] == {"nan": 1, "inf": 1}
        assert [p for p in report.problems] == ["clip partition 1: 1 NaN and 1 inf values"]

    def test_bad_shapes_are_refused(self, tmp_path, ids):
        cache = self.make(tmp_path, ids)
        cache.add_teacher("clip", 8, {})
        with pytest.raises(ValueError, match="expected"):
            cache.write_partition(0, features={"clip": np.zeros((15, 8))})
        with pytest.raises(IndexError):
            cache.write_partition(7, valid=np.ones(4, bool))


class TestMemory(StoreContract):
    def target(self, tmp_path):
        return MemoryStore()

    def reopen(self, cache, mode="r"):
        return FeatureCache(cache.store.reopen(read_only=(mode == "r")))


class TestZarr(StoreContract):
    def target(self, tmp_path):
        return str(tmp_path / "s.zarr")


class TestZarrFsspecURL(StoreContract):
    """Any fsspec URL works; the in-process memory filesystem stands in for s3://."""

    def target(self, tmp_path):
        return f"memory://{tmp_path.name}/s.zarr"


class TestHDF5(StoreContract):
    def target(self, tmp_path):
        return str(tmp_path / "s.h5")


def test_chunks_hold_whole_rows_between_2_and_8_mib():
    for dim, views in [(384, 1), (512, 1), (768, 1), (1024, 1), (1536, 1), (768, 4)]:
        row_bytes = dim * views * 2
        rows = chunk_rows_for(row_bytes, 1 << 20)
        assert 2 << 20 <= rows * row_bytes <= 8 << 20, (dim, views)
    assert chunk_rows_for(2, 4096) == 4096  # never beyond a partition


def test_zarr_python_lists_a_store_without_warnings_and_reads_its_markers(tmp_path, ids, fill):
    """Markers are Zarr groups (attributes: the marker), so a plain zarr-python listing, even under
    -W error, meets nothing it does not recognise; stores written before, with markers as
    _partitions/<key>.json files, still read, and a rewritten partition moves its marker."""
    import glob
    import json
    import os
    import warnings
    import zarr
    path = str(tmp_path / "s.zarr")
    cache = FeatureCache.create(path, sample_ids=ids, partition_rows=16)
    fill(cache)
    cache.add_inputs("px", {"pixels": ((2,), "uint8")}, {"kind": "test"})
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_inputs_partition(p, "px", {"pixels": np.ones((b - a, 2), np.uint8)})
    markers = cache.store.markers()
    cache.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(path, mode="r")
        members = dict(group.members(max_depth=None))
        group.tree()
    assert {"index/valid", "teachers/clip/features", "inputs/px/pixels", "_partitions/clip/000006"} <= set(members)
    assert dict(group["_partitions/inputs/px/000003"].attrs) == markers["inputs/px/000003"]

    for doc in sorted(glob.glob(os.path.join(path, "_partitions", "**", "zarr.json"), recursive=True), reverse=True):
        attrs = json.load(open(doc))["attributes"]  # the layout featcache wrote before
        os.remove(doc)
        if attrs:
            json.dump(attrs, open(os.path.dirname(doc) + ".json", "w"))
            os.rmdir(os.path.dirname(doc))
    with FeatureCache.open(path, mode="r+") as old:
        assert old.store.markers() == markers and old.is_complete and verify(old).ok
        assert old.inputs_done("px") == set(range(7))
        a, b = old.partition_range(2)
        old.write_partition(2, features={"clip": old.read("clip", a, b)})
        assert not os.path.exists(os.path.join(path, "_partitions", "clip", "000002.json"))
        assert os.path.exists(os.path.join(path, "_partitions", "clip", "000002", "zarr.json"))
        assert set(old.store.markers()) == set(markers) and old.is_complete and verify(old).ok
