"""Lost writes: a marker on disk whose bytes never made it (what a power cut leaves) is found and redone."""

import glob
import os

import numpy as np

from featcache.cache_tools import FeatureCache, ZarrStore, verify
from featcache.cache_tools import _zarr
from featcache.plumbing.config import load_config
from featcache.pipeline.config import ExtractConfig
from featcache.pipeline.extract import run_extract

from extract_helpers import exe, extract, extract_index, make_images, timm_teacher, write_extract_config  # noqa: E402,E501


def newest(store, part):
    """(partition, marker) the run marked last for ``part``."""
    with FeatureCache.open(store) as cache:
        docs = [doc for key, doc in cache.store.markers().items() if key.startswith(f"{part}/")]
    doc = max(docs, key=lambda d: (d["written_at"], d["partition"]))
    return doc["partition"], doc


def test_lost_writes_after_markers_are_found_and_redone(tmp_path, timm_ckpt):
    root = make_images(tmp_path / "imgs", classes=3, per_class=8)
    store = str(tmp_path / "s.zarr")
    data = {"source": {"kind": "image_folder", "root": root}, "teachers": [timm_teacher(timm_ckpt)],
            "output": {"store": store, "partition_rows": 8}, "batch_size": 5}
    cfg = load_config(ExtractConfig, data=data)
    run_extract(cfg, log=lambda _m: None)
    with FeatureCache.open(store) as cache:
        before, valid = cache.load("effnet"), cache.valid.copy()
        assert cache.chunk_rows("effnet") == 8 and verify(cache).ok

    logs = []
    run_extract(cfg, log=logs.append)  # nothing lost: says so, redoes nothing
    assert any("re-checked" in m and "all match their markers" in m for m in logs)

    p_feat, _ = newest(store, "effnet")
    chunk = os.path.join(store, "teachers", "effnet", "features", "c", str(p_feat), "0")
    with open(chunk, "r+b") as fh:
        fh.truncate(os.path.getsize(chunk) // 2)  # a write cut short
    p_index, _ = newest(store, "_index")
    valid_chunk = os.path.join(store, "index", "valid", "c", str(p_index))
    size = os.path.getsize(valid_chunk)
    with open(valid_chunk, "wb") as fh:
        fh.write(b"\0" * size)  # a block that never left the cache reads back as zeros
    with FeatureCache.open(store) as cache:
        assert cache.is_complete and not verify(cache).ok  # the markers alone say all is well

    logs = []
    summary = run_extract(cfg, log=logs.append)
    line = next(m for m in logs if "re-checked" in m)
    assert "2 do not match their markers and are redone" in line
    assert f"effnet partition {p_feat}: unreadable" in line and f"index partition {p_index}: checksum mismatch" in line
    assert summary.rows_done == 8 * len({p_feat, p_index}) and summary.complete
    with FeatureCache.open(store) as cache:
        assert verify(cache).ok
        np.testing.assert_array_equal(cache.valid, valid)
        np.testing.assert_array_equal(cache.load("effnet"), before)


def test_hdf5_store_resumes_and_rechecks(tmp_path, timm_ckpt):
    root = make_images(tmp_path / "imgs", classes=2, per_class=4)
    store = str(tmp_path / "s.h5")
    data = {"source": {"kind": "image_folder", "root": root}, "teachers": [timm_teacher(timm_ckpt)],
            "output": {"store": store, "partition_rows": 4}, "batch_size": 4}
    cfg = load_config(ExtractConfig, data=data)
    run_extract(cfg, log=lambda _m: None)
    logs = []
    run_extract(cfg, log=logs.append)
    assert any("re-checked the 4 partitions" in m and "all match" in m for m in logs), logs
    with FeatureCache.open(store) as cache:
        assert verify(cache).ok and cache.has_doc_checksums


def test_a_second_writer_on_a_locked_hdf5_store_changes_nothing(tmp_path):
    """HDF5 allows one writer: a second extraction into a store another process holds stops in one
    line saying it is in use (exit 1), never that the healthy store is corrupt; with
    output.overwrite = true too, where HDF5 itself would first truncate the file to nothing."""
    import hashlib
    import subprocess
    root = make_images(tmp_path / "imgs", classes=2, per_class=4)
    store = str(tmp_path / "s.h5")
    source = {"kind": "image_folder", "root": root}
    extract_index(store, source)
    cfg = write_extract_config(tmp_path / "c.toml", store, source, [timm_teacher("unused.pt")])  # never built
    with FeatureCache.open(store, mode="r+"):  # the first writer, still at work
        digest = hashlib.sha256(open(store, "rb").read()).hexdigest()  # (opening for writing marks the file)
        for more in ([], ["--set", "output.overwrite=true"]):
            r = subprocess.run([exe("featcache-extract"), cfg, "--index-only", *more], capture_output=True,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            assert r.returncode == 1, r.stderr
            assert f"featcache-extract: error: {store}: in use by another writer" in r.stderr
            assert "corrupt" not in r.stderr and hashlib.sha256(open(store, "rb").read()).hexdigest() == digest
    with FeatureCache.open(store) as cache:
        assert cache.is_complete and verify(cache).ok


def chunk_files(first: str) -> list[str]:
    """The files of one row chunk: ``c/<i>`` itself (1-d arrays) or the files under it."""
    if os.path.isfile(first):
        return [first]
    return [f for f in glob.glob(os.path.join(first, "**"), recursive=True) if os.path.isfile(f)]


def test_every_partition_is_fsynced_before_its_marker(tmp_path, timm_ckpt, monkeypatch):
    """Recorded during a real extraction (3 partitions, 2 views: features, valid and view params):
    each chunk file of a partition, and its folder, is fsynced after the partition's rows are
    written and before its done marker."""
    store = str(tmp_path / "s.zarr")
    events: list[tuple] = []
    real_fsync, real_write, real_put = _zarr._fsync, ZarrStore._write, ZarrStore._put_marker

    def fsync(path):
        events.append(("fsync", os.path.relpath(path, store)))
        real_fsync(path)

    def write(self, node, start, values):  # the fsyncs of a write come after its start
        events.append(("write", node, start, start + len(values)))
        real_write(self, node, start, values)

    def put_marker(self, key, doc):
        events.append(("marker", key, doc["start"], doc["stop"]))
        real_put(self, key, doc)

    monkeypatch.setattr(_zarr, "_fsync", fsync)
    monkeypatch.setattr(ZarrStore, "_write", write)
    monkeypatch.setattr(ZarrStore, "_put_marker", put_marker)
    extract(store, {"kind": "image_folder", "root": make_images(tmp_path / "imgs")}, [timm_teacher(timm_ckpt)],
            views=2)
    with FeatureCache.open(store) as cache:
        assert cache.is_complete and cache.num_partitions == 3
        nodes = {"_index": ["index/valid", "views/params"], "effnet": ["teachers/effnet/features"]}
        chunk_rows = {node: cache.store.array_meta(node).chunk_rows for group in nodes.values() for node in group}
    markers = [(i, e) for i, e in enumerate(events) if e[0] == "marker"]
    assert sorted(e[1] for _i, e in markers) == [f"{part}/{p:06d}" for part in ("_index", "effnet") for p in range(3)]
    for i, (_, key, start, stop) in markers:
        for node in nodes[key.split("/")[0]]:
            wrote = [j for j, e in enumerate(events[:i]) if e[:2] == ("write", node) and e[2] < stop and e[3] > start]
            assert wrote, f"{key}: no write of {node} rows {start}:{stop} before its marker"
            synced = {e[1] for e in events[wrote[-1]:i] if e[0] == "fsync"}
            rows = chunk_rows[node]
            files = [os.path.relpath(f, store) for c in range(start // rows, (stop - 1) // rows + 1)
                     for f in chunk_files(os.path.join(store, node, "c", str(c)))]
            assert files, f"{key}: no chunk file of {node} on disk"
            for f in files:
                assert f in synced and os.path.dirname(f) in synced, (key, f, sorted(synced))
