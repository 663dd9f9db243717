"""A linear probe on cached features: the teacher's task head, fitted without loading the teacher."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *, l2: float = 1e-4,
                     steps: int = 100, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression, full batch, L-BFGS: deterministic and a few seconds."""
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    probe = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe.requires_grad_(False)


def probe_accuracy(probe: nn.Linear, features: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = probe(torch.as_tensor(features, dtype=torch.float32)).argmax(1).numpy()
    return float((pred == labels).mean())


def knn_accuracy(train_feats: np.ndarray, train_labels: np.ndarray, feats: np.ndarray, labels: np.ndarray,
                 k: int = 5) -> float:
    """Cosine k-nearest-neighbour vote (features centred on the training rows): how far the
    teacher's similarities alone, what AFT and RKD transfer, follow the task."""
    mean = train_feats.mean(0, keepdims=True)

    def unit(x: np.ndarray) -> np.ndarray:
        x = x - mean
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sims = unit(feats.astype(np.float32)) @ unit(train_feats.astype(np.float32)).T
    nearest = np.argsort(-sims, axis=1)[:, :k]
    classes = int(max(train_labels.max(), labels.max())) + 1
    votes = np.stack([np.bincount(row, minlength=classes) for row in train_labels[nearest]])
    return float((votes.argmax(1) == labels).mean())


def probe_teachers(cfg, log=print) -> dict[str, dict[str, float | None]]:
    """Each teacher's linear probe on the run's labeled training rows, scored on val and test.

    The ceiling a student is chasing: what the cached features already know about the
    task with the same label budget. Test accuracy needs the teacher in the test store.
    """
    import os

    from featcache.plumbing import atomic
    from .data import FeatureBank, build_splits

    splits, num_classes = build_splits(cfg)
    train = splits["train"]
    teachers = list(cfg.data.teachers) or list(train.cache.teachers)
    out: dict[str, dict[str, float | None]] = {}
    log("| teacher | dim | train rows | val accuracy | test accuracy | test 5-NN accuracy |\n|---|---|---|---|---|---|")
    groups = [(t,) for t in teachers] + ([tuple(teachers)] if len(teachers) > 1 else [])
    for group in groups:  # each teacher, then all of them concatenated (what kd_pred's head is fitted on)
        name = "+".join(group)
        std = cfg.data.standardize_teachers
        bank = FeatureBank(train.cache, group, train.rows, cfg.data.max_ram_gb, std)
        train_feats = bank.take_eval(train.rows)
        probe = fit_linear_probe(train_feats, train.labels, num_classes, seed=cfg.seed)
        scores: dict[str, float | None] = {}
        for split_name in ("val", "test"):
            split = splits[split_name]
            if len(split.rows) == 0 or any(t not in split.cache.teachers for t in group):
                scores[split_name] = None
                continue
            if split.cache is train.cache:
                feats = bank.take_eval(split.rows)
            else:  # another store: the training rows' standardisation, not its own
                feats = FeatureBank(split.cache, group, split.rows, cfg.data.max_ram_gb).take_eval(split.rows)
                if bank.shift is not None:
                    feats = (feats - bank.shift) / bank.scale
            scores[split_name] = probe_accuracy(probe, feats, split.labels)
            if split_name == "test":
                scores["test_knn5"] = knn_accuracy(train_feats, train.labels, feats, split.labels)
        out[name] = scores
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        log(f"| {name} | {bank.dim} | {len(train.rows)} | {fmt(scores['val'])} | {fmt(scores['test'])} | "
            f"{fmt(scores.get('test_knn5'))} |")
    os.makedirs(cfg.out_dir, exist_ok=True)
    atomic.write_json(os.path.join(cfg.out_dir, "probe.json"), out)
    return out
