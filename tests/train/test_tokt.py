"""The three TOKT steps end to end on tiny data, through the commands a user runs."""

import json
import os
import subprocess
import sys

import numpy as np

from featcache.cache_tools import FeatureCache


def _cache_cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "featcache-cache")
    res = subprocess.run([exe, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_subset_retrieve_tokt_and_compare(synth, tmp_path):
    pool, test = synth
    labeled = str(tmp_path / "labeled.zarr")
    out = _cache_cli("subset", pool, "--labels-per-class", "10", "--out", labeled)
    assert "40 labeled rows" in out
    transfer, rand = str(tmp_path / "transfer.zarr"), str(tmp_path / "random.zarr")
    out = _cache_cli("retrieve", "--queries", labeled, "--pool", pool, "--teacher", "oracle", "--per-query", "8",
                     "--out", transfer)
    assert "320 transfer rows" in out
    _cache_cli("retrieve", "--queries", labeled, "--pool", pool, "--teacher", "oracle", "--per-query", "8",
               "--random", "--out", rand)
    lab, tr = FeatureCache.open(labeled), FeatureCache.open(transfer)
    assert not set(lab.sample_ids) & set(tr.sample_ids)  # queries never in their own transfer set
    assert (tr.labels == -1).all() and tr.split == "transfer"
    # retrieved rows share their query's class far more often than chance (1/4): the oracle teacher knows it
    src_labels = FeatureCache.open(pool).labels
    manifest = [json.loads(x) for x in open(transfer + ".manifest.jsonl")]
    lab_ids = list(lab.sample_ids)
    agree = np.mean([src_labels[r] == lab.labels[lab_ids.index(m["query_id"])]
                     for m in manifest for r in m["pool_rows"]])
    assert agree > 0.6, agree

    cfg = tmp_path / "tokt.toml"
    cfg.write_text(f"""
out_dir = {str(tmp_path / 'runs')!r}
[data]
store = {labeled!r}
test_store = {test!r}
val_fraction = 0.2
[student]
image_size = 28
width = 32
[optim]
epochs = 3
batch_size = 16
[tokt]
teacher = "oracle"
transfer_store = {transfer!r}
random_transfer_store = {rand!r}
pretrain_epochs = 2
seeds = [0]
""")
    exe = os.path.join(os.path.dirname(sys.executable), "featcache-train")
    res = subprocess.run([exe, "tokt", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "tokt: test accuracy" in res.stdout
    for step in ("pretrain", "finetune"):
        assert os.path.exists(tmp_path / "runs" / step / "results.json")
    assert os.path.exists(tmp_path / "runs" / "head.pt")
    tr = FeatureCache.open(transfer)
    logits = [t for t in tr.teachers if t.startswith("oracle.logits_")]
    assert len(logits) == 1 and tr.teacher_info(logits[0])["dim"] == 10 and tr.is_complete
    res = subprocess.run([exe, "tokt", str(cfg), "--compare", "--set", f"out_dir={str(tmp_path / 'cmp')!r}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())["table"]
    assert {r["method"] for r in table} == {"stl", "aft", "task_agnostic", "tokt_random", "tokt"}
    assert all(r["seeds"] == 1 for r in table)
    assert "| tokt |" in (tmp_path / "cmp" / "compare.md").read_text()
    # the same table from the runs directory alone
    res = subprocess.run([exe, "compare", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert res.returncode == 0 and "| task_agnostic |" in res.stdout, res.stderr[-2000:]


def test_tokt_with_cached_finetuned_teacher_logits(synth, tmp_path):
    """tokt.logits_teacher: step 2 distils logits a stage-1 job cached (featcache-extract finetune)."""
    from featcache.plumbing.config import load_config
    from featcache.cache_tools.retrieve import labeled_subset, random_transfer, write_subset_store, write_transfer_store
    from featcache.train.tokt import ToktConfig, run_tokt
    pool_path, test = synth
    pool = FeatureCache.open(pool_path)
    labeled = write_subset_store(str(tmp_path / "lab.zarr"), pool, labeled_subset(pool, 10), keep_labels=True,
                                 split="train")
    chosen = random_transfer(labeled, pool, 200, seed=0)
    transfer = write_transfer_store(str(tmp_path / "tr.zarr"), pool, chosen, {"random": True})
    transfer.close()
    t = FeatureCache.open(str(tmp_path / "tr.zarr"), mode="r+")
    t.add_teacher("oracle.finetuned", 10, {"output": "task logits of a fine-tuned teacher"}, dtype="float32")
    logits = 5.0 * np.eye(10, dtype=np.float32)[pool.labels[chosen.rows]]
    for p in range(t.num_partitions):
        a, b = t.partition_range(p)
        t.write_partition(p, features={"oracle.finetuned": logits[a:b]})
    t.close()
    cfg = load_config(ToktConfig, data={
        "out_dir": str(tmp_path / "run"), "data": {"store": labeled.path, "test_store": test},
        "student": {"image_size": 28, "width": 32}, "optim": {"epochs": 2, "batch_size": 16},
        "tokt": {"teacher": "oracle", "transfer_store": str(tmp_path / "tr.zarr"), "pretrain_epochs": 2,
                 "logits_teacher": "oracle.finetuned"}})
    res = run_tokt(cfg, log=lambda _m: None)
    pre = json.loads((tmp_path / "run" / "pretrain" / "results.json").read_text())
    assert pre["config"]["data"]["teachers"] == ["oracle.finetuned"] and pre["method"] == "distill_logits"
    assert not (tmp_path / "run" / "head.pt").exists() and res["variant"] == "tokt"
