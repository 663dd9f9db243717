"""The schema of a training run. Every option has a default that works; TOML files in
configs/ override it and ``--set section.key=value`` overrides those."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from featcache.plumbing.storage import storage_field

from .methods import registry

# the [data] keys only methods with teacher features read
FEATURE_DATA_KEYS = ("teachers", "standardize_teachers", "unlabeled_per_batch", "max_ram_gb")
# the [data] keys that decide how fast batches arrive, never what they hold (same seed, same run)
PIPELINE_DATA_KEYS = ("cached_inputs", "loader_workers", "prefetch")


@dataclass(frozen=True)
class DataConfig:
    store: str = "stores/fashion_mnist/train.zarr"  # features + labels of the training split
    test_store: str = "stores/fashion_mnist/test.zarr"  # "" = carve test_fraction out of `store`
    val_store: str = ""  # "" = carve val_fraction out of the training rows
    data_root: str = ""  # relocate the raw inputs recorded in the store
    teachers: tuple[str, ...] = ()  # () = every teacher in the store, concatenated
    standardize_teachers: bool = False  # centre + scale each teacher block to unit mean norm
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0  # carving val/test and the label budget: fixed so seeds compare on one split
    label_budget: int = 0  # labeled training rows per class; 0 = all
    # feature methods: add this many rows from outside the label budget to every batch; their cached
    # features join the method's feature term (AFT's kernel, KD, RKD, kd_pred's soft labels), their
    # labels are never read. 0 = labeled rows only (the papers' setting). Features must fit max_ram_gb.
    unlabeled_per_batch: int = 0
    max_ram_gb: float = 4.0  # hold features in memory up to this size, else stream chunks
    tokenizer: str = ""  # local Hugging Face tokenizer directory (text students)
    decode_threads: int = 2
    # student inputs cached in the store (`featcache-cache inputs`): "auto" uses a complete set
    # matching student.image_size and student.resize_filter and decodes otherwise; "require"
    # refuses to decode; "off" always decodes. Cached or decoded, the pixels are the same.
    cached_inputs: Literal["auto", "require", "off"] = "auto"
    loader_workers: int = 2  # threads assembling batches ahead of the step; 0 = on the step's thread
    prefetch: int = 4  # batches ready ahead of the step (the bounded queue)
    # [data.storage]: fsspec options of s3:// gs:// az:// stores (endpoint_url, profile, anon, ...), for
    # store, test_store and val_store; never saved anywhere. --storage-option KEY=VALUE overrides them.
    storage: dict[str, Any] = storage_field()

    def validate(self) -> list[str]:
        errors = []
        if self.loader_workers < 0:
            errors.append("loader_workers: must be >= 0")
        if self.prefetch < 1:
            errors.append("prefetch: must be >= 1")
        if self.decode_threads < 1:
            errors.append("decode_threads: must be >= 1")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                errors.append(f"{name}: must be in [0, 1)")
        if self.label_budget < 0:
            errors.append("label_budget: must be >= 0")
        if self.unlabeled_per_batch < 0:
            errors.append("unlabeled_per_batch: must be >= 0")
        if self.max_ram_gb <= 0:
            errors.append("max_ram_gb: must be > 0")
        if not self.store:
            errors.append("store: must name a feature store")
        return errors


@dataclass(frozen=True)
class StudentConfig:
    # a small built-in (small_cnn, text_cnn, text_transformer, vit_tiny; resnet18 and mobilenet_v3_small
    # are torchvision's) or a library's network: "timm:<architecture>", "torchvision:<architecture>",
    # "hf:<local directory or pkg:package/dir>" (a Hugging Face encoder as a text student)
    name: str = "small_cnn"
    image_size: int = 32
    resize_filter: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = "bilinear"
    max_length: int = 128
    width: int = 128
    checkpoint: str = ""  # local state dict to start from (the head may differ); pkg:package/file works
    key_map: str = ""  # rename the checkpoint's keys first ("efficientnet_pytorch": the Lite packages' names)
    # BatchNorm statistics at evaluation: "library" keeps the running averages with the network's own
    # momentum; "recompute" re-estimates them over the training rows (train mode, no update) before
    # each evaluation, so a short run is not scored with statistics still partly from pre-training
    bn_stats: Literal["library", "recompute"] = "library"
    embeddings: str = ""  # text students: start the token embeddings from a local HF checkpoint (dir or file)

    def validate(self) -> list[str]:
        from .students import name_error  # the known names live with the students

        error = name_error(self.name)
        return [f"name: {error}"] if error else []


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd
    epochs: int = 10  # passes over the labeled rows (when steps = 0)
    # a budget of optimiser steps instead of epochs, as the official AFT code counts (5,000 at batch
    # 128): batches run through fresh shuffles of the labeled rows, so a set smaller than the budget
    # (or than one batch) is drawn again and again; validation every eval_every steps
    steps: int = 0
    eval_every: int = 0  # steps between evaluations (and checkpoints); 0 = a tenth of the steps
    batch_size: int = 128
    warmup_epochs: float = 0.5  # epochs budget: linear warm-up, then cosine
    warmup_steps: int = 0  # steps budget: linear warm-up steps, then cosine (the official code: none)
    grad_clip: float = 1.0  # 0 = off

    def validate(self) -> list[str]:
        errors = []
        if self.epochs < 1:
            errors.append("epochs: must be >= 1")
        if self.steps < 0:
            errors.append("steps: must be >= 0 (0 = count epochs)")
        if self.eval_every < 0:
            errors.append("eval_every: must be >= 0 (0 = a tenth of the steps)")
        if self.warmup_steps < 0 or (self.steps and self.warmup_steps >= self.steps):
            errors.append("warmup_steps: must be >= 0 and below steps")
        if self.batch_size < 2:
            errors.append("batch_size: must be >= 2 (batch statistics)")
        if self.lr <= 0:
            errors.append("lr: must be > 0")
        return errors


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/demo"
    seed: int = 0
    amp: bool = True  # autocast on GPU; ignored on the CPU
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    # [method]: `name` picks a registered method (featcache.train.methods); every registered method's
    # parameters are keys here, each method reading its own. The schema is the registry's, looked up at
    # each load, so a method registered later is a valid [method] too.
    method: registry.MethodConfig = field(default_factory=lambda: registry.MethodConfig())
    optim: OptimConfig = field(default_factory=OptimConfig)
