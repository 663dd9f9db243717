"""Hostile inputs made here: each run completes, those rows invalid with reasons naming the file."""

import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import BmpImagePlugin, Image

from featcache.cache_tools import FeatureCache, verify
from featcache.rawdata import InputError, manifest

from extract_helpers import extract, extract_index, make_images, timm_teacher, write_extract_config  # noqa: E402


def bomb_png(width=20000, height=20000) -> bytes:
    """A ~70-byte PNG that declares width x height pixels (1-bit grey, no data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


class PluginSurprise(Exception):
    """Not an error type any decoder is expected to raise."""


def invalid_reasons(store, log):
    with FeatureCache.open(store) as cache:
        assert cache.is_complete and verify(cache).ok
        ids = cache.sample_ids.tolist()
        bad = {ids[i] for i in np.flatnonzero(~cache.valid)}
    lines = dict(line.rstrip("\n").split("\t", 1) for line in open(log))
    assert set(lines) == bad
    return lines


def test_bomb_and_surprising_decoder_are_invalid_rows(tmp_path, timm_ckpt, monkeypatch):
    root = make_images(tmp_path / "imgs", classes=2, per_class=6)
    (tmp_path / "imgs" / "class0" / "bomb.png").write_bytes(bomb_png())
    Image.new("RGB", (9, 7), "red").save(tmp_path / "imgs" / "class1" / "odd.bmp")

    def surprise(self):
        raise PluginSurprise("plugin blew up")
    monkeypatch.setattr(BmpImagePlugin.BmpImageFile, "_open", surprise)
    limit_before = Image.MAX_IMAGE_PIXELS
    s = extract(tmp_path / "s.zarr", {"kind": "image_folder", "root": root}, [timm_teacher(timm_ckpt)],
                max_invalid_fraction=0.5)
    assert s.complete and s.rows == 14 and s.valid_rows == 12
    reasons = invalid_reasons(s.path, s.invalid_log)
    bomb, odd = reasons["class0/bomb.png"], reasons["class1/odd.bmp"]
    assert bomb.startswith(os.path.join(root, "class0", "bomb.png")) and "DecompressionBombError" in bomb
    assert odd.startswith(os.path.join(root, "class1", "odd.bmp")) and "PluginSurprise: plugin blew up" in odd
    assert " at 0x" not in bomb + odd and Image.MAX_IMAGE_PIXELS == limit_before


def test_pixel_limit_option_is_per_source_and_leaves_pil_alone(tmp_path):
    from featcache.rawdata import image_folder, open_source
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"junk")
    src = image_folder(str(tmp_path), max_image_pixels=1000)
    with pytest.raises(InputError, match=r"a.png: 40 x 30 = 1200 pixels is over the limit of 1000"):
        src.load(0)
    with pytest.raises(InputError, match=r"b.png: cannot decode image \(UnidentifiedImageError: cannot identify "
                                         r"image file\)$"):
        src.load(1)
    again = open_source(src.describe())  # stage 2 reopens with the same limit
    with pytest.raises(InputError, match="over the limit of 1000"):
        again.load(0)
    assert "max_image_pixels" not in image_folder(str(tmp_path)).describe()  # old stores keep resuming
    big = image_folder(str(tmp_path), max_image_pixels=10**10)
    before = Image.MAX_IMAGE_PIXELS
    assert big.load(0).size == (40, 30) and Image.MAX_IMAGE_PIXELS == before


def test_non_utf8_rows_in_csv_and_jsonl_are_invalid_rows(tmp_path, timm_ckpt):
    make_images(tmp_path / "imgs", classes=1, per_class=4)
    good = sorted(os.listdir(tmp_path / "imgs" / "class0"))
    csv_bytes = b"path,label\n" + b"".join(f"imgs/class0/{f},cat\n".encode() for f in good[:2]) + \
        b"imgs/class0/caf\xe9.png,dog\n" + b"".join(f"imgs/class0/{f},dog\n".encode() for f in good[2:])
    (tmp_path / "m.csv").write_bytes(csv_bytes)
    s = extract(tmp_path / "csv.zarr", {"kind": "manifest", "path": str(tmp_path / "m.csv")},
                [timm_teacher(timm_ckpt)], max_invalid_fraction=0.5)
    assert s.complete and s.rows == 5 and s.valid_rows == 4
    reasons = invalid_reasons(s.path, s.invalid_log)
    assert reasons == {"m.csv:4": f"{tmp_path / 'm.csv'}:4: byte 0xe9 is not valid utf-8 text (fix the line, "
                                  "or set source.encoding if the file uses another)"}
    # the same file read as Latin-1: the row decodes (and its image is missing, which names the file)
    latin = manifest(str(tmp_path / "m.csv"), encoding="latin-1")
    assert latin.sample_ids[2] == "imgs/class0/caf\u00e9.png" and latin.describe()["encoding"] == "latin-1"
    with pytest.raises(InputError, match="caf\u00e9.png: cannot read"):
        latin.load(2)

    lines = [b'{"text": "first line", "label": 0}', b'{"text": "caf\xff au lait", "label": 1}',
             b'{"text": "broken', b'{"text": "last line", "label": 1}']
    (tmp_path / "t.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    src = manifest(str(tmp_path / "t.jsonl"))
    assert src.sample_ids == ["row00000000", "t.jsonl:2", "t.jsonl:3", "row00000003"]
    assert src.labels.tolist() == [0, -1, -1, 1] and src.load(3) == "last line"
    for i, why in ((1, "t.jsonl:2: byte 0xff is not valid utf-8 text"), (2, "t.jsonl:3: not valid JSON")):
        with pytest.raises(InputError, match=why):
            src.load(i)


def test_non_utf8_jsonl_row_in_a_text_extraction(tmp_path, hf_dirs):
    lines = [b'{"text": "a fine sentence", "label": 0}', b'{"text": "na\xefve bytes", "label": 1}',
             b'{"text": "another fine one", "label": 1}', b'{"text": "and a fourth", "label": 0}']
    (tmp_path / "t.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    teacher = {"name": "bert", "kind": "hf", "model": hf_dirs["bert"], "output": "mean", "max_length": 16}
    s = extract(tmp_path / "t.zarr", {"kind": "manifest", "path": str(tmp_path / "t.jsonl")}, [teacher],
                max_invalid_fraction=0.5)
    assert s.complete and s.valid_rows == 3
    reasons = invalid_reasons(s.path, s.invalid_log)
    assert list(reasons) == ["t.jsonl:2"] and reasons["t.jsonl:2"].startswith(f"{tmp_path / 't.jsonl'}:2: byte 0xef")


def test_the_invalid_log_is_in_row_order(tmp_path):
    """Twelve broken manifest lines (ids m.jsonl:1 ... m.jsonl:12): the log lists them as the rows
    come, m.jsonl:2 before m.jsonl:10, not in the order of their ids as strings."""
    make_images(tmp_path / "imgs", classes=1, per_class=1)
    lines = [b'{"path": "broken' for _ in range(12)] + [b'{"path": "imgs/class0/000.png"}']
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    s = extract_index(tmp_path / "s.zarr", {"kind": "manifest", "path": str(tmp_path / "m.jsonl")},
                      max_invalid_fraction=1.0)
    assert s.complete and (s.rows, s.valid_rows) == (13, 1)
    logged = [line.split("\t")[0] for line in open(s.invalid_log)]
    assert logged == [f"m.jsonl:{n}" for n in range(1, 13)]


def test_the_invalid_row_budget_holds_across_reruns(tmp_path, capsys):
    """40 of 40 inputs undecodable: the run stops (exit 1), and so does every rerun with the same
    budget, instead of 'resuming' to a store of 0 valid rows that info calls complete and verify
    OK; info, verify, ls and training say why. A rerun with a budget that allows the rows accepts them."""
    from featcache.cache_tools.cli import main as cache_main
    from featcache.pipeline.cli import main as extract_main
    from featcache.cache_tools import CacheError, convert, require_complete
    (tmp_path / "imgs" / "c0").mkdir(parents=True)
    for i in range(40):
        (tmp_path / "imgs" / "c0" / f"{i:02d}.png").write_bytes(b"not an image")
    store = str(tmp_path / "s.zarr")
    cfg = write_extract_config(tmp_path / "c.toml", store, {"kind": "image_folder", "root": str(tmp_path / "imgs")},
                               [timm_teacher("unused.pt")], output={"partition_rows": 64})  # never built
    stop = ("featcache-extract: error: 40 inputs failed to decode, more than max_invalid_fraction=0.05 of 40; "
            f"see {store}.invalid.log")
    for _ in range(2):
        assert extract_main([cfg, "--index-only"]) == 1
        assert capsys.readouterr().err.strip() == stop
    why = "40 of 40 inputs failed to decode, more than max_invalid_fraction=0.05 allows (2)"
    assert cache_main(["info", store]) == 0
    assert f"complete    NO ({why})" in capsys.readouterr().out
    assert cache_main(["verify", store]) == 1
    assert f"BAD index: {why}; the extraction stopped there" in capsys.readouterr().out
    assert cache_main(["ls", str(tmp_path)]) == 0 and "INCOMPLETE" in capsys.readouterr().out
    with FeatureCache.open(store) as cache:
        assert not cache.is_complete and cache.missing_partitions() == {}
        with pytest.raises(CacheError, match=re.escape(f"store is not complete: {why}")):
            require_complete(cache)
    with convert(store, str(tmp_path / "copy.h5")) as copy:  # the budget travels with the rows
        assert copy.budget_problem() == why and not copy.info()["complete"]
    assert extract_main([cfg, "--index-only", "--set", "max_invalid_fraction=1.0"]) == 0
    with FeatureCache.open(store) as cache:
        assert cache.is_complete and verify(cache).ok and cache.max_invalid_fraction == 1.0
