"""What a run measures: accuracy on a split, BatchNorm statistics recomputed before it, AFT's
feature weights at a glance, and whether validation accuracy was still rising at the end."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import numpy as np
import torch
from torch import nn

from featcache.plumbing.distributed import Dist, all_sum

from .batches import eval_batches, prepare_inputs, shard_rows
from .data import Split


@torch.no_grad()
def evaluate(learner: nn.Module, split: Split, num_classes: int, device: torch.device, dist_: Dist,
             batch_size: int = 256, workers: int = 0, depth: int = 2) -> dict[str, Any]:
    if len(split.rows) == 0:
        return {"accuracy": None, "loss": None, "per_class_accuracy": [], "rows": 0}
    learner.eval()
    rows = shard_rows(split.rows, dist_)
    correct = torch.zeros(num_classes, dtype=torch.float64)
    seen = torch.zeros(num_classes, dtype=torch.float64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    with closing(eval_batches(split, rows, batch_size, workers, depth, device)) as batches:
        for x, y in batches:
            logits, _ = learner.student(prepare_inputs(x, device))
            logits = logits.float().cpu()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            hit = (logits.argmax(1) == y).double()
            correct.index_add_(0, y, hit)
            seen.index_add_(0, y, torch.ones_like(hit))
    for t in (correct, seen, loss_sum):
        all_sum(t)
    learner.train()
    per_class = (correct / seen.clamp(min=1)).tolist()
    total = float(seen.sum())
    return {"accuracy": float(correct.sum()) / max(total, 1.0), "loss": float(loss_sum) / max(total, 1.0),
            "per_class_accuracy": per_class, "rows": int(total)}

@torch.no_grad()
def recompute_bn(student: nn.Module, split: Split, rows: np.ndarray, batch_size: int, device: torch.device,
                 loader: dict[str, int], max_rows: int = 2048) -> None:
    """BatchNorm running statistics re-estimated over (up to ``max_rows``) training rows with the
    current weights: a cumulative average (momentum None), nothing else trained."""
    norms = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was = student.training
    student.train()
    ordered = np.sort(rows)[:max_rows]
    try:
        with closing(eval_batches(split, ordered, batch_size, loader["workers"], loader["depth"], device)) as batches:
            for x, _ in batches:
                if len(_) > 1:  # one row has no batch statistics
                    student(prepare_inputs(x, device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        student.train(was)

DIAGNOSTIC_KEYS = ("rho_below_0.1", "rho_above_0.9", "rho_mean", "max_abs_s")

def describe_diagnostics(record: dict[str, Any]) -> str:
    """AFT's learned feature weights at a glance: how many have left 1/2 for either end."""
    if "max_abs_s" not in record:
        return ""
    return (f"  rho<0.1 {record['rho_below_0.1']:.1%} rho>0.9 {record['rho_above_0.9']:.1%} "
            f"max|s| {record['max_abs_s']:.2f}")

def val_trend(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Was validation accuracy still rising over the last fifth of training? The least-squares slope
    of accuracy against step over the evaluations of the last fifth (at least the last two): a
    line still climbing says the run was scored before it converged."""
    points = [(r.get("step", r["epoch"]), r["val_accuracy"]) for r in history if r.get("val_accuracy") is not None]
    if len(points) < 2:
        return {"rising": None, "slope_per_1k_steps": None, "evaluations": len(points)}
    last = points[-1][0]
    tail = [p for p in points if p[0] >= 0.8 * last] or points[-2:]
    tail = tail if len(tail) >= 2 else points[-2:]
    x = np.array([p[0] for p in tail], float)
    y = np.array([p[1] for p in tail], float)
    slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
    # rising: the fitted line gains more than a tenth of a point over the last fifth (a flat run's
    # slope is rounding noise, not a rise)
    return {"rising": bool(slope * np.ptp(x) > 1e-3), "slope_per_1k_steps": slope * 1000, "evaluations": len(tail),
            "gain": float(y[-1] - y[0])}
