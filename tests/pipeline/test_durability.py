"""Lost writes: a marker on disk whose bytes never made it (what a power cut leaves) is found and redone."""

import json
import os

import numpy as np

from featcache.cache_tools import FeatureCache, verify
from featcache.plumbing.config import load_config
from featcache.pipeline.config import ExtractConfig
from featcache.pipeline.extract import run_extract

from conftest import make_images, timm_teacher  # noqa: E402


def newest(store, part):
    """(partition, marker) the run marked last for ``part``."""
    folder = os.path.join(store, "_partitions", part)
    docs = [json.load(open(os.path.join(folder, f))) for f in os.listdir(folder)]
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
