"""Batch plumbing of a training run: which rows each process takes, what each batch holds (drawn
from the run's generator), and the batches themselves, assembled ahead of the step."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from featcache.plumbing.config import ConfigError
from featcache.plumbing.distributed import Dist

from .data import FeatureBank, Inputs, Split
from .prefetch import prefetch


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
