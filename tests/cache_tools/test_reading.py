import numpy as np

from featcache.cache_tools import FeatureCache, MemoryStore
from featcache.cache_tools.reading import iter_chunk_shuffled, iter_teacher_batches


def test_every_row_once_with_matching_values():
    data = np.arange(1000 * 3).reshape(1000, 3)
    seen = []
    for ids, vals in iter_chunk_shuffled(lambda a, b: data[a:b], 1000, 64, 50, rng=np.random.default_rng(0),
                                         chunks_per_block=3, workers=2):
        np.testing.assert_array_equal(vals, data[ids])
        assert len(ids) <= 50
        seen.append(ids)
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == list(range(1000))
    assert not np.array_equal(seen, np.arange(1000))  # actually shuffled


def test_subset_of_rows_and_drop_last():
    data = np.arange(500)[:, None]
    rows = np.random.default_rng(3).choice(500, 123, replace=False)
    batches = list(iter_chunk_shuffled(lambda a, b: data[a:b], 500, 32, 20, rng=np.random.default_rng(1),
                                       rows=rows, drop_last=True))
    assert all(len(ids) == 20 for ids, _ in batches) and len(batches) == 6
    assert set(np.concatenate([i for i, _ in batches]).tolist()) <= set(rows.tolist())


def test_block_reads_one_gather_call_per_block_of_chunks():
    """With ``gather``, each block of chunks_per_block chunks is read in one call of sorted row ids;
    every wanted row comes once, with its own values, shuffled."""
    data = np.arange(1000 * 2).reshape(1000, 2)
    rows = np.random.default_rng(5).choice(1000, 700, replace=False)
    calls = []

    def gather(ids):
        calls.append(ids)
        return data[ids]

    got = list(iter_chunk_shuffled(None, 1000, 64, 50, rng=np.random.default_rng(0), rows=rows,
                                   chunks_per_block=3, workers=2, gather=gather))
    for ids, vals in got:
        np.testing.assert_array_equal(vals, data[ids])
    seen = np.concatenate([i for i, _ in got])
    assert sorted(seen.tolist()) == sorted(rows.tolist()) and not np.array_equal(seen, np.sort(rows))
    assert len(calls) == -(-len(np.unique(rows // 64)) // 3)  # one call per block of 3 chunks
    assert all(np.all(np.diff(c) > 0) and len(np.unique(c // 64)) <= 3 for c in calls)


def test_store_take_reads_sorted_rows_as_spans(tmp_path, fill, ids):
    """Zarr reads every touched chunk's span in one call (read_spans); the rows are the same as
    a read of each row, for a sorted block and for rows in any order with repeats."""
    cache = FeatureCache.create(str(tmp_path / "s.zarr"), sample_ids=ids, partition_rows=16)
    data = fill(cache)
    for rows in (np.array([0, 1, 2, 17, 40, 41, 99]), np.array([99, 3, 3, 50, 0])):
        np.testing.assert_array_equal(cache.take("clip", rows), data["clip"][rows])
    assert cache.take("clip", np.array([], np.int64)).shape == (0, *data["clip"].shape[1:])


def test_store_batches(fill, ids):
    cache = FeatureCache.create(MemoryStore(), sample_ids=ids, partition_rows=16)
    data = fill(cache)
    got = list(iter_teacher_batches(cache, "clip", 32, rng=np.random.default_rng(0)))
    for rows, feats in got:
        np.testing.assert_array_equal(feats, data["clip"][rows])
    assert sum(len(r) for r, _ in got) == 100


def _types(value):
    """The Python and numpy types of a value, all the way down (what a caller would branch on)."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.kind if value.dtype.kind in "OTU" else value.dtype.name,
                sorted({type(v).__name__ for v in value.ravel().tolist()}) if value.dtype.kind in "OTU" else None)
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items() if k not in ("path", "backend", "size_on_disk")}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


def _store_pair(tmp_path, fill):
    """The same rows, classes, teacher and markers in a Zarr and an HDF5 store (s.zarr and s.h5)."""
    from featcache.cache_tools import convert
    ids = [f"img/{i:04d}.png" for i in range(40)]
    zarr_path, h5_path = str(tmp_path / "s.zarr"), str(tmp_path / "s.h5")
    cache = FeatureCache.create(zarr_path, sample_ids=ids, labels=np.arange(40) % 3, partition_rows=16,
                                source={"kind": "image_folder", "classes": ["cat", "dog", "emu"]})
    fill(cache)
    cache.close()
    convert(zarr_path, h5_path).close()
    return zarr_path, h5_path


def test_hdf5_and_zarr_give_the_same_types_through_featcache(tmp_path, fill):
    zarr_path, h5_path = _store_pair(tmp_path, fill)
    seen = {}
    for path in (zarr_path, h5_path):
        with FeatureCache.open(path) as cache:
            seen[path] = _types({
                "ids": cache.sample_ids, "labels": cache.labels, "valid": cache.valid, "meta": cache.meta,
                "info": cache.info(), "teacher": cache.teacher_info("clip"), "markers": cache.store.markers(),
                "attrs": cache.store.get_attrs("teachers/clip"), "take_ids": cache.store.take("index/sample_id", np.array([1, 3])),
                "read_ids": cache.store.read("index/sample_id", 0, 2), "features": cache.take("clip", [2, 0])})
            assert cache.source["classes"] == ["cat", "dog", "emu"]
    assert seen[zarr_path] == seen[h5_path]
    assert seen[h5_path]["ids"] == ("ndarray", "O", ["str"]) and seen[h5_path]["meta"]["source"]["classes"] == ["str"] * 3


def test_the_plain_reader_examples_in_store_format_md_read_what_featcache_reads(tmp_path, fill, monkeypatch):
    """The zarr-python and h5py snippets of docs/store-format.md, run as written on the two stores:
    the same classes, ids, labels, features, teacher description and done partitions as featcache."""
    import os
    import re
    zarr_path, _ = _store_pair(tmp_path, fill)
    docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "store-format.md")
    section = open(docs).read().split("## Reading a store without featcache", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2 and "zarr.open_group" in blocks[0] and "h5py.File" in blocks[1]
    monkeypatch.chdir(tmp_path)
    with FeatureCache.open(zarr_path) as cache:
        want = {"classes": cache.source["classes"], "ids": cache.sample_ids.tolist(), "labels": cache.labels.tolist(),
                "valid": cache.valid.tolist(), "features": cache.load("clip").tolist(),
                "teacher": cache.store.get_attrs("teachers/clip")["featcache_teacher"],
                "done": sorted(cache.done_partitions()["clip"])}
    for block in blocks:
        ns: dict = {}
        exec(compile(block, "store-format.md", "exec"), ns)  # noqa: S102 - the docs' own example
        got = {k: ns[k].tolist() if isinstance(ns[k], np.ndarray) else ns[k] for k in want}
        assert [type(i) for i in got["ids"]] == [str] * 40 and got == want
