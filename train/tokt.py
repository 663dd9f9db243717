"""Task-oriented knowledge transfer (Vemulapalli et al., ICML 2024) on top of the cache.

1. Fit a task head on the teacher: a linear probe on the cached features of the
   labeled rows (no teacher is loaded).
2. Cache the head's logits on the transfer set as an output of that teacher, then
   train the student to match them (KL, temperature T) on the unlabeled rows.
3. Fine-tune the student on the labeled rows with any stage-2 method.

The paper's baseline, task-agnostic transfer, replaces step 2 by matching the
teacher's features on the same transfer set; a random transfer set of the same
size is the control for retrieval.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from featcache.cache_tools import FeatureCache

from featcache.plumbing import atomic
from featcache.plumbing.config import ConfigError, load_config, to_dict

from .config import TrainConfig
from .data import FeatureBank, build_splits
from .loop import run
from .methods import registry
from .probe import fit_linear_probe, probe_accuracy

Log = Callable[[str], None]


@dataclass(frozen=True)
class ToktOptions:
    teacher: str = "effnet_lite0"  # whose features make the head and the retrieval
    logits_teacher: str = ""  # "" = fit a head on cached features; else cached logits of a fine-tuned
    #                           teacher in the transfer store (featcache-extract finetune)
    transfer_store: str = "stores/fashion_mnist/transfer.zarr"  # retrieved (featcache-cache retrieve)
    random_transfer_store: str = "stores/fashion_mnist/transfer_random.zarr"  # same size, random (--random)
    temperature: float = 2.0
    pretrain_epochs: int = 10
    finetune_method: registry.MethodName = "stl"  # any registered method
    head_l2: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)  # compare: one run per seed and method
    methods: tuple[str, ...] = ("stl", "aft", "task_agnostic", "tokt_random", "tokt")  # compare


@dataclass(frozen=True)
class ToktConfig(TrainConfig):
    tokt: ToktOptions = field(default_factory=ToktOptions)


def train_config(cfg: ToktConfig, **changes: Any) -> TrainConfig:
    """A plain TrainConfig from the shared sections, with nested changes like data={"store": ...}."""
    base = to_dict(cfg)
    base.pop("tokt")
    for key, value in changes.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return load_config(TrainConfig, data=base)


def fit_task_head(cfg: ToktConfig, out_dir: str, log: Log) -> tuple[torch.nn.Linear, str]:
    """Step 1: the teacher's task head, from the cached features of the labeled training rows."""
    splits, num_classes = build_splits(cfg)
    train = splits["train"]
    bank = FeatureBank(train.cache, (cfg.tokt.teacher,), train.rows, cfg.data.max_ram_gb)
    head = fit_linear_probe(bank.take_eval(train.rows), train.labels, num_classes, l2=cfg.tokt.head_l2, seed=0)
    val = splits["val"]
    if len(val.rows):
        vf = FeatureBank(val.cache, (cfg.tokt.teacher,), val.rows, cfg.data.max_ram_gb).take_eval(val.rows)
        log(f"task head on {cfg.tokt.teacher}: val accuracy {probe_accuracy(head, vf, val.labels):.4f}")
    state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    os.makedirs(out_dir, exist_ok=True)
    atomic.write_with(os.path.join(out_dir, "head.pt"), lambda fh: torch.save(state, fh))
    return head, digest


def cache_task_logits(transfer_store: str, teacher: str, head: torch.nn.Linear, head_sha: str) -> str:
    """Step 2a: the head's logits on the transfer set, stored as an output of the teacher."""
    cache = FeatureCache.open(transfer_store, mode="r+")
    name = f"{teacher}.logits_{head_sha[:10]}"
    parent = cache.teacher_info(teacher)
    spec = {"derived_from": parent["fingerprint"], "output": "task logits of a linear head",
            "head_sha256": head_sha, "classes": head.out_features}
    cache.add_teacher(name, head.out_features, spec, dtype="float32")
    todo = cache.missing_partitions().get(name, [])
    for p in todo:
        a, b = cache.partition_range(p)
        feats = torch.as_tensor(cache.read(teacher, a, b), dtype=torch.float32)
        with torch.no_grad():
            logits = head(feats).numpy()
        cache.write_partition(p, features={name: logits})
    cache.close()
    return name


