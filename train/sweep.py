"""Many student runs on one cache: every combination of a grid of config values.

Each run lives in ``RUNS_DIR/<method>-<hash>``, the hash taken over its resolved
config (``out_dir`` left out), so the same combination always lands in the same
directory. A directory with ``results.json`` is finished and skipped; one with
only a checkpoint is resumed. An interrupted sweep therefore continues where it
stopped, and a finished one runs nothing. ``--worker I/N`` runs only every N-th run of the grid
from the I-th (grid order), so N processes of any scheduler share one runs directory; ``compare``
reads it while they run (it skips runs without ``results.json``).

Grid keys are config keys (``optim.lr``), with two short forms: ``method`` for
``method.name``, and ``<method>.<param>`` (``aft.beta``) for a method parameter
that only runs of that method vary over.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from featcache.plumbing import atomic, storage
from featcache.plumbing.config import ConfigError, load_config, parse_override, to_dict

from .config import FEATURE_DATA_KEYS, PIPELINE_DATA_KEYS, TrainConfig
from .methods import registry

Log = Callable[[str], None]
# Another engine's runs (sweep_ray.py): the todo runs in, (run, result) pairs out as they finish
Engine = Callable[[Sequence["PlannedRun"]], Iterable[tuple["PlannedRun", dict[str, Any]]]]


@dataclass(frozen=True)
class Axis:
    key: str  # full config key, e.g. "method.beta"
    values: tuple[Any, ...]
    only_method: str = ""  # "aft" for aft.beta: other methods do not vary over it


@dataclass(frozen=True)
class PlannedRun:
    name: str  # directory name under the sweep's root
    config: dict[str, Any]  # resolved TrainConfig as plain values, out_dir included


def split_values(raw: str) -> list[str]:
    """``a,b,[c,d]`` -> ["a", "b", "[c,d]"]: commas inside brackets or quotes do not split."""
    parts, depth, quote, current = [], 0, "", []
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _value(key: str, raw: str) -> Any:
    value = parse_override(f"{key}={raw}")[1]
    if isinstance(value, str) and raw.startswith("[") and raw.endswith("]"):  # [a,b] with bare words
        value = [w.strip().strip("\"'") for w in raw[1:-1].split(",") if w.strip()]
    return value


def parse_axis(text: str) -> Axis:
    """``--grid KEY=V1,V2,...`` -> an Axis with the key in full."""
    if "=" not in text:
        raise ConfigError(f"--grid {text!r}: expected key=value1,value2,...")
    key, raw = (s.strip() for s in text.split("=", 1))
    values = split_values(raw)
    if not key or not values:
        raise ConfigError(f"--grid {text!r}: expected key=value1,value2,...")
    only = ""
    if key == "method":
        key = "method.name"
    head, _, rest = key.partition(".")
    if head in registry.names() and rest:
        only, key = head, f"method.{rest}"
    if len(set(values)) != len(values):
        raise ConfigError(f"--grid {key}: values repeat ({raw})")
    return Axis(key, tuple(_value(key, v) for v in values), only)


def config_hash(config: dict[str, Any]) -> str:
    """Short hash of what a run computes: its resolved config without out_dir (where it goes) and
    without the keys its method never reads (STL is the same run whatever aft.beta or the teachers)."""
    body = {k: v for k, v in config.items() if k != "out_dir"}
    method = body.get("method", {})
    spec = registry.lookup(method.get("name", ""))  # an unknown name keeps every key
    keep = ("name",) + (spec.params() if spec else tuple(method))
    body["method"] = {k: v for k, v in method.items() if k in keep}
    if spec is not None and not spec.needs_features:
        body["data"] = {k: v for k, v in body.get("data", {}).items() if k not in FEATURE_DATA_KEYS}
    # how batches are made never changes what a run computes; the default filter keeps older hashes
    body["data"] = {k: v for k, v in body.get("data", {}).items() if k not in PIPELINE_DATA_KEYS}
    if body.get("student", {}).get("resize_filter") == "bilinear":
        body["student"] = {k: v for k, v in body["student"].items() if k != "resize_filter"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]


def plan(config_path: str, overrides: Sequence[str], axes: Sequence[Axis], root: str | None = None) -> list[PlannedRun]:
    """Every distinct run of the grid, in grid order (combinations that resolve alike run once)."""
    base = load_config(TrainConfig, config_path, overrides)
    storage.set_options(base.data.storage)  # the planned configs leave them out (they are saved)
    root = root or base.out_dir
    runs: dict[str, PlannedRun] = {}
    for combo in itertools.product(*(a.values for a in axes)):
        method = next((v for a, v in zip(axes, combo) if a.key == "method.name"), base.method.name)
        data = to_dict(base)
        for axis, value in zip(axes, combo):
            if axis.only_method and axis.only_method != method:
                continue
            node = data
            *parents, leaf = axis.key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        cfg = load_config(TrainConfig, data=data)  # validates every key and value of the grid
        resolved = to_dict(cfg)
        name = f"{cfg.method.name}-{config_hash(resolved)}"
        resolved["out_dir"] = os.path.join(root, name)
        runs.setdefault(name, PlannedRun(name, resolved))
    return list(runs.values())


def status(run: PlannedRun) -> str:
    """done | resume | new."""
    out = run.config["out_dir"]
    if os.path.exists(os.path.join(out, "results.json")):
        return "done"
    return "resume" if os.path.exists(os.path.join(out, "checkpoint.pt")) else "new"


def run_one(config: dict[str, Any], resume: bool, threads: int) -> dict[str, Any]:
    """One run, its output in out_dir/train.log; the result (or the error) comes back as a dict."""
    import torch

    from .loop import run

    if threads:
        torch.set_num_threads(threads)
    out = config["out_dir"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train.log"), "a") as log_fh, redirect_stdout(log_fh), redirect_stderr(log_fh):
        try:
            res = run(load_config(TrainConfig, data=config), resume=resume)
            return {"ok": True, "test_accuracy": res["test_accuracy"], "wall_seconds": res["wall_seconds"]}
        except Exception as exc:  # one failed run must not stop the sweep; its traceback is in train.log
            traceback.print_exc()
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def execute(todo: Sequence[PlannedRun], jobs: int, log: Log, engine: Engine | None = None) -> list[str]:
    """Run ``todo`` (``jobs`` at a time, threads split between them, or on ``engine``); the names of
    those that failed."""
    failed: list[str] = []
    t0 = time.time()

    def report(i: int, r: PlannedRun, result: dict[str, Any]) -> None:
        if result["ok"]:
            log(f"[{i}/{len(todo)}] {r.name}: test accuracy {result['test_accuracy']:.4f} "
                f"({result['wall_seconds']:.0f} s)")
        else:
            failed.append(r.name)
            log(f"[{i}/{len(todo)}] {r.name}: FAILED {result['error']} (see {r.config['out_dir']}/train.log)")

    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    if engine is not None:
        for i, (r, result) in enumerate(engine(todo), 1):
            report(i, r, result)
    elif jobs <= 1:
        for i, r in enumerate(todo, 1):
            report(i, r, run_one(r.config, status(r) == "resume", threads))
    else:
        with mp.get_context("spawn").Pool(jobs, storage.install, (storage.snapshot(),)) as pool:
            pending = [(r, pool.apply_async(run_one, (r.config, status(r) == "resume", threads))) for r in todo]
            for i, (r, handle) in enumerate(pending, 1):
                report(i, r, handle.get())
            pool.close()  # let the workers exit on their own (terminate() would leak their semaphores)
            pool.join()
    log(f"sweep: {len(todo) - len(failed)} runs finished in {time.time() - t0:.0f} s"
        + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    return failed


def run_sweep(config_path: str, overrides: Sequence[str], grid: Sequence[str], jobs: int = 1,
              root: str | None = None, dry_run: bool = False, log: Log = print,
              then_seeds: Sequence[int] = (), worker: tuple[int, int] | None = None,
              engine: Engine | None = None) -> dict[str, Any]:
    """``worker=(i, n)``: only the grid's runs i, i + n, i + 2n, ... (the whole grid is still planned
    and recorded, so every worker checks every value and writes the same sweep file). ``engine``:
    where the runs go instead of this machine's processes (``sweep_ray.ray_results``)."""
    if worker is not None and then_seeds:
        raise ConfigError("--then-seeds chooses over the whole grid: run it once every --worker has finished")
    axes = [parse_axis(g) for g in grid]
    runs = plan(config_path, overrides, axes, root)
    root = os.path.dirname(runs[0].config["out_dir"]) if runs else (root or "")
    share, shares = worker or (0, 1)
    mine = runs[share::shares]
    todo = [r for r in mine if status(r) != "done"]
    log(f"sweep: {len(runs)} runs in {root}" + (f", worker {share}/{shares} takes {len(mine)}" if worker else "")
        + f" ({len(mine) - len(todo)} already finished, {len(todo)} to run"
        + (", on Ray)" if engine else f", {jobs} at a time)" if jobs > 1 else ")"))
    if dry_run:
        for r in mine:
            log(f"  {status(r):<6} {r.name}")
        return {"root": root, "runs": len(runs), "ran": 0, "failed": []}
    os.makedirs(root, exist_ok=True)
    grid_id = hashlib.sha256(json.dumps([config_path, list(overrides), list(grid)]).encode()).hexdigest()[:8]
    atomic.write_json(os.path.join(root, f"sweep-{grid_id}.json"), {
        "config": os.path.abspath(config_path), "overrides": list(overrides), "grid": list(grid),
        "axes": [{"key": a.key, "values": list(a.values), "only_method": a.only_method} for a in axes],
        "runs": [r.name for r in runs]})
    failed = execute(todo, jobs, log, engine)
    ran = len(todo)
    if then_seeds and not failed:
        more = chosen_runs(runs, root, then_seeds)
        todo = [r for r in more if status(r) != "done"]
        log(f"sweep: chosen on validation per method, {len(more)} runs with seeds "
            f"{', '.join(map(str, then_seeds))} ({len(more) - len(todo)} already finished, {len(todo)} to run)")
        failed += execute(todo, jobs, log, engine)
        ran += len(todo)
    return {"root": root, "runs": len(runs), "ran": ran, "failed": failed}


def chosen_runs(runs: Sequence[PlannedRun], root: str, seeds: Sequence[int]) -> list[PlannedRun]:
    """The grid's choice on validation per method (``compare --choose`` over the grid's finished
    runs), each run again with every seed of ``seeds``: a grid tuned on one seed, then the chosen
    points measured on more."""
    from .compare import choose_on_validation, load_runs, summarize_runs

    finished = [r for r in load_runs(root) if os.path.basename(r.path) in {p.name for p in runs}]
    out: dict[str, PlannedRun] = {}
    for record in choose_on_validation(summarize_runs(finished, root)):
        with open(os.path.join(root, record["runs"][0], "results.json")) as fh:
            config = json.load(fh)["config"]
        for seed in seeds:
            cfg = to_dict(load_config(TrainConfig, data={**config, "seed": seed}))
            name = f"{cfg['method']['name']}-{config_hash(cfg)}"
            cfg["out_dir"] = os.path.join(root, name)
            out.setdefault(name, PlannedRun(name, cfg))
    return list(out.values())


__all__ = ["Axis", "PlannedRun", "parse_axis", "plan", "run_sweep", "config_hash", "split_values"]
