"""Checkpoints: tensors loaded with weights_only=True, config and history as JSON beside them,
a pickled-code checkpoint refused, a half-written pair never taken as complete."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from featcache.train import checkpoint
from featcache.train.loop import run

from test_loop import cfg_for, quiet  # noqa: E402  (tests/train/)


class CreatesAFile:
    """Unpickling this calls open(path, "w"): the file appearing means the checkpoint ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _state(epoch: int) -> dict:
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters())
    return {"learner": lin.state_dict(), "optimizer": opt.state_dict(), "scheduler": {"last_epoch": epoch},
            "epoch": epoch, "history": [{"epoch": e + 1, "loss": 1.0 / (e + 1)} for e in range(epoch)],
            "config": {"seed": 0, "optim": {"epochs": 5}}}


def test_pair_round_trip_tensors_only(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save(path, **_state(3))
    raw = torch.load(path, weights_only=True)
    assert "config" not in raw and "history" not in raw and raw["epoch"] == 3
    doc = json.loads((tmp_path / "checkpoint.json").read_text())
    assert doc["epoch"] == 3 and len(doc["history"]) == 3 and doc["config"]["seed"] == 0
    back = checkpoint.load(path)
    assert set(back) == set(checkpoint.KEYS) and back["epoch"] == 3 and back["history"] == _state(3)["history"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", "checkpoint.pt"]


def test_json_ahead_of_tensors_is_cut_back(tmp_path):
    """Killed between the two writes: epoch 4's JSON beside epoch 3's tensors -> epoch 3, whole."""
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save(path, **_state(3))
    four = _state(4)
    from featcache.plumbing import atomic

    atomic.write_json(checkpoint.json_path(path), {"format": 2, "epoch": 4, "history": four["history"],
                                                   "config": four["config"]})
    back = checkpoint.load(path)
    assert back["epoch"] == 3 and back["history"] == _state(3)["history"]


@pytest.mark.parametrize("damage", ["json_behind", "json_missing", "json_garbage", "tensors_truncated"])
def test_incomplete_pair_refused(tmp_path, damage):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save(path, **_state(3))
    if damage == "json_behind":
        checkpoint.save(str(tmp_path / "other.pt"), **_state(2))
        os.replace(tmp_path / "other.json", tmp_path / "checkpoint.json")
    elif damage == "json_missing":
        os.remove(tmp_path / "checkpoint.json")
    elif damage == "json_garbage":
        (tmp_path / "checkpoint.json").write_text('{"epoch": 3, "hist')
    else:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path)


@pytest.mark.parametrize("form", ["pickle", "torch_save"])
def test_malicious_pickle_refused_and_never_run(tmp_path, form):
    marker = tmp_path / "pwned"
    evil = {"learner": CreatesAFile(str(marker)), "optimizer": {}, "scheduler": {}, "epoch": 1}
    out = tmp_path / "run"
    out.mkdir()
    if form == "pickle":
        blob = pickle.dumps(evil)
    else:
        buf = io.BytesIO()
        torch.save(evil, buf)
        blob = buf.getvalue()
    (out / "checkpoint.pt").write_bytes(blob)
    checkpoint.save(str(tmp_path / "x.pt"), **_state(1))
    os.replace(tmp_path / "x.json", out / "checkpoint.json")
    with pytest.raises(checkpoint.CheckpointError, match="pickled"):
        checkpoint.load(str(out / "checkpoint.pt"))
    assert not marker.exists()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'out_dir = {str(out)!r}\n[data]\nstore = "nowhere.zarr"\n')
    exe = os.path.join(os.path.dirname(sys.executable), "featcache-train")
    res = subprocess.run([exe, str(cfg), "--resume"], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert "refused" in res.stderr and "pickled" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1
    assert not marker.exists()


def test_killed_between_json_and_tensors_resumes_like_uninterrupted(synth, tmp_path, monkeypatch):
    """The run dies after writing epoch 3's JSON but before its tensors: resume redoes epoch 3."""
    train, test = synth
    full = run(cfg_for(train, test, tmp_path / "full", epochs=4), log=quiet)
    part = tmp_path / "part"
    from featcache.plumbing import atomic

    real, writes = atomic.write_with, []

    def die_on_third_tensors(path, writer):
        if os.path.basename(path) == "checkpoint.pt":
            writes.append(path)
            if len(writes) == 3:
                raise KeyboardInterrupt
        real(path, writer)

    monkeypatch.setattr(atomic, "write_with", die_on_third_tensors)
    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(train, test, part, epochs=4), log=quiet)
    monkeypatch.setattr(atomic, "write_with", real)
    assert json.loads((part / "checkpoint.json").read_text())["epoch"] == 3
    assert torch.load(part / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = run(cfg_for(train, test, part, epochs=4), resume=True, log=quiet)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert resumed["final_losses"] == full["final_losses"]
    assert [r["epoch"] for r in json.loads((part / "checkpoint.json").read_text())["history"]] == [1, 2, 3, 4]
