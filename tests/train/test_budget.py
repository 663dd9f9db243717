"""A budget of optimiser steps (as the official AFT code counts), AFT's learned feature weights
and what each evaluation says about them, and BatchNorm statistics recomputed before scoring."""

import json

import numpy as np
import pytest
import torch

from featcache.plumbing.config import ConfigError, load_config
from featcache.train.config import TrainConfig
from featcache.train.batches import endless_pairs
from featcache.train.evaluation import val_trend
from featcache.train.loop import run
from featcache.train.methods.aft import AFTMethod

from train_helpers import build_store  # noqa: E402


@pytest.fixture(scope="module")
def half_noise(tmp_path_factory):
    """The synthetic task whose teacher has 48 label-carrying dimensions, then 48 of pure noise."""
    d = tmp_path_factory.mktemp("half_noise")
    return (build_store(str(d / "train.zarr"), str(d / "raw"), "train", 600, 0, noise_dims=48),
            build_store(str(d / "test.zarr"), str(d / "raw"), "test", 200, 1, noise_dims=48))


def _cfg(stores, out, **optim):
    train, test = stores
    return load_config(TrainConfig, data={
        "out_dir": str(out), "data": {"store": train, "test_store": test, "label_budget": 25},
        "student": {"name": "small_cnn", "image_size": 28, "width": 32},
        "method": {"name": "aft", "beta": 10.0}, "optim": {"batch_size": 32, "lr": 3e-3, **optim}})


def test_aft_weights_separate_signal_from_noise(half_noise, tmp_path):
    """Measured here: mean rho 0.62 on the label-carrying half, 0.30 on the noise half (300 steps;
    the weights' lr raised from 1e-2 to 10 / 300 by prior_travel)."""
    res = run(_cfg(half_noise, tmp_path, steps=300), log=lambda _m: None)
    s = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["learner"]["method.s"]
    rho = torch.sigmoid(s)
    signal, noise = float(rho[:48].mean()), float(rho[48:].mean())
    assert noise < signal - 0.2, (signal, noise)
    assert res["steps"] == 300 and res["diagnostics"]["max_abs_s"] > 1.5
    history = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in history] == list(range(30, 301, 30))
    assert all({"rho_below_0.1", "rho_above_0.9", "max_abs_s"} <= set(r) for r in history)
    assert set(res["val_trend"]) >= {"rising", "slope_per_1k_steps"}


def test_short_budgets_raise_the_weights_learning_rate_so_they_can_move():
    aft = AFTMethod()
    assert aft.weights_lr(5000) == 1e-2  # the official recipe: 1e-2 x 5,000 steps, left alone
    assert aft.weights_lr(100) == pytest.approx(0.1)  # travel 10 over 100 steps
    assert AFTMethod(prior_travel=0).weights_lr(100) == 1e-2


def test_a_labeled_set_smaller_than_a_batch_is_drawn_again(half_noise, tmp_path):
    """8 labeled rows, batches of 32, 20 steps: without a budget of steps there is no full batch."""
    base = _as_dict(_cfg(half_noise, tmp_path / "epochs", epochs=1))
    small = load_config(TrainConfig, data={**base, "data": {**base["data"], "label_budget": 2}})
    with pytest.raises(ConfigError, match="optim.steps"):
        run(small, log=lambda _m: None)
    stepped = load_config(TrainConfig, data={**_as_dict(small), "out_dir": str(tmp_path / "steps"),
                                             "optim": {**_as_dict(small)["optim"], "steps": 20, "eval_every": 10}})
    res = run(stepped, log=lambda _m: None)
    assert res["steps"] == 20 and res["epochs"] == 2 and res["train_rows"] == 8


def test_endless_batches_run_across_shuffles():
    rows = np.arange(10)
    batches = endless_pairs(None, rows, 4, np.random.default_rng(0))
    drawn = np.concatenate([next(batches)[0] for _ in range(5)])  # 20 rows: two whole shuffles
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))


def test_recomputed_batchnorm_statistics(half_noise, tmp_path):
    base = _as_dict(_cfg(half_noise, tmp_path, steps=10, eval_every=5))
    cfg = load_config(TrainConfig, data={**base, "student": {**base["student"], "bn_stats": "recompute"}})
    res = run(cfg, log=lambda _m: None)
    assert res["bn_stats"] == "recompute" and res["test_accuracy"] is not None


def test_val_trend_reads_the_last_fifth():
    rising = [{"epoch": i, "step": 10 * i, "val_accuracy": 0.1 * i} for i in range(1, 11)]
    flat = [{"epoch": i, "step": 10 * i, "val_accuracy": min(0.5, 0.1 * i)} for i in range(1, 11)]
    assert val_trend(rising)["rising"] is True and val_trend(flat)["rising"] is False


def _as_dict(cfg):
    from featcache.plumbing.config import to_dict
    return to_dict(cfg)