TOKT_VARIANTS = ("tokt", "tokt_random", "task_agnostic")


def run_tokt(cfg: ToktConfig, out_dir: str | None = None, variant: str = "tokt", log: Log = print) -> dict[str, Any]:
    """The three steps. ``tokt_random`` distils on the random transfer set; ``task_agnostic``
    is the paper's baseline (step 2 matches the teacher's features instead of the task logits)."""
    if variant not in TOKT_VARIANTS:
        raise ConfigError(f"tokt variant {variant!r} unknown (known: {', '.join(TOKT_VARIANTS)})")
    out = out_dir or cfg.out_dir
    transfer = cfg.tokt.random_transfer_store if variant == "tokt_random" else cfg.tokt.transfer_store
    if variant == "task_agnostic":
        teachers, method = (cfg.tokt.teacher,), {"name": "distill_features"}
    elif cfg.tokt.logits_teacher:
        teachers, method = (cfg.tokt.logits_teacher,), {"name": "distill_logits", "temperature": cfg.tokt.temperature}
    else:
        head, sha = fit_task_head(cfg, out, log)
        teachers = (cache_task_logits(transfer, cfg.tokt.teacher, head, sha),)
        method = {"name": "distill_logits", "temperature": cfg.tokt.temperature}
    pre = train_config(cfg, out_dir=os.path.join(out, "pretrain"),
                       data={"store": transfer, "teachers": teachers, "label_budget": 0, "val_store": "",
                             "standardize_teachers": False},
                       student={"checkpoint": ""}, method=method, optim={"epochs": cfg.tokt.pretrain_epochs})
    log(f"step 2: {method['name']} on {transfer}")
    pre_res = run(pre, log=log)
    fine = train_config(cfg, out_dir=os.path.join(out, "finetune"), method={"name": cfg.tokt.finetune_method},
                        student={"checkpoint": os.path.join(pre.out_dir, "student.pt")})
    log(f"step 3: fine-tune with {cfg.tokt.finetune_method} on {cfg.data.store}")
    res = run(fine, log=log)
    summary = {**res, "variant": variant, "transfer_store": transfer,
               "pretrain_test_accuracy": pre_res["test_accuracy"], "tokt": to_dict(cfg)["tokt"]}
    atomic.write_json(os.path.join(out, "results.json"), summary)
    return summary


def run_variant(cfg: ToktConfig, variant: str, seed: int, out: str, log: Log) -> dict[str, Any]:
    """One cell of the comparison table: a TOKT variant, or a plain stage-2 method."""
    seeded = dataclasses.replace(cfg, seed=seed)
    if variant in TOKT_VARIANTS:
        return run_tokt(seeded, out, variant, log=log)
    return run(train_config(seeded, out_dir=out, method={"name": variant}), log=log)


def compare(cfg: ToktConfig, log: Log = print) -> list[dict[str, Any]]:
    """Every method x seed on the same cache, then the shared table (``featcache-train compare``)."""
    from .compare import markdown, summarize

    for variant in cfg.tokt.methods:
        for seed in cfg.tokt.seeds:
            out = os.path.join(cfg.out_dir, variant, f"seed{seed}")
            if os.path.exists(os.path.join(out, "results.json")):
                log(f"{variant:<14} seed {seed}: finished earlier, kept")
                continue
            res = run_variant(cfg, variant, seed, out, log=lambda _m: None)
            log(f"{variant:<14} seed {seed}: test accuracy {res['test_accuracy']:.4f}")
    records = summarize(cfg.out_dir)
    atomic.write_json(os.path.join(cfg.out_dir, "compare.json"), {"table": records, "config": to_dict(cfg)})
    atomic.write_text(os.path.join(cfg.out_dir, "compare.md"), markdown(records) + "\n")
    log(markdown(records))
    return records
