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
