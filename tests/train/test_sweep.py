"""featcache-train sweep and compare: many runs on one cache, one table."""

import csv
import json
import os
import subprocess
import sys

import pytest

from featcache.plumbing.config import ConfigError
from featcache.train.sweep import parse_axis, plan, split_values  # noqa: F401

from train_helpers import write_config  # noqa: E402

EXE = os.path.join(os.path.dirname(sys.executable), "featcache-train")


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "sweep", *args], capture_output=True, text=True)


def tiny_runs(synth, tmp_path, epochs: int = 1):
    """(runs dir, config path): the small training TOML on the synthetic stores, a narrow CNN."""
    train, test = synth
    runs_dir = tmp_path / "runs"
    return runs_dir, write_config(tmp_path / "c.toml", train, test, str(runs_dir), epochs=epochs, batch_size=32,
                                  width=16)


def test_grid_parsing():
    assert split_values("a, b,[c,d],'e,f'") == ["a", "b", "[c,d]", "'e,f'"]
    a = parse_axis("method=stl,aft")
    assert (a.key, a.values, a.only_method) == ("method.name", ("stl", "aft"), "")
    b = parse_axis("aft.beta=1,10")
    assert (b.key, b.values, b.only_method) == ("method.beta", (1, 10), "aft")
    c = parse_axis("data.teachers=[t1],[t1,t2]")
    assert c.values == (["t1"], ["t1", "t2"])
    with pytest.raises(ConfigError):
        parse_axis("seed")


def test_plan_dedupes_and_names_runs_by_config(synth, tmp_path):
    train, test = synth
    cfg = write_config(tmp_path / "c.toml", train, test, str(tmp_path / "runs"), epochs=1, batch_size=32)
    axes = [parse_axis(g) for g in ("method=stl,aft", "seed=0,1", "aft.beta=1,10")]
    runs = plan(cfg, [], axes)
    # stl does not vary with aft.beta: 2 seeds x (1 stl + 2 aft)
    assert len(runs) == 6
    assert sorted(r.name.split("-")[0] for r in runs) == ["aft"] * 4 + ["stl"] * 2
    assert [r.name for r in plan(cfg, [], axes)] == [r.name for r in runs]  # stable names
    assert all(r.config["out_dir"] == os.path.join(str(tmp_path / "runs"), r.name) for r in runs)
    with pytest.raises(ConfigError, match="beta"):
        plan(cfg, [], [parse_axis("aft.beta=fast")])
    # a method key STL never reads does not rename STL's run (configs can change beta, runs stay found)
    stl_a = plan(cfg, ["method.beta=3"], [parse_axis("method=stl")])
    stl_b = plan(cfg, ["method.beta=30"], [parse_axis("method=stl")])
    aft_a = plan(cfg, ["method.beta=3"], [parse_axis("method=aft")])
    aft_b = plan(cfg, ["method.beta=30"], [parse_axis("method=aft")])
    assert stl_a[0].name == stl_b[0].name and aft_a[0].name != aft_b[0].name
    stl_u = plan(cfg, ["data.unlabeled_per_batch=8"], [parse_axis("method=stl")])
    aft_u = plan(cfg, ["data.unlabeled_per_batch=8", "method.beta=3"], [parse_axis("method=aft")])
    assert stl_u[0].name == stl_a[0].name and aft_u[0].name != aft_a[0].name


def test_sweep_compare_and_rerun(synth, tmp_path):
    """2 methods x 2 seeds; the table's numbers are the runs' means; a rerun runs nothing."""
    runs_dir, cfg = tiny_runs(synth, tmp_path)
    res = sweep(cfg, "--grid", "method=stl,aft", "--grid", "seed=0,1", "--set", "data.label_budget=40")
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    assert "4 to run" in res.stdout
    results = {}
    for d in os.listdir(runs_dir):
        path = runs_dir / d / "results.json"
        if path.exists():
            r = json.loads(path.read_text())
            results.setdefault(r["method"], []).append(r["test_accuracy"])
            assert (runs_dir / d / "train.log").exists()
    assert {k: len(v) for k, v in results.items()} == {"stl": 2, "aft": 2}

    out = subprocess.run([EXE, "compare", str(runs_dir), "--csv", str(tmp_path / "t.csv"),
                          "--plot", str(tmp_path / "t.png")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert "| stl |" in out.stdout and "| aft |" in out.stdout
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "t.csv"))}
    for method, accs in results.items():
        assert float(rows[method]["test_accuracy_mean"]) == pytest.approx(sum(accs) / 2)
        assert int(rows[method]["seeds"]) == 2
    stl, aft = (float(rows[m]["test_accuracy_mean"]) for m in ("stl", "aft"))
    assert float(rows["aft"]["error_vs_stl"]) == pytest.approx((1 - aft) / (1 - stl))
    assert float(rows["stl"]["error_vs_stl"]) == pytest.approx(1.0)

    again = sweep(cfg, "--grid", "method=stl,aft", "--grid", "seed=0,1", "--set", "data.label_budget=40")
    assert again.returncode == 0 and "4 already finished, 0 to run" in again.stdout, again.stdout


