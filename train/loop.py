"""The student training loop: data, model, optimiser, then epochs top to bottom."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from featcache.plumbing import atomic, storage
from featcache.plumbing.config import ConfigError, load_config, to_dict
from featcache.plumbing.distributed import Dist, all_sum, barrier, pick_device, setup, teardown
from featcache.plumbing.paths import resolve_path
from featcache.plumbing.provenance import created_by
from featcache.plumbing.weights import read_tensors

from . import checkpoint as ckpt_io
from . import methods
from .config import TrainConfig
from .data import FeatureBank, Inputs, Split, build_splits, describe_inputs
from .losses import MethodLoss
from .methods import BuildContext
from .prefetch import prefetch
from .probe import fit_linear_probe, probe_accuracy
from .students import StudentSpec, build_student, count_parameters, feature_dim, init_embeddings, read_word_embeddings

Log = Callable[[str], None]
LOSS_READ_EVERY = 50  # steps between reads of the running losses (each read waits for the device)


class Learner(nn.Module):
    """Student and method in one module, so DDP averages every trainable parameter."""

    def __init__(self, student: nn.Module, method: MethodLoss) -> None:
        super().__init__()
        self.student, self.method = student, method

    def forward(self, x: Any, phi: torch.Tensor | None, y: torch.Tensor):
        logits, h = self.student(x)
        return logits, self.method(logits, h, phi, y)


def build_method(cfg: TrainConfig, d_h: int, bank: FeatureBank | None, split: Split, num_classes: int,
                 out_dir: str, log: Log, total_steps: int = 0) -> MethodLoss:
    """The loss of the configured method, given what it declares it needs."""
    method = methods.from_config(cfg.method)
    probe = teacher_probe(cfg.seed, bank, split, num_classes, out_dir, log) if method.needs_probe else None
    return method.build(BuildContext(d_h, bank.dim if bank is not None else None, num_classes, probe,
                                     total_steps))


PROBE_HINT = "fitted for other teacher features or classes? delete it to fit it again, or use another out_dir"


def teacher_probe(seed: int, bank: FeatureBank, split: Split, num_classes: int, out_dir: str, log: Log) -> nn.Linear:
    """The teacher's task head: fitted once on the labeled training rows' cached features, then reloaded."""
    path = os.path.join(out_dir, "probe.pt")
    if os.path.exists(path):
        probe = nn.Linear(bank.dim, num_classes)
        state = read_tensors(path, ckpt_io.CheckpointError, "teacher probe")
        ckpt_io.load_into(probe, state, path, "teacher probe", PROBE_HINT)
        return probe
    feats = bank.take_eval(split.rows)
    probe = fit_linear_probe(feats, split.labels, num_classes, seed=seed)
    log(f"teacher probe: train accuracy {probe_accuracy(probe, feats, split.labels):.4f} on {len(feats)} rows")
    atomic.write_with(path, lambda fh: torch.save(probe.state_dict(), fh))
    return probe


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(cfg: TrainConfig, learner: Learner) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = [{"params": list(learner.student.parameters()), "lr": o.lr, "weight_decay": o.weight_decay,
               "name": "student"}, *learner.method.param_groups(o.lr, o.weight_decay)]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    return (torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam)(groups, lr=o.lr)


def shard_rows(rows: np.ndarray, dist_: Dist, chunk_rows: int | None = None) -> np.ndarray:
    """This process's rows: disjoint across ranks, together all of them.

    With ``chunk_rows`` (features streamed from the store) whole chunks go to one rank,
    so no chunk is read by two processes.
    """
    if chunk_rows is None:
        return rows[dist_.rank::dist_.world]
    return rows[(rows // chunk_rows) % dist_.world == dist_.rank]


def steps_per_epoch(rows: np.ndarray, dist_: Dist, batch_size: int, chunk_rows: int | None = None) -> int:
    """Full batches of the smallest shard: every rank takes the same number of steps (DDP needs it)."""
    return min(len(shard_rows(rows, Dist(r, dist_.world), chunk_rows)) for r in range(dist_.world)) // batch_size


@dataclass(frozen=True)
class Budget:
    """How long a run trains, cut into evaluation periods: an epoch each (``optim.epochs``), or
    ``eval_every`` steps each out of a fixed ``optim.steps`` (the official AFT code's budget)."""

    periods: int
    period_steps: int  # steps of every period but a short last one
    total: int  # optimiser steps in all
    warmup: int
    by_steps: bool

    def steps_in(self, period: int) -> int:
        return min(self.period_steps, self.total - period * self.period_steps)

    def describe(self) -> str:
        if self.by_steps:
            return f"{self.total} steps, validation every {self.period_steps}"
        return f"{self.periods} epochs of {self.period_steps} steps ({self.total} steps)"


def make_budget(o: Any, epoch_steps: int) -> Budget:
    if o.steps:
        every = o.eval_every or max(1, o.steps // 10)
        return Budget(math.ceil(o.steps / every), every, o.steps, o.warmup_steps, True)
    return Budget(o.epochs, epoch_steps, epoch_steps * o.epochs, int(epoch_steps * o.warmup_epochs), False)


def endless_pairs(bank: FeatureBank | None, rows: np.ndarray, batch_size: int,
                  rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(row ids, features or None) batches for a budget of steps: shuffle after shuffle of ``rows``,
    batches running across the seams, so a set smaller than one batch still fills one (drawn again
    within it). Features streamed chunk by chunk come a whole chunk-shuffled pass at a time."""
    if bank is not None and not bank.in_memory:
        while True:
            empty = True
            for pair in bank.epoch(rows, batch_size, rng):
                empty = False
                yield pair
            if empty:
                raise ConfigError(f"optim.batch_size: {batch_size} is more than the {len(rows)} training rows "
                                  "per process, and streamed features cannot repeat rows within a batch")
    if len(rows) == 0:
        raise ConfigError("no training rows (data.label_budget, data.val_fraction?)")
    buffer = np.empty(0, rows.dtype)
    while True:
        while len(buffer) < batch_size:
            buffer = np.concatenate([buffer, rng.permutation(rows)])
        ids, buffer = buffer[:batch_size], buffer[batch_size:]
        yield ids, None if bank is None else bank.take(ids)


def to_device(x: Any, device: torch.device) -> Any:
    non_blocking = device.type == "cuda"  # from pinned memory: the copy overlaps the step
    if isinstance(x, tuple):
        return tuple(t.to(device, non_blocking=non_blocking) for t in x)
    return x.to(device, non_blocking=non_blocking)


def train_plans(split: Split, bank: FeatureBank | None, rows: np.ndarray, batch_size: int,
                rng: np.random.Generator, extra: int = 0, pool: np.ndarray | None = None, endless: bool = False):
    """What each batch holds: (row ids, view params or None, view ids or None, features or None, labels),
    each row's view drawn at random when the store has several. Everything random is drawn here.

    ``extra`` rows drawn from ``pool`` (rows outside the label budget) join every batch with
    label -1: the feature terms see them, cross-entropy does not. ``endless``: shuffle after
    shuffle for a budget of steps, else one pass.
    """
    if endless:
        pairs = endless_pairs(bank, rows, batch_size, rng)
    elif bank is None:
        perm = rng.permutation(rows)
        pairs = ((perm[i:i + batch_size], None) for i in range(0, len(perm) - batch_size + 1, batch_size))
    else:
        pairs = bank.epoch(rows, batch_size, rng)
    views = split.cache.views
    for ids, feats in pairs:
        labels = split.cache.labels[ids]
        if extra and pool is not None and len(pool):
            more = rng.choice(pool, size=min(extra, len(pool)), replace=False)
            ids = np.concatenate([ids, more])
            feats = np.concatenate([feats, bank.take(more)])
            labels = np.concatenate([labels, np.full(len(more), -1, labels.dtype)])
        params = v = None
        if views > 1:
            v = rng.integers(0, views, size=len(ids))
            if feats is not None:
                feats = feats[np.arange(len(ids)), v]
            if split.cache.view_param_names:
                params = split.cache.view_params[ids, v]
        yield ids, params, v, feats, labels


def _pin(t: Any) -> Any:
    if t is None:
        return None
    return tuple(u.pin_memory() for u in t) if isinstance(t, tuple) else t.pin_memory()


def _pinned(batch: tuple, pin: bool) -> tuple:
    """Page-locked copies (CUDA only), so the step's host-to-device copies run asynchronously."""
    return tuple(_pin(t) for t in batch) if pin else batch


def train_batches(split: Split, bank: FeatureBank | None, rows: np.ndarray, batch_size: int,
                  rng: np.random.Generator, extra: int = 0, pool: np.ndarray | None = None, *,
                  workers: int = 0, depth: int = 2, device: torch.device | None = None, endless: bool = False):
    """(inputs, features or None, labels) of each batch, assembled ahead by ``workers`` threads.

    On CUDA, images travel as pinned uint8 and are normalised on the device (``prepare_inputs``);
    elsewhere they arrive ready for the student.
    """
    cuda = device is not None and device.type == "cuda"

    def build(plan):
        ids, params, views, feats, labels = plan
        x = split.inputs.batch(ids, params, views, normalize=not cuda)
        phi = None if feats is None else torch.from_numpy(feats)
        return _pinned((x, phi, torch.from_numpy(labels)), cuda)

    return prefetch(train_plans(split, bank, rows, batch_size, rng, extra, pool, endless), build, workers, depth)


def prepare_inputs(x: Any, device: torch.device) -> Any:
    """On the device: uint8 images (the CUDA path) become the student's float input."""
    x = to_device(x, device)
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        return Inputs.to_model(x)
    return x


def eval_batches(split: Split, rows: np.ndarray, batch_size: int, workers: int, depth: int,
                 device: torch.device) -> Any:
    """(inputs, labels) of consecutive row slices, assembled ahead like training batches."""
    cuda = device.type == "cuda"

    def build(ids):
        x = split.inputs.batch(ids, normalize=not cuda)
        return _pinned((x, torch.from_numpy(split.cache.labels[ids])), cuda)

    return prefetch((rows[i:i + batch_size] for i in range(0, len(rows), batch_size)), build, workers, depth)


def _read_losses(sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """The only place the loop waits for the device: once per LOSS_READ_EVERY steps and per epoch."""
    return {k: float(v) / max(steps, 1) for k, v in sums.items()}


@torch.no_grad()
def evaluate(learner: Learner, split: Split, num_classes: int, device: torch.device, dist_: Dist,
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


def resolve_resume(cfg: TrainConfig, path: str, log: Log) -> tuple[TrainConfig, dict[str, Any]]:
    """The checkpoint's config wins (it is the same run), except optim.epochs, which may extend it."""
    state = ckpt_io.load(path)
    drift = ckpt_io.config_drift(state["config"], to_dict(cfg))
    for key, (old, new) in drift.items():
        wins = "new value" if key == "optim.epochs" else "checkpoint value"
        ckpt_io.warn(f"resume: {key} was {old!r}, now {new!r}; the {wins} wins")
    saved = load_config(TrainConfig, data={**state["config"],
                                           "optim": {**state["config"]["optim"], "epochs": cfg.optim.epochs}})
    return saved, state


def run(cfg: TrainConfig, *, resume: bool = False, log: Log = print) -> dict[str, Any]:
    dist_ = setup()
    say: Log = log if dist_.is_main else (lambda _msg: None)
    try:
        return _run(cfg, resume, dist_, say)
    finally:
        teardown()


def _run(cfg: TrainConfig, resume: bool, dist_: Dist, log: Log) -> dict[str, Any]:
    t_start = time.time()
    storage.set_options(cfg.data.storage)  # before resume: a checkpoint's config never holds them
    ckpt_path = os.path.join(cfg.out_dir, "checkpoint.pt")
    state = None
    if resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"{ckpt_path}: nothing to resume")
        cfg, state = resolve_resume(cfg, ckpt_path, log)
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = pick_device(dist_.local_rank)
    spec = methods.get(cfg.method.name)
    splits, num_classes = build_splits(cfg.data, cfg.student, unlabeled=spec.unlabeled)
    train = splits["train"]
    bank = FeatureBank(train.cache, cfg.data.teachers, train.rows, cfg.data.max_ram_gb,
                       cfg.data.standardize_teachers) if spec.needs_features else None
    extra = cfg.data.unlabeled_per_batch if bank is not None else 0
    if extra and not bank.in_memory:
        raise ConfigError("data.unlabeled_per_batch: needs the features in memory; raise data.max_ram_gb "
                         f"(they are {bank.dim}-d over {train.cache.rows} rows)")
    if extra:
        log(f"unlabeled rows: {extra} per batch from {len(train.unlabeled)} rows outside the label budget "
            "(features only)")
    if bank is not None:
        log(f"features: {', '.join(bank.teachers)} (dim {bank.dim}), "
            f"{'in memory' if bank.in_memory else 'streamed chunk by chunk'}")
        if train.cache.views == 1:
            log("store has one view per row: feature methods use the eval view only (no augmentation)")
    vocab = getattr(train.inputs.tokenizer, "vocab_size", 30522)
    spec = StudentSpec(cfg.student.name, num_classes, cfg.student.image_size, vocab, cfg.student.max_length,
                       cfg.student.width)
    student = build_student(spec, resolve_path(cfg.student.checkpoint) or None, cfg.student.key_map)
    if cfg.student.embeddings and not (state or cfg.student.checkpoint):
        init_embeddings(student, read_word_embeddings(resolve_path(cfg.student.embeddings)), cfg.student.embeddings)
    chunked = bank.chunk_rows if bank is not None and not bank.in_memory else None
    rank_rows = shard_rows(train.rows, dist_, chunked)
    rank_unlabeled = shard_rows(train.unlabeled, dist_)
    epoch_steps = steps_per_epoch(train.rows, dist_, cfg.optim.batch_size, chunked)
    if epoch_steps == 0 and not cfg.optim.steps:
        raise ConfigError(f"optim.batch_size: {cfg.optim.batch_size} is more than the "
                         f"{len(train.rows) // dist_.world} training rows per process "
                         "(or set optim.steps: a budget of steps draws the rows again)")
    budget = make_budget(cfg.optim, epoch_steps)
    method = build_method(cfg, feature_dim(student, spec), bank, train, num_classes, cfg.out_dir, log,
                          budget.total)
    learner = Learner(student, method).to(device)
    model: nn.Module = learner
    if dist_.world > 1:
        model = nn.parallel.DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(cfg, learner)
    for group in optimizer.param_groups[1:]:
        log(f"{group['name']}: lr {group['lr']:g}, weight decay {group['weight_decay']:g}, the same schedule")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, budget.warmup, budget.total))
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        ckpt_io.restore(state, ckpt_path, learner, optimizer, scheduler)
        history, start_epoch = state["history"], state["epoch"]
        log(f"resumed from {ckpt_path} after epoch {start_epoch}")
    amp = cfg.amp and device.type == "cuda"
    log(f"inputs: {describe_inputs(splits)}")
    log(f"{cfg.method.name} | student {cfg.student.name} ({count_parameters(student):,} params) | "
        f"{len(train.rows)} train / {len(splits['val'].rows)} val / {len(splits['test'].rows)} test rows | "
        f"{device} x{dist_.world} | {budget.describe()}")
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    loader = {"workers": cfg.data.loader_workers, "depth": cfg.data.prefetch}
    for epoch in range(start_epoch, budget.periods):  # an epoch, or a period of eval_every steps
        rng = np.random.default_rng([cfg.seed, epoch, dist_.rank])
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 101 + dist_.rank)
        sums: dict[str, torch.Tensor] = {}  # on the device: read every LOSS_READ_EVERY steps, not every step
        t0, rows_done, steps = time.time(), 0, budget.steps_in(epoch)
        done_steps = epoch * budget.period_steps + steps
        desc = f"steps {done_steps}/{budget.total}" if budget.by_steps else f"epoch {epoch + 1}/{budget.periods}"
        bar = tqdm(total=steps, desc=desc, disable=None if dist_.is_main else True, file=sys.stderr, leave=False)
        batches = train_batches(train, bank, rank_rows, cfg.optim.batch_size, rng, extra, rank_unlabeled,
                                device=device, endless=budget.by_steps, **loader)
        with closing(batches):
            for step, (x, phi, y) in zip(range(steps), batches):
                x, y = prepare_inputs(x, device), y.to(device, non_blocking=True)
                phi = None if phi is None else phi.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    _, parts = model(x, phi, y)
                loss = sum(parts.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    nn.utils.clip_grad_norm_(learner.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                for k, v in parts.items():
                    v = v.detach().to(acc_dtype)
                    sums[k] = sums[k] + v if k in sums else v
                rows_done += len(y)
                if not bar.disable and (step + 1) % LOSS_READ_EVERY == 0:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in _read_losses(sums, step + 1).items()}, refresh=False)
                bar.update(1)
        bar.close()
        losses = _read_losses(sums, steps)
        secs = time.time() - t0
        if cfg.student.bn_stats == "recompute":
            recompute_bn(learner.student, train, rank_rows, cfg.optim.batch_size, device, loader)
        val = evaluate(learner, splits["val"], num_classes, device, dist_, **loader)
        record = {"epoch": epoch + 1, "step": done_steps, "losses": losses, "loss": sum(losses.values()),
                  "val_accuracy": val["accuracy"], "val_loss": val["loss"], "lr": scheduler.get_last_lr()[0],
                  "epoch_seconds": secs, "rows_per_second": rows_done * dist_.world / secs,
                  **learner.method.diagnostics()}
        history.append(record)
        val_text = "-" if val["accuracy"] is None else f"{val['accuracy']:.4f}"
        where = f"step {done_steps}/{budget.total}" if budget.by_steps else f"epoch {epoch + 1}/{budget.periods}"
        log(f"{where}  " + "  ".join(f"{k} {v:.4f}" for k, v in losses.items())
            + f"  val_acc {val_text}{describe_diagnostics(record)}  {record['rows_per_second']:.0f} rows/s")
        if dist_.is_main:
            ckpt_io.save(ckpt_path, learner=learner.state_dict(), optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), epoch=epoch + 1, history=history, config=to_dict(cfg))
            atomic.write_text(os.path.join(cfg.out_dir, "metrics.jsonl"), "".join(_json_line(r) for r in history))
        barrier()
    test = evaluate(learner, splits["test"], num_classes, device, dist_, **loader)
    results = _results(cfg, splits, bank, history, test, count_parameters(student), time.time() - t_start, dist_,
                       str(device))
    if dist_.is_main:
        weights = {"model": student.state_dict()}
        atomic.write_with(os.path.join(cfg.out_dir, "student.pt"), lambda fh: torch.save(weights, fh))
        atomic.write_json(os.path.join(cfg.out_dir, "config.json"), to_dict(cfg))
        atomic.write_json(os.path.join(cfg.out_dir, "results.json"), results)  # last: marks the run done
    log(f"done: {cfg.method.name} test accuracy {test['accuracy']:.4f} on {test['rows']} rows "
        f"({results['wall_seconds']:.1f} s) -> {cfg.out_dir}/results.json")
    return results


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


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def _results(cfg: TrainConfig, splits: dict[str, Split], bank: FeatureBank | None, history: list[dict[str, Any]],
             test: dict[str, Any], params: int, wall: float, dist_: Dist, device: str) -> dict[str, Any]:
    train = splits["train"].cache
    teachers = bank.teachers if bank is not None else []
    return {
        "method": cfg.method.name, "student": cfg.student.name, "student_parameters": params,
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "test_per_class_accuracy": test["per_class_accuracy"], "test_rows": test["rows"],
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "final_losses": history[-1]["losses"] if history else {},
        "epochs": len(history), "steps": history[-1].get("step") if history else 0,
        "diagnostics": {k: history[-1][k] for k in DIAGNOSTIC_KEYS if history and k in history[-1]},
        "val_trend": val_trend(history), "bn_stats": cfg.student.bn_stats,
        "train_rows": int(len(splits["train"].rows)),
        "store": {"path": train.path, "dataset_fingerprint": train.dataset_fingerprint,
                  "teachers": {t: train.teacher_info(t)["fingerprint"] for t in teachers}},
        "test_store": splits["test"].cache.path, "config": to_dict(cfg), "wall_seconds": wall,
        "world_size": dist_.world, "device": device, "featcache": created_by(),
    }
