"""One table from many finished runs: mean and std of test accuracy per method (and per
swept value), the error relative to STL, and the number of seeds.

A run is a directory holding ``results.json`` (its subdirectories are not searched:
TOKT's pretrain/finetune steps belong to the run above them). Runs are grouped by
method plus every config value that differs between runs, except the seed and paths
inside the runs directory; a method's parameters only split that method's runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from featcache.plumbing import atomic
from featcache.plumbing.errors import UsageError

from .config import FEATURE_DATA_KEYS, PIPELINE_DATA_KEYS
from .methods import registry

NOT_GROUPING = {"out_dir", "seed", *(f"data.{k}" for k in PIPELINE_DATA_KEYS)}
# keys only the feature methods read never split the runs of a method without features (STL: the
# baseline of all of them)
FEATURE_KEYS = {f"data.{k}" for k in FEATURE_DATA_KEYS}


@dataclass
class Run:
    path: str
    method: str  # the method, or the TOKT variant
    config: dict[str, Any]  # flattened: "optim.lr" -> 0.001
    test_accuracy: float
    val_accuracy: float | None
    wall_seconds: float


@dataclass
class Row:
    label: str
    method: str
    setting: dict[str, Any]  # the grouping values besides the method
    runs: list[Run] = field(default_factory=list)

    @property
    def accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.runs]

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.runs)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one run)."""
        n = len(self.runs)
        if n < 2:
            return 0.0
        return math.sqrt(sum((a - self.mean) ** 2 for a in self.accuracies) / (n - 1))

    @property
    def seeds(self) -> list[int]:
        return sorted(r.config.get("seed", 0) for r in self.runs)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def find_results(root: str) -> Iterator[str]:
    """results.json files under root, not descending into a run's own subdirectories."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "results.json" in filenames:
            dirnames.clear()
            yield os.path.join(dirpath, "results.json")


def load_runs(root: str) -> list[Run]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: runs directory not found")
    runs = []
    for path in find_results(root):
        with open(path) as fh:
            res = json.load(fh)
        if res.get("test_accuracy") is None or "config" not in res:
            continue
        runs.append(Run(os.path.dirname(path), res.get("variant") or res["method"], flatten(res["config"]),
                        float(res["test_accuracy"]), res.get("val_accuracy"), float(res.get("wall_seconds", 0.0))))
    if not runs:
        raise FileNotFoundError(f"{root}: no finished runs (no results.json with a test accuracy)")
    return runs


def _inside(value: Any, root: str) -> bool:
    return isinstance(value, str) and bool(value) and os.path.abspath(value).startswith(os.path.abspath(root) + os.sep)


def grouping_keys(runs: list[Run], root: str) -> tuple[list[str], dict[str, list[str]]]:
    """(config keys that differ across runs, per method: its parameters that differ across its runs)."""
    def differing(subset: list[Run], keys: set[str]) -> list[str]:
        return sorted(k for k in keys if len({r.config.get(k) for r in subset}) > 1
                      and not any(_inside(r.config.get(k), root) for r in subset))

    keys = {k for r in runs for k in r.config if k not in NOT_GROUPING and not k.startswith("method.")}
    shared = differing(runs, keys)
    per_method = {}
    for method in {r.method for r in runs}:
        mine = [r for r in runs if r.method == method]
        spec = registry.lookup(mine[0].config.get("method.name", ""))
        params = {f"method.{p}" for p in (spec.params() if spec else ())}
        per_method[method] = differing(mine, params)
    return shared, per_method


def _reads_features(method: str) -> bool:
    """False for a registered method without teacher features; a TOKT variant reads them."""
    spec = registry.lookup(method)
    return spec is None or spec.needs_features


def _short(key: str) -> str:
    return key.removeprefix("method.").removeprefix("data.")


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join(map(str, value)) or "all"
    return f"{value:g}" if isinstance(value, float) else str(value)


def group(runs: list[Run], shared: list[str], per_method: dict[str, list[str]]) -> list[Row]:
    rows: dict[tuple, Row] = {}
    for r in runs:
        mine = [k for k in shared if _reads_features(r.method) or k not in FEATURE_KEYS]
        setting = {k: r.config.get(k) for k in mine + per_method[r.method]}
        key = (r.method, tuple(sorted((k, str(v)) for k, v in setting.items())))
        if key not in rows:
            label = " ".join([r.method] + [f"{_short(k)}={_fmt(v)}" for k, v in setting.items()])
            rows[key] = Row(label, r.method, setting)
        rows[key].runs.append(r)
    order = {m: i for i, m in enumerate(["stl", "kd_feat", "rkd", "kd_pred", "aft"])}
    return sorted(rows.values(), key=lambda row: (order.get(row.method, len(order)), row.label))


def stl_baseline(row: Row, rows: list[Row], shared: list[str]) -> Row | None:
    """The STL row with the same shared setting (label budget, student, ...) as ``row``."""
    keys = [k for k in shared if k not in FEATURE_KEYS]
    want = {k: row.setting.get(k) for k in keys}
    for other in rows:
        if other.method == "stl" and {k: other.setting.get(k) for k in keys} == want:
            return other
    return None


def summarize(root: str) -> list[dict[str, Any]]:
    """The table as plain records (what --csv writes and the tests check)."""
    return summarize_runs(load_runs(root), root)


def summarize_runs(runs: list[Run], root: str) -> list[dict[str, Any]]:
    """``summarize`` over runs gathered from anywhere; ``root`` is where their paths are relative to."""
    shared, per_method = grouping_keys(runs, root)
    rows = group(runs, shared, per_method)
    out = []
    for row in rows:
        base = stl_baseline(row, rows, shared)
        rel = (1 - row.mean) / (1 - base.mean) if base is not None and base.mean < 1 else None
        vals = [r.val_accuracy for r in row.runs if r.val_accuracy is not None]
        out.append({"method": row.label, "base_method": row.method, "setting": row.setting,
                    "test_accuracy_mean": row.mean, "test_accuracy_std": row.std,
                    "error_vs_stl": rel, "seeds": len(row.runs), "seed_list": row.seeds,
                    "val_accuracy_mean": sum(vals) / len(vals) if vals else None,
                    "val_by_seed": {r.config.get("seed", 0): r.val_accuracy for r in row.runs
                                    if r.val_accuracy is not None},
                    "wall_seconds_mean": sum(r.wall_seconds for r in row.runs) / len(row.runs),
                    "runs": [os.path.relpath(r.path, root) for r in row.runs]})
    return out


def is_hyper(key: str) -> bool:
    """A hyper-parameter a method is tuned over (its own [method] keys, the optimiser's), as opposed
    to a setting of the experiment (label budget, student, teachers) that stays a row of its own."""
    return key.startswith(("method.", "optim."))


def choose_on_validation(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and experiment setting, the grid point with the best mean validation accuracy over
    the seeds all its candidates ran; test rows are never read to choose. Each record keeps the grid it was chosen from
    (every value tried per key) and the choice; error vs STL is against the STL chosen alike."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        fixed = tuple(sorted((k, str(v)) for k, v in r["setting"].items() if not is_hyper(k)))
        groups.setdefault((r["base_method"], fixed), []).append(r)
    chosen = []
    for (method, fixed), candidates in groups.items():
        scored = [c for c in candidates if c["val_accuracy_mean"] is not None] or candidates
        # compared on the seeds every candidate ran (a grid tuned on seed 0 whose choice then ran
        # more seeds is still chosen on seed 0)
        common = set.intersection(*(set(c.get("val_by_seed", {})) for c in scored))

        def score(c: dict[str, Any]) -> float:
            vals = [c["val_by_seed"][k] for k in common] if common else []
            return sum(vals) / len(vals) if vals else (c["val_accuracy_mean"] or 0.0)

        best = max(scored, key=lambda c: (score(c), -len(c["method"])))
        keys = sorted({k for c in candidates for k in c["setting"] if is_hyper(k)})
        grid = {_short(k): sorted({_fmt(c["setting"].get(k)) for c in candidates}) for k in keys}
        label = " ".join([method] + [f"{_short(k)}={_fmt(v)}" for k, v in fixed])
        chosen.append({**best, "method": label, "grid": grid, "grid_points": len(candidates),
                       "chosen": {_short(k): _fmt(best["setting"].get(k)) for k in keys}, "fixed": dict(fixed)})
    for r in chosen:
        base = next((o for o in chosen if o["base_method"] == "stl" and _fixed_without_features(o) ==
                     _fixed_without_features(r)), None)
        r["error_vs_stl"] = ((1 - r["test_accuracy_mean"]) / (1 - base["test_accuracy_mean"])
                             if base is not None and base["test_accuracy_mean"] < 1 else None)
    order = {m: i for i, m in enumerate(["stl", "kd_feat", "rkd", "kd_pred", "aft"])}
    return sorted(chosen, key=lambda r: (order.get(r["base_method"], len(order)), r["method"]))


def _fixed_without_features(record: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in record["fixed"].items() if k not in FEATURE_KEYS}


def markdown_chosen(records: list[dict[str, Any]]) -> str:
    lines = ["| method | chosen on validation | from | test accuracy (mean ± std) | error vs STL | seeds | "
             "val accuracy |", "|---|---|---|---|---|---|---|"]
    for r in records:
        rel = "-" if r["error_vs_stl"] is None else f"{r['error_vs_stl']:.3f}"
        val = "-" if r["val_accuracy_mean"] is None else f"{r['val_accuracy_mean']:.4f}"
        choice = " ".join(f"{k}={v}" for k, v in r["chosen"].items()) or "-"
        grid = "; ".join(f"{k} {', '.join(v)}" for k, v in r["grid"].items()) or "one point"
        lines.append(f"| {r['method']} | {choice} | {grid} | {r['test_accuracy_mean']:.4f} ± "
                     f"{r['test_accuracy_std']:.4f} | {rel} | {r['seeds']} | {val} |")
    return "\n".join(lines)


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| method | test accuracy (mean ± std) | error vs STL | seeds | val accuracy | s / run |",
             "|---|---|---|---|---|---|"]
    for r in records:
        rel = "-" if r["error_vs_stl"] is None else f"{r['error_vs_stl']:.3f}"
        val = "-" if r["val_accuracy_mean"] is None else f"{r['val_accuracy_mean']:.4f}"
        lines.append(f"| {r['method']} | {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} | {rel} | "
                     f"{r['seeds']} | {val} | {r['wall_seconds_mean']:.0f} |")
    return "\n".join(lines)


CSV_FIELDS = ("method", "test_accuracy_mean", "test_accuracy_std", "error_vs_stl", "seeds", "val_accuracy_mean",
              "wall_seconds_mean")


def write_csv(records: list[dict[str, Any]], path: str) -> None:
    """The table; a chosen table (``--choose``) also keeps the grid and the choice of each row."""
    chosen = any("chosen" in r for r in records)
    fields = CSV_FIELDS + (("chosen", "grid") if chosen else ())
    rows = [{**r, "chosen": json.dumps(r.get("chosen", {})), "grid": json.dumps(r.get("grid", {}))} if chosen else r
            for r in records]
    with atomic.atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(records: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Bar chart of mean test accuracy with std error bars (matplotlib: pip install 'featcache[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install 'featcache[plot]'") from exc
    means = [r["test_accuracy_mean"] for r in records]
    stds = [r["test_accuracy_std"] for r in records]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(records)), 3.6))
    ax.bar(range(len(records)), means, yerr=stds, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(records)), [r["method"] for r in records], rotation=30, ha="right", fontsize=8)
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(m + s for m, s in zip(means, stds)) + 0.02))
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    atomic.write_with(path, lambda fh: fig.savefig(fh, dpi=120, format=fmt))
    plt.close(fig)


__all__ = ["summarize", "summarize_runs", "markdown", "write_csv", "plot", "load_runs", "group",
           "choose_on_validation", "markdown_chosen"]
