"""Stage 2 from Python: what ``featcache-train``, ``sweep`` and ``compare`` do, returning plain objects.

    from featcache.train import train, compare_runs
    result = train("configs/demo_train.toml", method={"name": "aft", "beta": 1.0})
    print(result.test_accuracy, result.checkpoint_path)

Configs are built by the CLI's own path (``load_config`` with ``--set`` lines), so a
wrong key fails the same way; the engines are the CLI's (``loop.run``, ``run_sweep``,
``compare.summarize_runs``). This module imports only plumbing at the top, so importing
``featcache.train`` stays light (no torch, not even the config schema) and never touches the
pipeline or teacher code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from featcache.plumbing.api import as_overrides, check_engine, progress_bars, toml_value
from featcache.plumbing.config import ConfigError, load_config

if TYPE_CHECKING:  # the schema (and whatever it imports) loads when a call needs it
    from .config import TrainConfig

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainResult:
    """One finished run: where it is, what it scored (``results`` is its results.json)."""

    out_dir: str
    method: str
    test_accuracy: float | None
    val_accuracy: float | None
    wall_seconds: float
    results: dict[str, Any]  # everything results.json holds: per-class accuracy, losses, config, fingerprints
    history: tuple[dict[str, Any], ...]  # metrics.jsonl: one record per epoch (losses, val accuracy, lr, rows/s)

    @property
    def results_path(self) -> str:
        return os.path.join(self.out_dir, "results.json")

    @property
    def checkpoint_path(self) -> str:
        """Written every epoch; what ``resume=True`` continues from."""
        return os.path.join(self.out_dir, "checkpoint.pt")

    @property
    def student_path(self) -> str:
        """The trained student's weights: ``{"model": state_dict}``."""
        return os.path.join(self.out_dir, "student.pt")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.out_dir, "metrics.jsonl")

    @property
    def config_path(self) -> str:
        """The resolved config as JSON (storage options left out)."""
        return os.path.join(self.out_dir, "config.json")

    @classmethod
    def from_results(cls, out_dir: str, results: Mapping[str, Any]) -> "TrainResult":
        history: tuple[dict[str, Any], ...] = ()
        metrics = os.path.join(out_dir, "metrics.jsonl")
        if os.path.exists(metrics):
            with open(metrics) as fh:
                history = tuple(json.loads(line) for line in fh if line.strip())
        return cls(out_dir, results.get("variant") or results["method"], results.get("test_accuracy"),
                   results.get("val_accuracy"), float(results.get("wall_seconds", 0.0)), dict(results), history)

    @classmethod
    def load(cls, out_dir: str) -> "TrainResult":
        """A finished run directory (one holding results.json), e.g. one of a sweep's."""
        path = os.path.join(out_dir, "results.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not a finished run (no results.json)")
        with open(path) as fh:
            return cls.from_results(out_dir, json.load(fh))


@dataclass(frozen=True)
class Comparison:
    """``compare_runs``' table: one plain dict per row (the CSV's fields plus ``seed_list`` and
    ``runs``) and the markdown text ``featcache-train compare`` prints."""

    root: str
    rows: tuple[dict[str, Any], ...]
    table: str

    def __str__(self) -> str:
        return self.table

    def _repr_markdown_(self) -> str:  # Jupyter renders the table
        return self.table


@dataclass(frozen=True)
class SweepResult:
    root: str  # the runs directory: compare_runs(root) makes the table
    runs: int  # distinct runs the grid resolves to
    ran: int  # run (or resumed) by this call; finished ones are skipped
    failed: tuple[str, ...]  # run names whose train.log holds the error


def train_config(config: str | None = None, **overrides: Any) -> TrainConfig:
    """The resolved config a call of ``train`` with these arguments would run."""
    from .config import TrainConfig

    return load_config(TrainConfig, config, as_overrides(overrides))


def train(config: str | None = None, *, resume: bool = False, progress: bool | None = None, log: Log = print,
          **overrides: Any) -> TrainResult:
    """Train one student on the stores ``config`` names (a TOML path; None = the defaults).

    ``overrides`` are config sections as keyword tables (``method={"name": "aft", "beta": 1.0}``,
    ``optim={"epochs": 3}``, ``data={"storage": {"profile": "team"}}``) or top-level keys
    (``seed=1``, ``out_dir="runs/x"``). ``resume`` is ``--resume``. ``progress``: True draws the
    epoch bars where stderr is no terminal (Jupyter), False hides them, None shows them on a
    terminal only, like the command.
    """
    cfg = train_config(config, **overrides)
    from .loop import run

    with progress_bars(progress):
        results = run(cfg, resume=resume, log=log)
    return TrainResult.from_results(results["config"]["out_dir"], results)


def compare_runs(runs: str | os.PathLike | Sequence[str | os.PathLike], *, csv: str | None = None,
                 plot: str | None = None, title: str = "", choose: bool = False) -> Comparison:
    """The ``featcache-train compare`` table over ``runs``: a sweep's directory, any directory of
    run directories, or a list of them (run directories or directories of runs). ``choose``: as
    ``--choose``, each method's grid point chosen on validation, with the grid and the choice."""
    from .compare import choose_on_validation, load_runs, markdown, markdown_chosen, summarize_runs, write_csv
    from .compare import plot as plot_table

    dirs = [os.fspath(runs)] if isinstance(runs, (str, os.PathLike)) else [os.fspath(r) for r in runs]
    if not dirs:
        raise ConfigError("compare_runs: name at least one runs directory")
    root = dirs[0] if len(dirs) == 1 else os.path.commonpath([os.path.abspath(d) for d in dirs])
    found = {os.path.abspath(r.path): r for d in dirs for r in load_runs(d)}  # a run named twice counts once
    rows = summarize_runs(list(found.values()), root)
    if choose:
        rows = choose_on_validation(rows)
    if csv:
        write_csv(rows, csv)
    if plot:
        plot_table(rows, plot, title=title or root)
    return Comparison(root, tuple(rows), markdown_chosen(rows) if choose else markdown(rows))


