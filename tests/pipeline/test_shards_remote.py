"""WebDataset shards and Parquet files on object storage (a real S3 server on loopback, as in
test_s3.py; nothing of s3fs is mocked), and the shard index a store keeps so stage 2 never walks
the shards' headers again."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

from featcache.cache_tools import FeatureCache, verify
from featcache.cache_tools.cli import main as cache_main
from featcache.plumbing import storage
from featcache.rawdata import SourceChanged, SourceError, open_source, source_of, webdataset
from featcache.rawdata import tar_shards

from extract_helpers import BUCKET, extract, make_images, timm_teacher  # noqa: E402
from test_formats import _by_image, make_parquet, make_shards  # noqa: E402
from test_s3 import flag, fresh_options, train_config  # noqa: E402,F401 - fresh_options is an autouse fixture

s3fs = pytest.importorskip("s3fs")


def _fs(s3):
    return s3fs.S3FileSystem(endpoint_url=s3["endpoint"], skip_instance_cache=True)


@pytest.fixture(scope="module")
def bucket_data(s3, tmp_path_factory):
    """12 images as a local folder, as 3 shards and as a Parquet file in the bucket."""
    d = tmp_path_factory.mktemp("remote")
    images = make_images(d / "images", classes=3, per_class=4)
    paths = make_shards(images, d / "shards", per_shard=5)
    pq_path = make_parquet(images, d / "train.parquet", row_group_size=4)
    fs, prefix = _fs(s3), f"{BUCKET}/shards-remote"
    for p in paths:
        fs.put(p, f"{prefix}/shards/{os.path.basename(p)}")
    fs.put(pq_path, f"{prefix}/pq/train.parquet")
    return {"images": images, "local": paths, "prefix": prefix,
            "shards": f"s3://{prefix}/shards/train-{{000000..000002}}.tar", "parquet": f"s3://{prefix}/pq"}


def _key(sample_id):  # train-000000.tar/class1_003 -> class1/003.png, the folder source's id
    return sample_id.split("/", 1)[1].replace("_", "/", 1) + ".png"


def test_s3_shards_and_parquet_give_the_image_folder_features(s3, bucket_data, tmp_path, timm_ckpt):
    teacher = [timm_teacher(timm_ckpt)]
    opts = {"storage": {"endpoint_url": s3["endpoint"]}}
    extract(tmp_path / "f.zarr", {"kind": "image_folder", "root": bucket_data["images"]}, teacher)
    w = extract(tmp_path / "w.zarr", {"kind": "webdataset", "root": bucket_data["shards"], **opts}, teacher)
    p = extract(tmp_path / "p.zarr", {"kind": "parquet", "root": bucket_data["parquet"], "id_column": "key",
                                      **opts}, teacher)
    f, w, p = FeatureCache.open(str(tmp_path / "f.zarr")), FeatureCache.open(w.path), FeatureCache.open(p.path)
    kf, ff, lf = _by_image(f, lambda s: s)
    kw, fw, lw = _by_image(w, _key)
    kp, fp, lp = _by_image(p, lambda s: s)
    assert kf == kw == kp and len(kf) == 12
    np.testing.assert_array_equal(ff, fw)
    np.testing.assert_array_equal(ff, fp)
    np.testing.assert_array_equal(lf, lw)
    np.testing.assert_array_equal(lf, lp)
    assert w.source["root"] == bucket_data["shards"] and p.source["root"] == bucket_data["parquet"]
    for cache in (w, p):  # the options reached the source, never the store
        assert "storage" not in cache.source and s3["endpoint"] not in json.dumps(cache.info())
    assert w.info()["source_index"]["shards"] == 3 and verify(w).ok


def test_header_walk_reads_headers_only(s3, tmp_path):
    """A shard of 200 KB members: the walk costs about one small request per sample, not the shard."""
    rng = np.random.default_rng(0)
    path = tmp_path / "big-0.tar"
    with tarfile.open(path, "w") as tar:
        for k in range(6):
            for name, data in ((f"s{k}.jpg", rng.bytes(200_000)), (f"s{k}.cls", b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    _fs(s3).put(str(path), f"{BUCKET}/walk/big-0.tar")
    src = webdataset(f"s3://{BUCKET}/walk/big-0.tar", storage_options={"endpoint_url": s3["endpoint"]})
    assert len(src) == 6 and src.labels.tolist() == [1] * 6
    walk = src.files.requests, src.files.bytes_read
    assert walk[0] <= 6 + 3 and walk[1] < 0.1 * os.path.getsize(path), walk  # a listing, ~a request per sample
    with pytest.raises(Exception, match="cannot decode image"):  # random bytes: but one ranged read
        src.load(3)
    assert src.files.requests == walk[0] + 1 and src.files.bytes_read - walk[1] == 200_000 + 512


def test_train_from_an_s3_shard_store_uses_the_stored_index(s3, bucket_data, tmp_path, timm_ckpt, monkeypatch):
    """Stage 2 reopens the s3:// shards from the store's index (the header walk is never called),
    reads each row with one ranged request, and trains."""
    from featcache.train.loop import run
    src = {"kind": "webdataset", "root": bucket_data["shards"], "storage": {"endpoint_url": s3["endpoint"]}}
    s = extract(tmp_path / "w.zarr", src, [timm_teacher(timm_ckpt)])

    def no_walk(*_a, **_k):
        raise AssertionError("the shard headers were walked again")

    monkeypatch.setattr(tar_shards, "walk_shard", no_walk)
    said = []
    res = run(train_config(tmp_path / "run", s.path, s3, cached_inputs="off"), log=said.append)
    assert res["epochs"] == 1 and res["test_rows"] > 0
    assert any("decoded from the raw inputs" in m for m in said), said
    storage.set_options({"endpoint_url": s3["endpoint"]})
    with FeatureCache.open(s.path) as cache:
        reopened = source_of(cache)
        assert reopened.files.requests == 1  # one listing of the shard folder, no header read
        folder = open_source({"kind": "image_folder", "root": bucket_data["images"]})
        row = list(reopened.sample_ids).index("train-000001.tar/class2_001")
        assert np.array_equal(np.asarray(reopened.load(row)),
                              np.asarray(folder.load(folder.sample_ids.index("class2/001.png"))))
        # a resume of the extraction reopens from the index too
        again = extract(tmp_path / "w.zarr", src, [timm_teacher(timm_ckpt)])
        assert again.complete and again.rows_done == 0


def _rewrite(local_shard, fs, remote, extra=b"", mtime=None):
    """The same members written again (another mtime in every header), plus an optional new member."""
    with tarfile.open(local_shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            m.mtime = mtime if mtime is not None else m.mtime + 1
            tar.addfile(m, io.BytesIO(data))
        if extra:
            info = tarfile.TarInfo("zz_extra.png")
            info.size = len(extra)
            tar.addfile(info, io.BytesIO(extra))
    fs.pipe(remote, buf.getvalue())
    return len(buf.getvalue())


def _store_from_own_shards(s3, bucket_data, tmp_path, ckpt, name):
    """A copy of the shards under a prefix of the test's own (it changes or deletes them), and a
    store extracted from it: (the filesystem, the prefix, the extraction's summary)."""
    fs, prefix = _fs(s3), f"{BUCKET}/{name}-{os.getpid()}"
    for p in bucket_data["local"]:
        fs.put(p, f"{prefix}/{os.path.basename(p)}")
    src = {"kind": "webdataset", "root": f"s3://{prefix}/train-{{000000..000002}}.tar",
           "storage": {"endpoint_url": s3["endpoint"]}}
    return fs, prefix, extract(tmp_path / "w.zarr", src, [timm_teacher(ckpt)])


def test_changed_shards_are_refused_in_one_line(s3, bucket_data, tmp_path, timm_ckpt, capsys):
    fs, prefix, s = _store_from_own_shards(s3, bucket_data, tmp_path, timm_ckpt, "changed")
    # the same members with new header times, same size: the index is used, the row read sees it
    size = _rewrite(bucket_data["local"][1], fs, f"{prefix}/train-000001.tar")
    assert size == os.path.getsize(bucket_data["local"][1])
    storage.set_options({"endpoint_url": s3["endpoint"]})
    with FeatureCache.open(s.path) as cache:
        reopened = source_of(cache)
        row = next(i for i, sid in enumerate(reopened.sample_ids) if sid.startswith("train-000001.tar/"))
        with pytest.raises(SourceChanged, match=r"train-000001.tar: the member at offset \d+ is not the one indexed"):
            reopened.load(row)
        reopened.load(0)  # the other shards still read
    storage.reset()
    # a member added (the size changes): the shard is walked again and its fingerprint refuses it
    _rewrite(bucket_data["local"][1], fs, f"{prefix}/train-000001.tar", extra=b"x" * 20000)
    assert cache_main(["inputs", s.path, "--size", "16", *flag(s3)]) == 1  # the data changed under the store: exit 1, like a store of another dataset
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shards changed since the store was built (train-000001.tar)" in err, err


def test_cached_inputs_train_with_the_shards_gone(s3, bucket_data, tmp_path, timm_ckpt, capsys):
    """Once the student inputs are in the store, training never opens a shard; without them, a
    missing shard is one line that says what to do."""
    from featcache.train.loop import run
    fs, prefix, s = _store_from_own_shards(s3, bucket_data, tmp_path, timm_ckpt, "gone")
    assert cache_main(["inputs", s.path, "--size", "32", *flag(s3)]) == 0
    capsys.readouterr()
    fs.rm(prefix, recursive=True)
    said = []
    res = run(train_config(tmp_path / "run", s.path, s3), log=said.append)  # data.cached_inputs = "auto"
    assert res["epochs"] == 1 and not any("decoded from the raw inputs" in m for m in said)
    storage.reset()
    with pytest.raises(SourceError) as info:
        run(train_config(tmp_path / "off", s.path, s3, cached_inputs="off"), log=lambda _m: None)
    assert "\n" not in str(info.value) and "train-000000.tar: shard not found" in str(info.value)
    assert "student inputs cached in the store" in str(info.value)
