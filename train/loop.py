"""One student run as a recipe of named phases, read top to bottom: data, model and method,
optimiser and schedule, the training periods (epochs, or a budget of steps), evaluation, results.
Batch plumbing lives in ``batches``, the budget and schedule in ``schedule``, what a run measures in
``evaluation``."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from featcache.plumbing import atomic, storage
from featcache.plumbing.config import ConfigError, load_config, to_dict
from featcache.plumbing.distributed import Dist, barrier, pick_device, setup, teardown
from featcache.plumbing.paths import resolve_path
from featcache.plumbing.provenance import created_by
from featcache.plumbing.weights import read_tensors

from . import checkpoint as ckpt_io
from . import methods
from .batches import prepare_inputs, shard_rows, steps_per_epoch, train_batches
from .config import TrainConfig
from .data import FeatureBank, Split, build_splits, describe_inputs, tokenizer_path
from .evaluation import DIAGNOSTIC_KEYS, describe_diagnostics, evaluate, recompute_bn, val_trend
from .losses import MethodLoss
from .methods import BuildContext
from .model_card import run_classes, write_run_extras
from .probe import fit_linear_probe, probe_accuracy
from .schedule import Budget, lr_factor, make_budget
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


def make_optimizer(cfg: TrainConfig, learner: Learner) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = [{"params": list(learner.student.parameters()), "lr": o.lr, "weight_decay": o.weight_decay,
               "name": "student"}, *learner.method.param_groups(o.lr, o.weight_decay)]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    return (torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam)(groups, lr=o.lr)


def _read_losses(sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """The only place the loop waits for the device: once per LOSS_READ_EVERY steps and per epoch."""
    return {k: float(v) / max(steps, 1) for k, v in sums.items()}


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


@dataclass
class Data:
    """The data phase's result: the splits, the training rows this process takes, the features."""

    splits: dict[str, Split]
    num_classes: int
    bank: FeatureBank | None
    rows: np.ndarray  # this process's labeled training rows
    unlabeled: np.ndarray  # this process's rows outside the label budget (features only)
    extra: int  # unlabeled rows joining each batch
    epoch_steps: int  # full batches of one pass (the same on every rank)

    @property
    def train(self) -> Split:
        return self.splits["train"]


@dataclass
class Model:
    """The model phase's result, then the optimiser phase's: what the periods update."""

    student: nn.Module
    learner: Learner
    wrapped: nn.Module  # the learner, or its DDP wrapper
    budget: Budget
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0  # the first period to run (after a resume)


def load_data(cfg: TrainConfig, dist_: Dist, log: Log) -> Data:
    """Splits of the stores, the cached features the method reads, and this process's rows."""
    spec = methods.get(cfg.method.name)
    splits, num_classes = build_splits(cfg, unlabeled=spec.unlabeled)
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
    chunked = bank.chunk_rows if bank is not None and not bank.in_memory else None
    epoch_steps = steps_per_epoch(train.rows, dist_, cfg.optim.batch_size, chunked)
    if epoch_steps == 0 and not cfg.optim.steps:
        raise ConfigError(f"optim.batch_size: {cfg.optim.batch_size} is more than the "
                         f"{len(train.rows) // dist_.world} training rows per process "
                         "(or set optim.steps: a budget of steps draws the rows again)")
    return Data(splits, num_classes, bank, shard_rows(train.rows, dist_, chunked), shard_rows(train.unlabeled, dist_),
                extra, epoch_steps)


def build_model(cfg: TrainConfig, data: Data, state: dict[str, Any] | None, device: torch.device, dist_: Dist,
                log: Log) -> Model:
    """The student (from its weights, if any) and the method's loss, as one learner on the device."""
    vocab = getattr(data.train.inputs.tokenizer, "vocab_size", 30522)
    spec = StudentSpec(cfg.student.name, data.num_classes, cfg.student.image_size, vocab, cfg.student.max_length,
                       cfg.student.width)
    student = build_student(spec, resolve_path(cfg.student.checkpoint) or None, cfg.student.key_map)
    if cfg.student.embeddings and not (state or cfg.student.checkpoint):
        init_embeddings(student, read_word_embeddings(resolve_path(cfg.student.embeddings)), cfg.student.embeddings)
    budget = make_budget(cfg.optim, data.epoch_steps)
    method = build_method(cfg, feature_dim(student, spec), data.bank, data.train, data.num_classes, cfg.out_dir,
                          log, budget.total)
    learner = Learner(student, method).to(device)
    wrapped: nn.Module = learner
    if dist_.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    return Model(student, learner, wrapped, budget)


def build_optimizer(cfg: TrainConfig, model: Model, state: dict[str, Any] | None, ckpt_path: str, log: Log) -> None:
    """The optimiser (the method's own parameter groups beside the student's) and its schedule,
    restored with the history when resuming."""
    model.optimizer = make_optimizer(cfg, model.learner)
    for group in model.optimizer.param_groups[1:]:
        log(f"{group['name']}: lr {group['lr']:g}, weight decay {group['weight_decay']:g}, the same schedule")
    budget = model.budget
    model.scheduler = torch.optim.lr_scheduler.LambdaLR(model.optimizer,
                                                        lambda s: lr_factor(s, budget.warmup, budget.total))
    if state is not None:
        ckpt_io.restore(state, ckpt_path, model.learner, model.optimizer, model.scheduler)
        model.history, model.start = state["history"], state["epoch"]
        log(f"resumed from {ckpt_path} after epoch {model.start}")