def train_sweep(config: str, *, grid: Mapping[str, Sequence[Any]], out: str | None = None, jobs: int = 1,
                dry_run: bool = False, log: Log = print, then_seeds: Sequence[int] = (), engine: str = "local",
                address: str | None = None, ray_cpus: int | None = None, ray_gpus: float | None = None,
                **overrides: Any) -> SweepResult:
    """``featcache-train sweep``: every combination of ``grid`` on one cache, one run directory each.

    ``grid`` maps a key to its values as ``--grid`` does: ``{"method": ["stl", "aft"], "seed": [0, 1, 2],
    "aft.beta": [0.1, 1.0], "data.teachers": [["a"], ["a", "b"]]}``. Runs land in ``out`` (default:
    the config's out_dir) as ``<method>-<hash>``; finished runs are skipped, interrupted ones resumed.
    ``then_seeds``: afterwards, each method's grid point chosen on validation runs with these seeds.
    ``engine="ray"`` is ``--engine ray``: each run a Ray task reserving ``ray_cpus`` CPUs (default 1)
    and ``ray_gpus`` GPUs (default 0), on the cluster at ``address`` (or the instance this session
    already started).
    """
    from .sweep import run_sweep

    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError("train_sweep: give the config file (a sweep records its path)")
    if not grid:
        raise ConfigError("train_sweep: give at least one grid key, e.g. grid={'method': ['stl', 'aft']}")
    if jobs < 1:
        raise ConfigError("jobs: must be >= 1")
    check_engine(engine, {"address": address, "ray_cpus": ray_cpus, "ray_gpus": ray_gpus})
    on_ray = None
    if engine == "ray":
        if jobs > 1:
            raise ConfigError("jobs: engine='ray' places the runs itself; leave jobs at 1")
        from .sweep_ray import ray_engine

        on_ray = ray_engine(address, 1 if ray_cpus is None else ray_cpus, ray_gpus or 0)
    lines = []
    for key, values in grid.items():
        values = [values] if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) else values
        lines.append(f"{key}=" + ",".join(toml_value(v, key) for v in values))
    res = run_sweep(os.fspath(config), as_overrides(overrides), lines, jobs=jobs, root=out, dry_run=dry_run, log=log,
                    then_seeds=tuple(then_seeds), engine=on_ray)
    return SweepResult(res["root"], res["runs"], res["ran"], tuple(res["failed"]))


def load_student(run_dir: str | os.PathLike) -> Any:
    """A finished run's student: ``(model, transform, classes)`` (a NamedTuple, ``LoadedStudent``).

    ``model`` is in eval mode (forward -> (logits, penultimate features)); ``transform`` is the run's
    eval preprocessing (``transform.batch(images or texts)`` -> the model's input; ``transform.spec()``
    describes it); ``classes`` the class names. Works on a run directory copied elsewhere or behind an
    fsspec URL; tensors only; a run without results.json is refused (``RunNotFinished``).
    """
    from .load import load_student as load

    return load(run_dir)


def predict(run_dir: str | os.PathLike, source: Any, *, top_k: int = 5, batch_size: int = 64,
            progress: bool | None = None, **overrides: Any) -> Any:
    """``featcache-train predict``: a finished run's student over ``source``, one row per input.

    ``source``: a path or URL (a folder, a .csv/.jsonl manifest, .tar shards or a brace pattern,
    .parquet files), a config's path (its ``[source]`` table), or a ``[source]`` table as a dict;
    ``overrides`` are [source] keys (``split="test"``, ``id_column="key"``). Returns ``Predictions``:
    ``.rows`` (a list of dicts: id, predicted, probability, top1.., label, error), ``.accuracy`` and
    ``.per_class_accuracy`` with labels, ``.write("p.parquet" | "p.csv")``, ``.to_pandas()``.
    """
    from .prediction import predict as run_predict

    sets = as_overrides({"source": overrides}) if overrides else []
    return run_predict(run_dir, source, overrides=sets, top_k=top_k, batch_size=batch_size, progress=progress)


def export_student(run_dir: str | os.PathLike, format: str, out: str | os.PathLike, *,
                   overwrite: bool = False) -> dict[str, Any]:
    """``featcache-train export``: ``onnx``, ``torchscript`` or ``safetensors`` to ``out``, and the
    sidecar ``<out>.json`` (returned as a dict: classes, preprocessing, teachers, store, method,
    test accuracy; for ONNX, ``check``: ONNX Runtime against torch)."""
    from .export import export_student as run_export

    return run_export(run_dir, format, out, overwrite=overwrite)


__all__ = ["Comparison", "SweepResult", "TrainResult", "compare_runs", "export_student", "load_student", "predict",
           "train", "train_config", "train_sweep"]
