"""No damage passes `verify` silently: one-byte flips in every metadata document and in data rows."""

import contextlib
import glob
import io
import json
import os
import string
import subprocess
import sys
import tarfile

import h5py
import numpy as np
import pytest

from featcache.cache_tools import FeatureCache, verify
from featcache.cache_tools.cache import INDEX_PART
from featcache.cache_tools.cli import main
from featcache.cache_tools.inputs import image_spec
from featcache.rawdata.webdataset_shards import webdataset

PRINTABLE = (string.ascii_letters + string.digits + string.punctuation + " ").encode()


INPUTS = "image8_bilinear"


def pet_shards(folder) -> str:
    """Two tiny WebDataset shards of 20 samples each (<key>.png + <key>.cls); the image bytes are
    never decoded here, only the headers walked."""
    os.makedirs(folder)
    for s in range(2):
        with tarfile.open(os.path.join(folder, f"pets-{s:06d}.tar"), "w") as tar:
            for i in range(20 * s, 20 * s + 20):
                for ext, data in (("png", b"\x89PNG%03d" % i), ("cls", b"%d" % (i % 2))):
                    info = tarfile.TarInfo(f"{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return os.path.join(folder, "pets-{000000..000001}.tar")


@pytest.fixture
def small_store(tmp_path, fill):
    """40 rows from two WebDataset shards (so the store keeps the shard index), two teachers,
    two views, and a set of cached student inputs: every kind of document a store holds."""
    path = str(tmp_path / "s.zarr")
    source = webdataset(pet_shards(tmp_path / "shards"))
    cache = FeatureCache.create(path, sample_ids=source.sample_ids, labels=source.labels, views=2,
                                view_param_names=["x0", "y0"], partition_rows=16, split="train",
                                source=source.describe(), source_index=source.reopen_index)
    fill(cache, teachers={"clip": 8, "vit": 4})
    cache.add_inputs(INPUTS, {"pixels": ((2, 8, 8, 3), "uint8")}, image_spec(8))
    pixels = np.random.default_rng(3).integers(0, 256, (cache.rows, 2, 8, 8, 3), dtype=np.uint8)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_inputs_partition(p, INPUTS, {"pixels": pixels[a:b]})
    assert cache.source_index_doc()["shards"] == 2 and cache.inputs == [INPUTS]
    cache.close()
    return path


def documents(path):
    """Every metadata document of a Zarr store: zarr.json of each group and array, the markers
    (groups under _partitions) included, and the markers of a store written before (<key>.json)."""
    return sorted(glob.glob(os.path.join(path, "**", "*.json"), recursive=True))


def marker_file(path, key):
    """The file of one done marker of a Zarr store: a group of its own (attributes: the marker)."""
    return os.path.join(path, "_partitions", key, "zarr.json")


def to_legacy_markers(path):
    """The store as featcache wrote it before markers were Zarr groups: each marker a plain
    _partitions/<key>.json document, and no group documents under _partitions."""
    for doc in sorted(glob.glob(os.path.join(path, "_partitions", "**", "zarr.json"), recursive=True), reverse=True):
        folder = os.path.dirname(doc)
        attrs = json.load(open(doc))["attributes"]
        os.remove(doc)
        if attrs:
            json.dump(attrs, open(folder + ".json", "w"), sort_keys=True)
            os.rmdir(folder)


def run_verify(path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["verify", path])
    return rc, out.getvalue(), err.getvalue()


def flips(data: bytes, rng, count: int, semantic: bool):
    """(position, new byte) pairs; for JSON, only flips that change what the document says
    (a space for a tab is the same document)."""
    found = []
    while len(found) < count:
        pos = int(rng.integers(len(data)))
        new = PRINTABLE[int(rng.integers(len(PRINTABLE)))]
        if new == data[pos]:
            continue
        changed = data[:pos] + bytes([new]) + data[pos + 1:]
        if semantic:
            try:
                if json.loads(changed) == json.loads(data):
                    continue
            except ValueError:
                pass
        found.append((pos, new))
    return found


def test_every_flip_in_every_metadata_document_is_reported(small_store):
    assert run_verify(small_store)[0] == 0
    rng = np.random.default_rng(12)
    docs = documents(small_store)
    names = {os.path.relpath(d, small_store) for d in docs}
    assert {"zarr.json", "teachers/clip/zarr.json", "index/valid/zarr.json", "index/sample_id/zarr.json",
            "_partitions/_index/000000/zarr.json", "_partitions/clip/000002/zarr.json", "source/zarr.json",
            "inputs/zarr.json", f"inputs/{INPUTS}/zarr.json", f"inputs/{INPUTS}/pixels/zarr.json",
            f"_partitions/inputs/{INPUTS}/000001/zarr.json", "_partitions/zarr.json", "_partitions/clip/zarr.json",
            f"_partitions/inputs/{INPUTS}/zarr.json"} <= names
    assert any(n.startswith("source/index-") and n.endswith("/zarr.json") for n in names)
    missed = []
    for doc in docs:
        original = open(doc, "rb").read()
        for pos, new in flips(original, rng, 2, semantic=True):
            with open(doc, "wb") as fh:
                fh.write(original[:pos] + bytes([new]) + original[pos + 1:])
            rc, out, err = run_verify(small_store)
            bad = [line for line in out.splitlines() if line.startswith("BAD")]
            if rc != 1 or len(bad) != 1 or "Traceback" in out + err or "internal error" in err:
                missed.append(f"{os.path.relpath(doc, small_store)} byte {pos} -> {chr(new)!r}: rc {rc} {out} {err}")
        with open(doc, "wb") as fh:
            fh.write(original)
    assert not missed, "\n".join(missed)
    assert run_verify(small_store)[0] == 0


def test_a_source_group_document_that_no_longer_decodes_is_one_problem(small_store):
    """The source index is read through the source group's document: when that document is
    damaged so that zarr cannot decode it, verify reports it once, not again as an unreadable index
    (seen in a fuzzing run: a flip inside "node_type")."""
    doc = os.path.join(small_store, "source", "zarr.json")
    original = open(doc, "rb").read()
    assert b'"node_type"' in original
    with open(doc, "wb") as fh:
        fh.write(original.replace(b'"node_type"', b'"node`type"', 1))
    rc, out, err = run_verify(small_store)
    assert rc == 1 and [line for line in out.splitlines() if line.startswith("BAD")] == [
        line for line in out.splitlines() if line.startswith("BAD source:")], out
    assert len([line for line in out.splitlines() if line.startswith("BAD")]) == 1, out


def test_every_flip_in_data_rows_is_reported(small_store):
    rng = np.random.default_rng(5)
    cache = FeatureCache.open(small_store)
    missed, tried = [], 0
    shard_index = cache.source_index_doc()["node"]
    for node in ("index/sample_id", "index/label", "index/valid", "views/params", "teachers/clip/features",
                 "teachers/vit/features", f"inputs/{INPUTS}/pixels", shard_index):
        meta = cache.store.array_meta(node)
        for chunk in sorted(glob.glob(os.path.join(small_store, node, "c", "**", "*"), recursive=True)):
            if os.path.isdir(chunk):
                continue
            first = int(os.path.relpath(chunk, os.path.join(small_store, node, "c")).split(os.sep)[0])
            rows_in = min(meta.chunk_rows, meta.shape[0] - first * meta.chunk_rows)
            original = open(chunk, "rb").read()
            size = len(original) if meta.row_bytes == 0 else rows_in * meta.row_bytes  # not the padding
            for _ in range(2):
                pos = int(rng.integers(size))
                with open(chunk, "wb") as fh:
                    fh.write(original[:pos] + bytes([original[pos] ^ int(rng.integers(1, 256))]) + original[pos + 1:])
                rc, out, err = run_verify(small_store)
                tried += 1
                bad = [line for line in out.splitlines() if line.startswith("BAD")]
                if rc != 1 or len(bad) != 1 or "Traceback" in out + err or "internal error" in err:
                    missed.append(f"{node} {os.path.basename(chunk)} byte {pos}: rc {rc} {out} {err}")
            with open(chunk, "wb") as fh:
                fh.write(original)
    cache.close()
    assert tried >= 28 and not missed, "\n".join(missed)


def test_verify_cli_exit_code_without_traceback(small_store):
    exe = os.path.join(os.path.dirname(sys.executable), "featcache-cache")
    marker = marker_file(small_store, "clip/000001")
    doc = json.load(open(marker))
    doc["attributes"]["nan"] = 3  # what a flip in a NaN count does
    json.dump(doc, open(marker, "w"))
    root = os.path.join(small_store, "zarr.json")
    text = open(root).read()
    assert "pets-{000000..000001}.tar" in text
    open(root, "w").write(text.replace("pets-{000000..000001}.tar", "pats-{000000..000001}.tar"))
    res = subprocess.run([exe, "verify", small_store], capture_output=True, text=True)
    bad = [line for line in res.stdout.splitlines() if line.startswith("BAD")]
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr and len(bad) == 2
    assert bad[0].startswith("BAD /: metadata document changed since it was written")
    assert bad[1].startswith("BAD marker clip/000001: document changed since it was written")


def test_old_store_without_checksums_reads_and_verify_says_so(small_store):
    """Stores from before document checksums (and before markers were Zarr groups): still open,
    still verify by their data, with a note."""
    to_legacy_markers(small_store)
    for doc in documents(small_store):
        data = json.load(open(doc))
        if "_partitions" in doc:
            data.pop("doc_checksum", None)
            data.pop("written_at", None)
        else:
            data.get("attributes", {}).pop("doc_checksum", None)
            data.get("attributes", {}).get("featcache", {}).pop("doc_checksums", None)
        json.dump(data, open(doc, "w"))
    rc, out, _ = run_verify(small_store)
    assert rc == 0 and "NOTE" in out and "predate document checksums" in out
    # their fields are still checked against the rows: a marker's part, rows and NaN count
    marker = os.path.join(small_store, "_partitions", "vit", "000002.json")
    doc = json.load(open(marker))
    json.dump({**doc, "nan": 1}, open(marker, "w"))
    rc, out, _ = run_verify(small_store)
    assert rc == 1 and "BAD vit partition 2: marker records {'nan': 1, 'inf': 0}" in out
    json.dump({**doc, "part": "clip"}, open(marker, "w"))
    rc, out, _ = run_verify(small_store)
    assert rc == 1 and "BAD marker vit/000002: says part 'clip'" in out
    # and a teacher's fingerprint is recomputed from its recorded spec
    json.dump(doc, open(marker, "w"))
    teacher = os.path.join(small_store, "teachers", "vit", "zarr.json")
    data = json.load(open(teacher))
    data["attributes"]["featcache_teacher"]["spec"]["model_id"] = "vit-other"
    json.dump(data, open(teacher, "w"))
    rc, out, _ = run_verify(small_store)
    assert rc == 1 and "BAD teachers/vit: fingerprint" in out and "is not the hash of its recorded spec" in out


def test_hdf5_documents_carry_checksums(small_store, tmp_path):
    h5 = str(tmp_path / "s.h5")
    assert main(["convert", small_store, h5]) == 0
    with FeatureCache.open(h5) as cache, FeatureCache.open(small_store) as zarr_cache:
        assert verify(cache).ok and cache.has_doc_checksums
        assert cache.inputs == [INPUTS] and cache.inputs_done(INPUTS) == {0, 1, 2}  # convert copies them
        np.testing.assert_array_equal(cache.load_inputs(INPUTS, "pixels"), zarr_cache.load_inputs(INPUTS, "pixels"))
        assert cache.source_index() == zarr_cache.source_index() is not None
    with h5py.File(h5, "r+") as f:
        meta = json.loads(f.attrs["featcache"])
        meta["source"]["root"] = "/elsewhere/pets-{000000..000001}.tar"
        f.attrs["featcache"] = json.dumps(meta)
        spec = json.loads(f["teachers/clip"].attrs["featcache_teacher"])
        spec["dim"] = 9
        f["teachers/clip"].attrs["featcache_teacher"] = json.dumps(spec)
        marker = json.loads(f[f"_partitions/{INDEX_PART}/000001"][()])
        f[f"_partitions/{INDEX_PART}/000001"][()] = json.dumps({**marker, "invalid": 0})
    rc, out, _ = run_verify(h5)
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert rc == 1 and any(line.startswith("BAD /: metadata document changed") for line in bad)
    assert any(line.startswith("BAD teachers/clip: metadata document changed") for line in bad)
    assert any(line.startswith(f"BAD marker {INDEX_PART}/000001: document changed") for line in bad)


@pytest.mark.parametrize("key, label", [(f"{INDEX_PART}/000001", "index"), ("clip/000001", "clip"),
                                        (f"inputs/{INPUTS}/000001", f"inputs/{INPUTS}")])
def test_convert_of_a_damaged_marker_gives_a_copy_that_says_what_is_missing(small_store, tmp_path, key, label):
    """A marker that fails the trust rule counts as not done, in the source and in its copy: the
    partition is not copied, so the copy is never complete where the source is not; convert says so
    (not 'verified equal'), and `info`/`verify` on the copy name the missing partition."""
    marker = marker_file(small_store, key)
    doc = json.load(open(marker))
    doc["attributes"]["rows"] -= 1  # one damaged field: the document no longer matches its checksum
    json.dump(doc, open(marker, "w"))
    dst = str(tmp_path / "copy.h5")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["convert", small_store, dst]) == 0
    part = INDEX_PART if label == "index" else label
    with FeatureCache.open(dst) as copy:
        info = copy.info()
        done = copy.inputs_done(INPUTS) if label.startswith("inputs/") else copy.done_partitions()[part]
        assert done == {0, 2}
        report = verify(copy)
    if label.startswith("inputs/"):  # cached inputs are optional: the store is complete without them
        assert info["complete"] and info["inputs"][INPUTS]["partitions_done"] == 2
        assert report.ok and f"{label}: 2 of 3 partitions written" in " ".join(report.notes)
        return
    assert not info["complete"] and "NOT complete" in out.getvalue() and f"{part}: 1 of 3" in out.getvalue()
    assert "verified equal" not in out.getvalue().split("NOT complete")[0]
    assert report.problems == [f"{label} partition 1: missing (no done marker)"]