def train_period(cfg: TrainConfig, data: Data, model: Model, period: int, device: torch.device, dist_: Dist,
                 loader: dict[str, int]) -> tuple[dict[str, float], int, float]:
    """The steps of one period (an epoch, or eval_every steps): (mean losses, rows seen, seconds)."""
    rng = np.random.default_rng([cfg.seed, period, dist_.rank])
    torch.manual_seed(cfg.seed * 1_000_003 + period * 101 + dist_.rank)
    budget, optimizer, scheduler = model.budget, model.optimizer, model.scheduler
    amp = cfg.amp and device.type == "cuda"
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    sums: dict[str, torch.Tensor] = {}  # on the device: read every LOSS_READ_EVERY steps, not every step
    t0, rows_done, steps = time.time(), 0, budget.steps_in(period)
    bar = tqdm(total=steps, desc=_where(budget, period), disable=None if dist_.is_main else True, file=sys.stderr,
               leave=False)
    batches = train_batches(data.train, data.bank, data.rows, cfg.optim.batch_size, rng, data.extra, data.unlabeled,
                            device=device, endless=budget.by_steps, **loader)
    with closing(batches):
        for step, (x, phi, y) in zip(range(steps), batches):
            x, y = prepare_inputs(x, device), y.to(device, non_blocking=True)
            phi = None if phi is None else phi.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                _, parts = model.wrapped(x, phi, y)
            loss = sum(parts.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.learner.parameters(), cfg.optim.grad_clip)
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
    return _read_losses(sums, steps), rows_done, time.time() - t0


def _where(budget: Budget, period: int) -> str:
    done = budget.done_after(period)
    return f"step {done}/{budget.total}" if budget.by_steps else f"epoch {period + 1}/{budget.periods}"


def evaluate_period(cfg: TrainConfig, data: Data, model: Model, period: int, losses: dict[str, float],
                    rows_done: int, secs: float, device: torch.device, dist_: Dist, loader: dict[str, int],
                    log: Log) -> None:
    """Validation after a period, its record logged and kept, the checkpoint written (rank 0)."""
    if cfg.student.bn_stats == "recompute":
        recompute_bn(model.student, data.train, data.rows, cfg.optim.batch_size, device, loader)
    val = evaluate(model.learner, data.splits["val"], data.num_classes, device, dist_, **loader)
    budget = model.budget
    record = {"epoch": period + 1, "step": budget.done_after(period), "losses": losses,
              "loss": sum(losses.values()), "val_accuracy": val["accuracy"], "val_loss": val["loss"],
              "lr": model.scheduler.get_last_lr()[0], "epoch_seconds": secs,
              "rows_per_second": rows_done * dist_.world / secs, **model.learner.method.diagnostics()}
    model.history.append(record)
    val_text = "-" if val["accuracy"] is None else f"{val['accuracy']:.4f}"
    log(f"{_where(budget, period)}  " + "  ".join(f"{k} {v:.4f}" for k, v in losses.items())
        + f"  val_acc {val_text}{describe_diagnostics(record)}  {record['rows_per_second']:.0f} rows/s")
    if dist_.is_main:
        ckpt_io.save(os.path.join(cfg.out_dir, "checkpoint.pt"), learner=model.learner.state_dict(),
                     optimizer=model.optimizer.state_dict(), scheduler=model.scheduler.state_dict(),
                     epoch=period + 1, history=model.history, config=to_dict(cfg))
        atomic.write_text(os.path.join(cfg.out_dir, "metrics.jsonl"), "".join(_json_line(r) for r in model.history))
    barrier()


def finish(cfg: TrainConfig, data: Data, model: Model, device: torch.device, dist_: Dist, loader: dict[str, int],
           t_start: float, log: Log) -> dict[str, Any]:
    """The test split, then the student's weights, the config, MODEL_CARD.md and results.json (last: marks
    the run done)."""
    test = evaluate(model.learner, data.splits["test"], data.num_classes, device, dist_, **loader)
    results = _results(cfg, data.splits, data.bank, model.history, test, count_parameters(model.student),
                       time.time() - t_start, dist_, str(device))
    results["classes"] = run_classes(data.splits, data.num_classes)
    if dist_.is_main:
        weights = {"model": model.student.state_dict()}
        atomic.write_with(os.path.join(cfg.out_dir, "student.pt"), lambda fh: torch.save(weights, fh))
        atomic.write_json(os.path.join(cfg.out_dir, "config.json"), to_dict(cfg))
        write_run_extras(cfg.out_dir, to_dict(cfg), results,  # MODEL_CARD.md (+ a text student's tokenizer)
                         resolve_path(tokenizer_path(cfg)) if data.train.inputs.modality == "text" else "")
        atomic.write_json(os.path.join(cfg.out_dir, "results.json"), results)
    log(f"done: {cfg.method.name} test accuracy {test['accuracy']:.4f} on {test['rows']} rows "
        f"({results['wall_seconds']:.1f} s) -> {cfg.out_dir}/results.json")
    return results


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
    data = load_data(cfg, dist_, log)
    model = build_model(cfg, data, state, device, dist_, log)
    build_optimizer(cfg, model, state, ckpt_path, log)
    log(f"inputs: {describe_inputs(data.splits)}")
    log(f"{cfg.method.name} | student {cfg.student.name} ({count_parameters(model.student):,} params) | "
        f"{len(data.train.rows)} train / {len(data.splits['val'].rows)} val / {len(data.splits['test'].rows)} test "
        f"rows | {device} x{dist_.world} | {model.budget.describe()}")
    loader = {"workers": cfg.data.loader_workers, "depth": cfg.data.prefetch}
    for period in range(model.start, model.budget.periods):
        losses, rows_done, secs = train_period(cfg, data, model, period, device, dist_, loader)
        evaluate_period(cfg, data, model, period, losses, rows_done, secs, device, dist_, loader, log)
    return finish(cfg, data, model, device, dist_, loader, t_start, log)


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