def test_sweep_resumes_an_interrupted_run(synth, tmp_path):
    """A run killed after its checkpoint continues from it; finished runs are left alone."""
    from featcache.plumbing.config import load_config
    from featcache.train.config import TrainConfig
    from featcache.train.loop import run

    runs_dir, cfg = tiny_runs(synth, tmp_path, epochs=2)
    (planned,) = plan(cfg, [], [parse_axis("method=stl")])
    short = load_config(TrainConfig, data={**planned.config, "optim": {**planned.config["optim"], "epochs": 1}})
    run(short, log=lambda _m: None)  # one epoch done: a checkpoint, then "killed"
    os.remove(os.path.join(planned.config["out_dir"], "results.json"))
    res = sweep(cfg, "--grid", "method=stl")
    assert res.returncode == 0, res.stderr[-2000:]
    log = open(os.path.join(planned.config["out_dir"], "train.log")).read()
    assert "resumed from" in log and "after epoch 1" in log
    assert json.loads(open(os.path.join(planned.config["out_dir"], "results.json")).read())["epochs"] == 2


def test_compare_groups_swept_values_and_errors(tmp_path):
    def fake(name: str, method: str, seed: int, acc: float, beta: float = 10.0, budget: int = 20) -> None:
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({
            "method": method, "test_accuracy": acc, "val_accuracy": acc, "wall_seconds": 1.0,
            "config": {"seed": seed, "out_dir": str(d), "method": {"name": method, "beta": beta},
                       "data": {"label_budget": budget}}}))

    from featcache.train.compare import summarize

    fake("s0", "stl", 0, 0.70)
    fake("s1", "stl", 1, 0.80)
    fake("a0", "aft", 0, 0.85, beta=1.0)
    fake("a1", "aft", 1, 0.75, beta=10.0)
    fake("u0", "aft", 0, 0.90, beta=1.0)
    data = json.loads((tmp_path / "u0" / "results.json").read_text())
    data["config"]["data"]["unlabeled_per_batch"] = 8
    (tmp_path / "u0" / "results.json").write_text(json.dumps(data))
    table = {r["method"]: r for r in summarize(str(tmp_path))}
    # stl is split neither by aft's beta nor by a key only feature methods read
    assert set(table) == {"stl", "aft unlabeled_per_batch=None beta=1", "aft unlabeled_per_batch=None beta=10",
                          "aft unlabeled_per_batch=8 beta=1"}
    assert table["aft unlabeled_per_batch=8 beta=1"]["error_vs_stl"] == pytest.approx(0.10 / 0.25)
    for name in ("aft beta=1", "aft beta=10"):
        table[name] = table.pop(f"aft unlabeled_per_batch=None {name[4:]}")
    assert table["stl"]["test_accuracy_mean"] == pytest.approx(0.75)
    assert table["stl"]["test_accuracy_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert table["aft beta=1"]["error_vs_stl"] == pytest.approx(0.15 / 0.25)
    missing = subprocess.run([EXE, "compare", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "not found" in missing.stderr


def test_probe_scores_each_teacher_on_val_and_test(synth, tmp_path):
    train, test = synth
    cfg = write_config(tmp_path / "c.toml", train, test, str(tmp_path / "probe"), epochs=1, batch_size=32)
    out = subprocess.run([EXE, "probe", cfg, "--set", "data.label_budget=25"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    scores = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert set(scores) == {"oracle"}
    # the oracle teacher's features are a linear map of the label's latent: its probe is near perfect
    assert scores["oracle"]["test"] > 0.85 and scores["oracle"]["val"] > 0.85
    assert 0.5 < scores["oracle"]["test_knn5"] <= 1.0
    assert "| oracle | 48 | 100 |" in out.stdout


def test_parallel_jobs_give_the_same_runs(synth, tmp_path):
    """--jobs 2: two processes, each run in its own directory with its own log and results."""
    runs_dir, cfg = tiny_runs(synth, tmp_path)
    res = sweep(cfg, "--grid", "seed=0,1", "--set", "method.name=stl", "--jobs", "2")
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    assert "2 at a time" in res.stdout
    done = [d for d in os.listdir(runs_dir) if (runs_dir / d / "results.json").exists()]
    assert len(done) == 2 and all((runs_dir / d / "train.log").stat().st_size > 0 for d in done)


def test_workers_share_a_grid_and_compare_reads_it_meanwhile(synth, tmp_path):
    """--worker 0/2 and 1/2 started together run each grid point once; compare reads a part-done dir."""
    runs_dir, cfg = tiny_runs(synth, tmp_path)
    grid = ["--grid", "method=stl,aft", "--grid", "seed=0,1", "--set", "data.label_budget=40"]
    names = {r.name for r in plan(cfg, ["data.label_budget=40"], [parse_axis("method=stl,aft"),
                                                                 parse_axis("seed=0,1")])}
    procs = [subprocess.Popen([EXE, "sweep", cfg, *grid, "--worker", f"{i}/2"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert all("worker" in o[0] and "2 to run" in o[0] for o in outs), outs
    logs = {d: (runs_dir / d / "train.log").read_text() for d in os.listdir(runs_dir) if (runs_dir / d).is_dir()}
    assert set(logs) == names and all(log.count("test accuracy") == 1 for log in logs.values())
    assert all((runs_dir / d / "results.json").exists() for d in names)
    os.makedirs(runs_dir / "aft-unfinished")  # a run another worker has only started
    (runs_dir / "aft-unfinished" / "train.log").write_text("step 1\n")
    out = subprocess.run([EXE, "compare", str(runs_dir)], capture_output=True, text=True)
    assert out.returncode == 0 and "| stl |" in out.stdout and "| aft |" in out.stdout, out.stderr
    again = sweep(cfg, *grid, "--worker", "1/2")
    assert again.returncode == 0 and "2 already finished, 0 to run" in again.stdout, again.stdout
    bad = sweep(cfg, *grid, "--worker", "2/2")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
