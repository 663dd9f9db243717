"""WebDataset shards and Parquet files: the same images give the same features as an image folder."""

import io
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from featcache.cache_tools import FeatureCache  # noqa: E402
from featcache.rawdata import open_source, parquet, SourceChanged, SourceError, webdataset  # noqa: E402
from featcache.rawdata.tar_shards import expand_braces  # noqa: E402

from extract_helpers import exe, extract, make_images, timm_teacher, write_extract_config  # noqa: E402


def _folder_files(root):
    """(class index, class name, file name, bytes) of an image folder, in the folder source's order."""
    out = []
    for c, name in enumerate(sorted(os.listdir(root))):
        for f in sorted(os.listdir(os.path.join(root, name))):
            out.append((c, name, f, open(os.path.join(root, name, f), "rb").read()))
    return out


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(images, out, per_shard=7):
    """Tar shards in WebDataset layout: <key>.png + <key>.cls, keys interleaved across classes."""
    os.makedirs(out, exist_ok=True)
    files = _folder_files(images)
    order = sorted(range(len(files)), key=lambda i: (files[i][2], files[i][0]))  # shuffle classes together
    paths = []
    for s in range(0, len(order), per_shard):
        path = os.path.join(out, f"train-{s // per_shard:06d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in order[s:s + per_shard]:
                c, name, f, data = files[i]
                key = f"{name}_{f.split('.')[0]}"
                _add(tar, f"{key}.png", data)
                _add(tar, f"{key}.cls", str(c).encode())
        paths.append(path)
    return paths


def make_parquet(images, path, row_group_size=5, hf_struct=True):
    files = _folder_files(images)
    cells = [{"bytes": d, "path": f} for _, _, f, d in files] if hf_struct else [d for *_, d in files]
    table = pa.table({"image": cells, "label": [n for _, n, _, _ in files],
                      "key": [f"{n}/{f}" for _, n, f, _ in files]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def _cut_last_image(path):
    """Truncate a shard inside the data of its last image member."""
    with tarfile.open(path) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".png")][-1]
    with open(path, "r+b") as fh:
        fh.truncate(last.offset_data + last.size // 2)
    return last.name.split(".")[0]


def _by_image(cache, ids_to_key):
    feats = cache.load("effnet").astype(np.float32)
    keys = [ids_to_key(s) for s in cache.sample_ids]
    order = np.argsort(keys)
    return [keys[i] for i in order], feats[order], cache.labels[order]


def test_brace_expansion():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]


def test_three_sources_give_identical_features(tmp_path, timm_ckpt):
    images = make_images(tmp_path / "images", classes=3, per_class=6)
    make_shards(images, tmp_path / "shards")
    pq_path = make_parquet(images, tmp_path / "train.parquet")
    teacher = [timm_teacher(timm_ckpt)]
    extract(tmp_path / "f.zarr", {"kind": "image_folder", "root": images}, teacher)
    extract(tmp_path / "w.zarr", {"kind": "webdataset", "root": str(tmp_path / "shards/train-{000000..000002}.tar")},
            teacher)
    extract(tmp_path / "p.zarr", {"kind": "parquet", "root": pq_path, "id_column": "key"}, teacher)
    f, w, p = (FeatureCache.open(str(tmp_path / n)) for n in ("f.zarr", "w.zarr", "p.zarr"))
    assert w.is_complete and p.is_complete and len(w.sample_ids) == 18
    assert w.sample_ids[0] == "train-000000.tar/class0_000"
    kf, ff, lf = _by_image(f, lambda s: s)
    kw, fw, lw = _by_image(w, lambda s: s.split("/", 1)[1].replace("_", "/", 1) + ".png")
    kp, fp, lp = _by_image(p, lambda s: s)
    assert kf == kw == kp
    np.testing.assert_array_equal(ff, fw)
    np.testing.assert_array_equal(ff, fp)
    np.testing.assert_array_equal(lf, lw)
    np.testing.assert_array_equal(lf, lp)
    assert p.source["classes"] == ["class0", "class1", "class2"]
    # the recorded description reopens the same rows (stage 2's path), shards checked by fingerprint
    src, folder = open_source(w.source), open_source(f.source)
    assert list(src.sample_ids) == list(w.sample_ids)
    row = list(src.sample_ids).index("train-000000.tar/class1_000")
    assert np.array_equal(np.asarray(src.load(row)), np.asarray(folder.load(folder.sample_ids.index("class1/000.png"))))
    with tarfile.open(tmp_path / "shards/train-000002.tar", "a") as tar:
        _add(tar, "extra.png", b"x")
    with pytest.raises(SourceChanged, match=r"shards changed since the store was built \(train-000002.tar\)"):
        open_source(w.source)


def test_corrupt_members_and_cells_are_invalid_rows(tmp_path):
    images = make_images(tmp_path / "images", classes=2, per_class=4)
    paths = make_shards(images, tmp_path / "shards", per_shard=4)
    with tarfile.open(paths[0], "a") as tar:
        _add(tar, "nolabel_x.cls", b"1")  # a sample without its image
    cut = _cut_last_image(paths[1])
    src = webdataset(str(tmp_path / "shards/train-{000000..000001}.tar"))
    reasons = {}
    for i in range(len(src)):
        try:
            src.load(i)
        except Exception as exc:  # noqa: BLE001
            reasons[src.sample_ids[i]] = str(exc)
    assert "train-000000.tar/nolabel_x" in reasons and "no jpg / jpeg / png / webp member" in \
        reasons["train-000000.tar/nolabel_x"]
    assert "truncated" in reasons[f"train-000001.tar/{cut}"], reasons
    assert len(reasons) == 2 and len(src) == 9
    # cut inside a header: the samples before it load, one invalid row says where the shard stops
    with tarfile.open(paths[0]) as tar:
        third = [m for m in tar.getmembers() if m.name.endswith(".png")][2]
    with open(paths[0], "r+b") as fh:
        fh.truncate(third.offset + 100)
    src = webdataset(paths[0])
    assert len(src) == 3 and src.load(1).size
    assert src.sample_ids[2] == "train-000000.tar/#cut-off"
    with pytest.raises(Exception, match=r"train-000000.tar: cut off after 4 members \(no end-of-archive block\)"):
        src.load(2)
    # garbage bytes in a Parquet cell
    table = pa.table({"image": [open(os.path.join(images, "class0/000.png"), "rb").read(), b"not an image"],
                      "label": [0, 1]})
    pq.write_table(table, tmp_path / "bad.parquet")
    src = parquet(str(tmp_path / "bad.parquet"))
    assert src.load(0).size and src.sample_ids == ["bad.parquet:0", "bad.parquet:1"]
    with pytest.raises(Exception, match=r"bad.parquet:1: cannot decode image"):
        src.load(1)
    with pytest.raises(SourceError, match="source.text_column: .* has no column 'caption'"):
        parquet(str(tmp_path / "bad.parquet"), text_column="caption")



def _wds_config(tmp_path, pattern, ckpt, store):
    return _config(tmp_path, {"kind": "webdataset", "root": pattern}, ckpt, store)


def _config(tmp_path, source, ckpt, store):
    return write_extract_config(tmp_path / f"{os.path.basename(store)}.toml", store, source, [timm_teacher(ckpt)],
                                batch_size=3, output={"partition_rows": 4})


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_torchrun_two_ranks_equal_one(tmp_path, timm_ckpt, kind):
    """2 ranks write the store 1 process writes, bit for bit; the shard headers are walked by rank 0
    only (the other rank opens the shards from the index rank 0 stored), as the log says."""
    images = make_images(tmp_path / "images", classes=2, per_class=7)
    if kind == "webdataset":
        make_shards(images, tmp_path / "shards", per_shard=5)
        source = {"kind": kind, "root": str(tmp_path / "shards/train-{000000..000002}.tar")}
    else:
        source = {"kind": kind, "root": make_parquet(images, tmp_path / "train.parquet", row_group_size=3),
                  "id_column": "key"}
    one = _config(tmp_path, source, timm_ckpt, str(tmp_path / "one.zarr"))
    two = _config(tmp_path, source, timm_ckpt, str(tmp_path / "two.zarr"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels on both sides: bit-equal features
    res = subprocess.run([exe("featcache-extract"), one], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([exe("torchrun"), "--standalone", "--nproc_per_node=2", "-m", "featcache.pipeline.cli",
                          two], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = FeatureCache.open(str(tmp_path / "one.zarr")), FeatureCache.open(str(tmp_path / "two.zarr"))
    assert b.is_complete and list(a.sample_ids) == list(b.sample_ids) and a.source == b.source
    assert len(a.sample_ids) == 14 and a.valid.all()
    np.testing.assert_array_equal(a.load("effnet"), b.load("effnet"))
    np.testing.assert_array_equal(a.labels, b.labels)
    if kind == "webdataset":
        said = res.stdout + res.stderr
        assert "rank 0: walked the tar headers of 3 of 3 shards" in said, said[-2000:]
        assert "rank 1: 3 shards opened from the store's index (no header walked)" in said, said[-2000:]
        assert said.count("walked the tar headers") == 1
        assert b.source_index() == a.source_index()


def test_truncated_shard_rows_are_invalid_in_the_store(tmp_path, timm_ckpt):
    images = make_images(tmp_path / "images", classes=2, per_class=5)
    paths = make_shards(images, tmp_path / "shards", per_shard=5)
    cut = _cut_last_image(paths[1])
    s = extract(tmp_path / "t.zarr", {"kind": "webdataset", "shards": paths}, [timm_teacher(timm_ckpt)],
                max_invalid_fraction=0.3)
    cache = FeatureCache.open(s.path)
    assert s.complete and s.valid_rows == 9 and len(cache.sample_ids) == 10
    bad = cache.sample_ids[int(np.flatnonzero(~cache.valid)[0])]
    assert bad == f"train-000001.tar/{cut}"
    log = open(s.invalid_log).read()
    assert bad in log and "truncated" in log


def test_cache_inputs_on_a_parquet_store(tmp_path, timm_ckpt):
    """Stage 2's path: the store's recorded source reads rows by index, here to cache student inputs."""
    images = make_images(tmp_path / "images", classes=2, per_class=5)
    os.makedirs(tmp_path / "data")
    pq_path = make_parquet(images, tmp_path / "data" / "train.parquet", hf_struct=False)
    s = extract(tmp_path / "p.zarr", {"kind": "parquet", "root": pq_path}, [timm_teacher(timm_ckpt)])
    res = subprocess.run([exe("featcache-cache"), "inputs", s.path, "--size", "16"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with FeatureCache.open(s.path) as cache:
        px = cache.load_inputs("image16_bilinear", "pixels")
        assert px.shape[0] == 10 and px.dtype == np.uint8 and px.any()
        assert cache.sample_ids[0] == "train.parquet:0"
    # moved data: --data-root relocates the Parquet file
    os.rename(tmp_path / "data", tmp_path / "moved")
    res = subprocess.run([exe("featcache-cache"), "inputs", s.path, "--size", "12", "--data-root",
                          str(tmp_path / "moved")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_resume_after_a_kill_mid_shard(tmp_path, timm_ckpt):
    """SIGKILL while decoding a row in the middle of the second shard: the rerun resumes and the
    store equals an uninterrupted run's."""
    images = make_images(tmp_path / "images", classes=2, per_class=7)
    make_shards(images, tmp_path / "shards", per_shard=5)
    pattern = str(tmp_path / "shards/train-{000000..000002}.tar")
    ref = _wds_config(tmp_path, pattern, timm_ckpt, str(tmp_path / "ref.zarr"))
    cfg = _wds_config(tmp_path, pattern, timm_ckpt, str(tmp_path / "killed.zarr"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([exe("featcache-extract"), ref], capture_output=True, env=env).returncode == 0
    script = textwrap.dedent(f"""
        import os, signal
        from featcache.rawdata import webdataset_shards
        from featcache.pipeline.cli import main
        real, calls = webdataset_shards.decode_image, []
        def dying(data, what, *more):
            calls.append(what)
            if len(calls) == 10:  # rows 0-7 (two partitions) are done; row 9 is inside train-000001.tar
                os.kill(os.getpid(), signal.SIGKILL)
            return real(data, what, *more)
        webdataset_shards.decode_image = dying
        main([{cfg!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not FeatureCache.open(str(tmp_path / "killed.zarr")).is_complete
    res = subprocess.run([exe("featcache-extract"), cfg], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout + res.stderr
    a, b = FeatureCache.open(str(tmp_path / "ref.zarr")), FeatureCache.open(str(tmp_path / "killed.zarr"))
    assert b.is_complete
    np.testing.assert_array_equal(a.load("effnet"), b.load("effnet"))


def test_hf_class_names_text_sources_and_one_line_errors(tmp_path):
    import json
    meta = {"info": {"features": {"label": {"names": ["cat", "dog"], "_type": "ClassLabel"}}}}
    table = pa.table({"text": ["a cat", "a dog", " "], "label": [0, 1, 1]})
    table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
    pq.write_table(table, tmp_path / "t.parquet")
    src = parquet(str(tmp_path / "t.parquet"), text_column="text")
    assert (src.modality, src.classes, src.labels.tolist(), src.load(1)) == ("text", ["cat", "dog"], [0, 1, 1], "a dog")
    with pytest.raises(Exception, match="t.parquet:2: empty text"):
        src.load(2)
    # webdataset text with labels from a JSON field (class names, sorted)
    with tarfile.open(tmp_path / "x-0.tar", "w") as tar:
        for k, (text, y) in enumerate([("hello", "zebra"), ("bye", "ant")]):
            _add(tar, f"s{k}.txt", text.encode())
            _add(tar, f"s{k}.json", json.dumps({"y": y}).encode())
    src = webdataset(str(tmp_path / "x-{0..0}.tar"), label_field="y", modality="text")
    assert (src.classes, src.labels.tolist(), src.load(0)) == (["ant", "zebra"], [1, 0], "hello")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[source]\nkind = "webdataset"\nroot = "{tmp_path}/x-{{0..1}}.tar"\n')
    res = subprocess.run([exe("featcache-extract"), str(cfg)], capture_output=True, text=True)
    assert res.returncode == 2 and "x-1.tar: shard not found" in res.stderr and res.stderr.count("\n") == 1


def test_save_to_disk_arrow_folder_and_a_glob_of_parquet_files(tmp_path):
    """A Hugging Face save_to_disk split (Arrow IPC stream, batches as row groups) and a glob that
    picks one split's Parquet files out of a folder holding several."""
    images = make_images(tmp_path / "images", classes=2, per_class=3)
    folder = open_source({"kind": "image_folder", "root": images})
    files = _folder_files(images)
    table = pa.table({"image": [{"bytes": d, "path": f} for *_, f, d in files], "label": [c for c, *_ in files]})
    os.makedirs(tmp_path / "ds" / "train")
    with pa.OSFile(str(tmp_path / "ds/train/data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=4):
                writer.write_batch(batch)
    src = parquet(str(tmp_path / "ds/train"))
    assert len(src) == 6 and src.labels.tolist() == folder.labels.tolist()
    for i in (0, 4, 5):
        assert np.array_equal(np.asarray(src.load(i)), np.asarray(folder.load(i)))
    os.makedirs(tmp_path / "hub" / "data")
    pq.write_table(table.slice(0, 4), tmp_path / "hub/data/train-00000-of-00002.parquet")
    pq.write_table(table.slice(4), tmp_path / "hub/data/train-00001-of-00002.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "hub/data/test-00000-of-00001.parquet")
    src = parquet(str(tmp_path / "hub/data/train-*.parquet"))
    assert src.sample_ids[4] == "train-00001-of-00002.parquet:0" and len(src) == 6
    assert np.array_equal(np.asarray(src.load(4)), np.asarray(folder.load(4)))


def test_store_keeps_the_shard_index_and_reopens_without_walking(tmp_path, timm_ckpt, monkeypatch):
    """The store keeps each shard's member offsets beside its source description: a reopen costs a
    stat (a listing on object storage) per shard folder. Damaged index bytes are verify's finding,
    and a reopen then walks the shards again. Any fsspec URL works (memory:// here)."""
    import fsspec
    from featcache.cache_tools import verify
    from featcache.rawdata import source_of, tar_shards

    images = make_images(tmp_path / "images", classes=2, per_class=3)
    paths = make_shards(images, tmp_path / "shards", per_shard=4)
    s = extract(tmp_path / "w.zarr", {"kind": "webdataset", "shards": paths}, [timm_teacher(timm_ckpt)])
    cache = FeatureCache.open(s.path)
    assert verify(cache).ok and cache.info()["source_index"]["shards"] == 2
    from featcache.cache_tools import convert
    copy = FeatureCache.open(convert(s.path, str(tmp_path / "w.h5")).path)  # the index travels with a convert
    assert copy.source_index() == cache.source_index() and verify(copy).ok

    def no_walk(*_a, **_k):
        raise AssertionError("walked")

    with monkeypatch.context() as m:
        m.setattr(tar_shards, "walk_shard", no_walk)
        src = source_of(cache)
        assert src.files.requests == 0 and src.labels.tolist() == cache.labels.tolist()
        folder = open_source({"kind": "image_folder", "root": images})
        key = src.sample_ids[5].split("/", 1)[1].replace("_", "/", 1) + ".png"
        assert np.array_equal(np.asarray(src.load(5)), np.asarray(folder.load(folder.sample_ids.index(key))))
        assert src.files.requests == 1  # one ranged read per row
    with FeatureCache.open(s.path, mode="r+") as rw:
        doc = rw.source_index_doc()
        data = rw.store.read(doc["node"], 0, doc["bytes"]).copy()
        data[len(data) // 2] ^= 0xFF
        rw.store.write(doc["node"], 0, data)
    damaged = FeatureCache.open(s.path)
    problems = verify(damaged).problems
    assert len(problems) == 1 and "source index: unreadable" in problems[0] and "bytes changed" in problems[0]
    assert list(source_of(damaged).sample_ids) == list(cache.sample_ids)  # walked again
    mem = fsspec.filesystem("memory")
    for p in paths:
        mem.pipe(f"/wds/{os.path.basename(p)}", open(p, "rb").read())
    src = webdataset("memory://wds/train-{000000..000001}.tar")
    assert list(src.sample_ids) == list(cache.sample_ids) and src.describe()["root"].startswith("memory://")
    assert np.array_equal(np.asarray(src.load(3)), np.asarray(source_of(cache).load(3)))


def test_parquet_path_column_gives_the_image_folder_features(tmp_path, timm_ckpt):
    """Paths relative to the Parquet file's folder; a path to a file that is not there is an invalid
    row whose reason names the file."""
    images = make_images(tmp_path / "data" / "images", classes=2, per_class=4)
    files = _folder_files(images)
    paths = [f"images/{n}/{f}" for _, n, f, _ in files] + ["images/class1/gone.png"]
    table = pa.table({"file": paths, "label": [c for c, *_ in files] + [1],
                      "key": [f"{n}/{f}" for _, n, f, _ in files] + ["class1/gone.png"]})
    pq.write_table(table, tmp_path / "data" / "train.parquet", row_group_size=3)
    teacher = [timm_teacher(timm_ckpt)]
    extract(tmp_path / "f.zarr", {"kind": "image_folder", "root": images}, teacher)
    s = extract(tmp_path / "p.zarr", {"kind": "parquet", "root": str(tmp_path / "data" / "train.parquet"),
                                      "path_column": "file", "id_column": "key"}, teacher,
                max_invalid_fraction=0.2)
    f, p = FeatureCache.open(str(tmp_path / "f.zarr")), FeatureCache.open(s.path)
    assert s.complete and s.rows == 9 and s.valid_rows == 8
    assert list(p.sample_ids[:8]) == list(f.sample_ids) and not p.valid[8]
    np.testing.assert_array_equal(f.load("effnet"), p.load("effnet")[:8])
    np.testing.assert_array_equal(f.labels, p.labels[:8])
    log = open(s.invalid_log).read()
    missing = os.path.join(str(tmp_path / "data"), "images/class1/gone.png")
    assert log.startswith(f"class1/gone.png\t{missing}: cannot read (No such file or directory)"), log


def test_stage2_refuses_a_parquet_store_whose_file_is_gone_in_one_line(tmp_path, timm_ckpt, capsys):
    from featcache.cache_tools.cli import main as cache_main
    from featcache.pipeline.cli import main as extract_main
    images = make_images(tmp_path / "images", classes=2, per_class=2)
    pq_path = make_parquet(images, tmp_path / "train.parquet")
    cfg = write_extract_config(tmp_path / "p.toml", tmp_path / "p.zarr", {"kind": "parquet", "root": pq_path},
                               [timm_teacher(timm_ckpt)])
    assert extract_main([cfg, "--index-only"]) == 0
    os.remove(pq_path)
    capsys.readouterr()
    assert cache_main(["inputs", str(tmp_path / "p.zarr"), "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{pq_path}: Parquet file or folder not found; stage 2 needs the Parquet " \
        "files, or the student inputs cached in the store (featcache-cache inputs)" in err, err
    # at extraction the same file missing is the plain line (no stage-2 hint)
    assert extract_main([cfg, "--index-only", "--set", "output.overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Parquet file or folder not found" in err and "stage 2" not in err, err


def test_arrow_files_behind_a_url_exit_2_in_one_line(tmp_path, timm_ckpt, capsys):
    import fsspec
    from featcache.pipeline.cli import main as extract_main
    images = make_images(tmp_path / "images", classes=1, per_class=2)
    table = pa.table({"image": [d for *_, d in _folder_files(images)], "label": [0, 0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    fsspec.filesystem("memory").pipe("/ds-arrow/train/data-00000-of-00001.arrow", sink.getvalue().to_pybytes())
    cfg = write_extract_config(tmp_path / "a.toml", tmp_path / "a.zarr",
                               {"kind": "parquet", "root": "memory://ds-arrow/train"}, [timm_teacher(timm_ckpt)])
    assert extract_main([cfg, "--index-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data-00000-of-00001.arrow: save_to_disk .arrow files are read memory-mapped " \
        "from a local disk; copy them there, or export Parquet (Dataset.to_parquet)" in err, err
    assert "internal error" not in err and "cannot read Parquet" not in err and not os.path.exists(tmp_path / "a.zarr")
