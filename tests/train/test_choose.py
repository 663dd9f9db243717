"""compare --choose: each method's hyper-parameters chosen on validation rows, never on test rows."""

import json

from featcache.train.cli import main
from featcache.train.compare import choose_on_validation, summarize


def _run(root, name, method, seed, val, test, **over):
    cfg = {"seed": seed, "out_dir": str(root / name), "data": {"label_budget": over.pop("budget", 10)},
           "method": {"name": method, "beta": over.pop("beta", 10.0)}, "optim": {"lr": over.pop("lr", 1e-3)}}
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(
        {"method": method, "config": cfg, "test_accuracy": test, "val_accuracy": val, "wall_seconds": 1.0}))


def test_the_best_validation_point_is_chosen_whatever_test_says(tmp_path, capsys):
    for seed in (0, 1):
        _run(tmp_path, f"stl-lr3-{seed}", "stl", seed, 0.70, 0.60)
        _run(tmp_path, f"stl-lr4-{seed}", "stl", seed, 0.60, 0.90, lr=1e-4)  # best on test: must not win
        _run(tmp_path, f"aft-b1-{seed}", "aft", seed, 0.75, 0.66, beta=1.0)
        _run(tmp_path, f"aft-b10-{seed}", "aft", seed, 0.80, 0.64)
    chosen = {r["base_method"]: r for r in choose_on_validation(summarize(str(tmp_path)))}
    assert chosen["stl"]["chosen"] == {"optim.lr": "0.001"} and chosen["stl"]["test_accuracy_mean"] == 0.60
    assert chosen["aft"]["chosen"] == {"beta": "10", "optim.lr": "0.001"}
    assert chosen["aft"]["grid"] == {"beta": ["1", "10"], "optim.lr": ["0.001"]}
    assert abs(chosen["aft"]["error_vs_stl"] - 0.36 / 0.40) < 1e-9
    assert main(["compare", str(tmp_path), "--choose", "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    import csv
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "t.csv"))}
    assert json.loads(rows["aft"]["grid"]) == {"beta": ["1", "10"], "optim.lr": ["0.001"]}
    assert "| stl | optim.lr=0.001 | optim.lr 0.0001, 0.001 | 0.6000 ± 0.0000 | 1.000 | 2 | 0.7000 |" in out


def test_experiment_settings_stay_rows_of_their_own(tmp_path):
    for budget in (10, 50):
        _run(tmp_path, f"stl-{budget}", "stl", 0, 0.5 + budget / 1000, 0.5, budget=budget)
        _run(tmp_path, f"aft-{budget}", "aft", 0, 0.5, 0.6, budget=budget)
    chosen = choose_on_validation(summarize(str(tmp_path)))
    assert sorted(r["method"] for r in chosen) == ["aft label_budget=10", "aft label_budget=50",
                                                  "stl label_budget=10", "stl label_budget=50"]


def test_a_choice_made_on_seed_0_stays_when_the_chosen_point_runs_more_seeds(tmp_path):
    """The grid ran seed 0 only; the chosen point then ran seeds 1, 2 with lower validation. The
    choice is still compared on seed 0, the one seed every candidate ran."""
    _run(tmp_path, "aft-b1-0", "aft", 0, 0.75, 0.60, beta=1.0)
    _run(tmp_path, "aft-b10-0", "aft", 0, 0.80, 0.70)
    for seed in (1, 2):
        _run(tmp_path, f"aft-b10-{seed}", "aft", seed, 0.60, 0.70)
    (chosen,) = choose_on_validation(summarize(str(tmp_path)))
    assert chosen["chosen"]["beta"] == "10" and chosen["seeds"] == 3


def test_sweep_then_seeds_runs_the_chosen_point_with_more_seeds(synth, tmp_path):
    from featcache.train.compare import load_runs
    from train_helpers import write_config

    cfg = write_config(tmp_path / "t.toml", *synth, str(tmp_path / "runs"), epochs=1, batch_size=32, width=16)
    assert main(["sweep", cfg, "--grid", "method=stl,aft", "--grid", "aft.beta=0.1,10", "--then-seeds", "1",
                 "--set", "data.label_budget=10"]) == 0
    runs = load_runs(str(tmp_path / "runs"))
    seeds = {}
    for r in runs:
        seeds.setdefault((r.method, r.config.get("method.beta") if r.method == "aft" else None), []).append(
            r.config["seed"])
    assert sorted(seeds[("stl", None)]) == [0, 1]
    assert sorted(len(v) for k, v in seeds.items() if k[0] == "aft") == [1, 2]  # only the chosen beta ran twice


def test_compare_runs_choose_from_python(tmp_path):
    from featcache.train import compare_runs

    _run(tmp_path, "aft-b1", "aft", 0, 0.75, 0.66, beta=1.0)
    _run(tmp_path, "aft-b10", "aft", 0, 0.80, 0.64)
    table = compare_runs(str(tmp_path), choose=True)
    assert [r["chosen"] for r in table.rows] == [{"beta": "10"}] and "chosen on validation" in str(table)
