"""TOKT step 1, full version: fine-tune a teacher with a task head on the labeled rows, then
cache the fine-tuned teacher's task logits in a target store (the transfer set).

This is stage-1 work because it loads the teacher; stage 2 then reads the logits like any
cached teacher output (``tokt.logits_teacher``). The default TOKT path, a linear head fitted on
cached features, needs no teacher at all (train/tokt.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from featcache.cache_tools import CacheError, FeatureCache, require_complete
from featcache.rawdata import InputError, Source, source_of
from featcache.rawdata.views import apply_view

from .config import TeacherConfig
from .teachers import Teacher, best_device, build_teacher


def open_with_inputs(path: str, data_root: str = "", mode: str = "r") -> tuple[FeatureCache, Source]:
    """A complete store and the raw inputs it was built from."""
    cache = FeatureCache.open(path, mode=mode)
    require_complete(cache)
    return cache, source_of(cache, data_root)


@dataclass(frozen=True)
class FinetuneConfig:
    labeled_store: str = "stores/fashion_mnist/labeled10.zarr"  # valid labeled rows define the task
    target_store: str = "stores/fashion_mnist/transfer.zarr"  # gets the fine-tuned teacher's logits
    output_name: str = ""  # "" = "<teacher name>.finetuned"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    epochs: int = 5
    lr: float = 1e-4  # the teacher's weights
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    data_root: str = ""  # relocate the raw inputs of both stores
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    def validate(self) -> list[str]:
        errors = []
        if self.epochs < 1:
            errors.append("epochs: must be >= 1")
        if self.batch_size < 1:
            errors.append("batch_size: must be >= 1")
        return errors


def _load(source: Source, rows: np.ndarray) -> list[Any]:
    try:
        return [source.load(int(i)) for i in rows]
    except InputError as exc:  # the stores say these rows decoded: the files changed since
        raise InputError(f"{exc}; the raw inputs changed since the store was written") from exc


def train_head(cfg: FinetuneConfig, teacher: Teacher, model: torch.nn.Module, cache: FeatureCache, source: Source,
               log) -> tuple[torch.nn.Linear, list[float]]:
    rows = cache.labeled_rows()
    if len(rows) == 0:
        raise CacheError(f"{cache.path}: no valid labeled rows to fine-tune on")
    classes = max(len(cache.source.get("classes") or []), int(cache.labels.max()) + 1)
    head = torch.nn.Linear(teacher.dim, classes).to(next(model.parameters()).device)
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": cfg.lr},
                             {"params": head.parameters(), "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.train()
    losses = []
    for epoch in range(cfg.epochs):
        perm, total, seen = rng.permutation(rows), 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i:i + cfg.batch_size]
            y = torch.as_tensor(cache.labels[b], device=head.weight.device)
            loss = F.cross_entropy(head(teacher.features(teacher.prepare(_load(source, b))).float()), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + float(loss) * len(b), seen + len(b)
        losses.append(total / seen)
        log(f"fine-tune epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f}")
    model.eval()
    return head.eval(), losses


def cache_logits(cfg: FinetuneConfig, teacher: Teacher, head: torch.nn.Linear, spec: dict[str, Any]) -> str:
    """The fine-tuned teacher's logits for every row (and view) of the target store."""
    target, source = open_with_inputs(cfg.target_store, cfg.data_root, mode="r+")
    name = cfg.output_name or f"{teacher.name}.finetuned"
    target.add_teacher(name, head.out_features, spec, dtype="float32")
    todo = target.missing_partitions().get(name, [])
    k, valid, params = target.views, target.valid, target.view_params
    bar = tqdm(total=sum(target.partition_range(p)[1] - target.partition_range(p)[0] for p in todo), unit="rows",
               desc="logits", disable=None)
    for p in todo:
        a, b = target.partition_range(p)
        out = np.zeros((b - a, k, head.out_features) if k > 1 else (b - a, head.out_features), np.float32)
        for s in range(a, b, cfg.batch_size):
            rows = np.arange(s, min(s + cfg.batch_size, b))
            rows = rows[valid[rows]]
            if len(rows) == 0:
                continue
            raws = _load(source, rows)
            items = [apply_view(r, params[i, v]) if v else r for r, i in zip(raws, rows) for v in range(k)]
            with torch.inference_mode():
                logits = head(teacher.encode(teacher.prepare(items)).to(head.weight.device)).cpu().numpy()
            out[rows - a] = logits.reshape(len(rows), k, -1) if k > 1 else logits
            bar.update(len(rows))
        target.write_partition(p, features={name: out})
    bar.close()
    target.close()
    return name


def run_finetune(cfg: FinetuneConfig, log=print) -> dict[str, Any]:
    t0 = time.time()
    labeled, source = open_with_inputs(cfg.labeled_store, cfg.data_root)
    device = best_device(cfg.device)
    teacher = build_teacher(cfg.teacher, device, source.modality)
    model = teacher.model
    head, losses = train_head(cfg, teacher, model, labeled, source, log)
    spec = {**teacher.spec(), "output": "task logits of the fine-tuned teacher",
            "finetuned_on": labeled.dataset_fingerprint, "epochs": cfg.epochs, "lr": cfg.lr, "head_lr": cfg.head_lr,
            "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size, "seed": cfg.seed}
    name = cache_logits(cfg, teacher, head, spec)
    log(f"fine-tuned {teacher.name} on {labeled.rows} rows of {labeled.path}; logits cached as {name!r} "
        f"in {cfg.target_store} ({time.time() - t0:.1f} s)")
    return {"output_name": name, "losses": losses, "target_store": cfg.target_store}
