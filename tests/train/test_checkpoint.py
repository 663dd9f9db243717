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


def _train_cli(config, *args):
    exe = os.path.join(os.path.dirname(sys.executable), "featcache-train")
    return subprocess.run([exe, str(config), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_resume_from_another_students_checkpoint_is_one_line_exit_1(synth, tmp_path):
    """checkpoint.pt copied in from a run of a wider student: a data problem (exit 1) naming the
    file and the tensors that do not fit, not torch's RuntimeError as an internal bug (exit 3)."""
    from train_helpers import write_config

    train, test = synth
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    config = write_config(tmp_path / "narrow.toml", train, test, str(narrow), epochs=1, batch_size=64, width=16)
    run(cfg_for(train, test, narrow, epochs=1, student={"width": 16}, method="stl"), log=quiet)
    run(cfg_for(train, test, wide, epochs=1, student={"width": 32}, method="stl"), log=quiet)
    os.replace(wide / "checkpoint.pt", narrow / "checkpoint.pt")
    res = _train_cli(config, "--resume", "--set", "method.name=stl")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    (line,) = [ln for ln in res.stderr.splitlines() if not ln.startswith("featcache-train: warning:")]
    assert line.startswith("featcache-train: error:") and str(narrow / "checkpoint.pt") in line
    assert "learner state does not fit this model" in line and "of another shape" in line
    assert "in the file" in line and "without --resume" in line


def test_a_probe_of_another_shape_is_one_line_exit_1(synth, tmp_path):
    """A run dir reused with other teacher features: its probe.pt no longer fits (exit 1, one line)."""
    from train_helpers import write_config

    train, test = synth
    out = tmp_path / "run"
    out.mkdir()
    lin = torch.nn.Linear(7, 3)  # the store: 48 teacher features, 10 classes (Fashion-MNIST names)
    torch.save(lin.state_dict(), out / "probe.pt")
    config = write_config(tmp_path / "kd.toml", train, test, str(out), epochs=1, batch_size=64, width=16)
    res = _train_cli(config, "--set", "method.name=kd_pred")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout and res.stderr.count("\n") == 1
    assert str(out / "probe.pt") in res.stderr and "teacher probe does not fit this model" in res.stderr
    assert "weight [3, 7] in the file, [10, 48] here" in res.stderr and "delete it" in res.stderr


def test_load_into_refuses_tensors_of_another_model_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)).state_dict()
    with pytest.raises(checkpoint.CheckpointError, match=r"^w.pt: the probe does not fit this model: 3 of another "
                                                         r"shape \(0.bias \[5\] in the file, \[4\] here, .*\); hint$"):
        checkpoint.load_into(model, other, "w.pt", "probe", "hint")
    with pytest.raises(checkpoint.CheckpointError, match="holds a list"):
        checkpoint.load_into(model, [1, 2], "w.pt", "probe")
    with pytest.raises(checkpoint.CheckpointError, match="does not load"):
        checkpoint.load_into(model, {**model.state_dict(), "0.bias": 1.0}, "w.pt", "probe")
    good = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    checkpoint.load_into(model, good, "w.pt", "probe")
    assert float(model[1].bias.detach()[0]) == 0.5
