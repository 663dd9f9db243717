"""Loss terms of the stage-2 methods: AFT and the baselines it is compared with.

Each loss is a small module that owns its extra parameters (AFT's feature
weights, KD's linear map) and returns its loss components by name; the loop sums
them and logs each one. Which loss a method name builds, with which parameters and
needs, is the method's class in ``featcache.train.methods``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featcache.plumbing.errors import DataError

EPS = 1e-8


def _center_normalize(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(dim=0, keepdim=True)
    return xc / (xc.norm(dim=1, keepdim=True) + EPS)


def aft_regularizer(h: torch.Tensor, phi: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """AFT's kernel distance R between student features and weighted teacher features.

    h: (B, d_h) student penultimate features; phi: (B, d_phi) cached teacher features;
    s: (d_phi,) logits of the learned feature weights rho = sigmoid(s). Computed exactly
    as the reference implementation: batch-centred, row-normalised features, and
    R = sqrt(mean((hn hn^T - tn tn^T)^2) + 1e-8), without beta.
    """
    h = h.float()
    t = phi.float() * torch.sigmoid(s.float())
    hn, tn = _center_normalize(h), _center_normalize(t)
    kh, kt = hn @ hn.T, tn @ tn.T
    return torch.sqrt(((kh - kt) ** 2).mean() + EPS)


def rkd_distance(h: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Pairwise distances, each normalised by its mean, matched with smooth L1 (Park et al. 2019)."""
    def normed(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        mean = d[d > 0].mean() if (d > 0).any() else d.new_tensor(1.0)
        return d / (mean + EPS)

    with torch.no_grad():
        target = normed(phi.float())
    return F.smooth_l1_loss(normed(h.float()), target)


def rkd_angle(h: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Cosines of the angles formed by every triplet, matched with smooth L1."""
    def angles(x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(e, e.transpose(1, 2)).reshape(-1)

    with torch.no_grad():
        target = angles(phi.float())
    return F.smooth_l1_loss(angles(h.float()), target)


def labeled_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled rows only: rows marked -1 (unlabeled rows mixed into the
    batch for the feature terms, ``data.unlabeled_per_batch``) add nothing to it."""
    return F.cross_entropy(logits, y, ignore_index=-1)


class MethodLoss(nn.Module):
    """Base: cross-entropy only (STL). Subclasses add their terms and parameters."""

    def forward(self, logits: torch.Tensor, h: torch.Tensor, phi: torch.Tensor | None,
                y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ce": labeled_ce(logits, y)}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Extra parameters with their own optimiser settings (none for STL)."""
        return []

    def diagnostics(self) -> dict[str, float]:
        """Numbers about the method's own parameters, logged at each evaluation (none for STL)."""
        return {}


class AFT(MethodLoss):
    """Cross-entropy plus beta * R, R the kernel distance to the learned-weight teacher features."""

    def __init__(self, d_phi: int, beta: float = 10.0, prior_lr: float = 1e-2) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.zeros(d_phi))  # rho = sigmoid(0) = 1/2 for every feature at start
        self.beta, self.prior_lr = beta, prior_lr

    def forward(self, logits, h, phi, y):
        return {"ce": labeled_ce(logits, y), "aft": self.beta * aft_regularizer(h, phi, self.s)}

    def param_groups(self, lr, weight_decay):
        return [{"params": [self.s], "lr": self.prior_lr, "weight_decay": 0.0, "name": "aft_s"}]

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Whether the weights adapted: at rho = 1/2 everywhere AFT matches the whole unweighted kernel."""
        s = self.s.detach().float().cpu()
        rho = torch.sigmoid(s)
        return {"rho_below_0.1": float((rho < 0.1).float().mean()), "rho_above_0.9": float((rho > 0.9).float().mean()),
                "rho_mean": float(rho.mean()), "max_abs_s": float(s.abs().max())}


class FeatureKD(MethodLoss):
    """FitNets-style: a learned linear map from student to teacher features, MSE."""

    def __init__(self, d_h: int, d_phi: int, beta: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(d_h, d_phi)
        self.beta = beta

    def forward(self, logits, h, phi, y):
        return {"ce": labeled_ce(logits, y),
                "kd_feat": self.beta * F.mse_loss(self.proj(h.float()), phi.float())}

    def param_groups(self, lr, weight_decay):
        return [{"params": list(self.proj.parameters()), "lr": lr, "weight_decay": weight_decay,
                 "name": "kd_proj"}]


class RKD(MethodLoss):
    """Relational KD: the student's pairwise distances and triplet angles match the teacher's."""

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.wd, self.wa = distance_weight, angle_weight

    def forward(self, logits, h, phi, y):
        return {"ce": labeled_ce(logits, y), "rkd_dist": self.wd * rkd_distance(h, phi),
                "rkd_angle": self.wa * rkd_angle(h, phi)}


class PredictionKD(MethodLoss):
    """KL to a frozen linear probe's predictions on the cached features (Hinton et al.)."""

    def __init__(self, probe: nn.Linear, temperature: float = 4.0, alpha: float = 0.5) -> None:
        super().__init__()
        self.probe = probe.requires_grad_(False)
        self.t, self.alpha = temperature, alpha

    def forward(self, logits, h, phi, y):
        with torch.no_grad():
            target = F.softmax(self.probe(phi.float()) / self.t, dim=1)
        kl = F.kl_div(F.log_softmax(logits.float() / self.t, dim=1), target, reduction="batchmean")
        return {"ce": (1 - self.alpha) * labeled_ce(logits, y), "kd": self.alpha * self.t ** 2 * kl}


def soft_target_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) on temperature-softened predictions (for distillation on unlabeled rows)."""
    target = F.softmax(teacher_logits.float() / temperature, dim=1)
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_p, target, reduction="batchmean")


class LogitDistill(MethodLoss):
    """Match a teacher's task logits (cached as features) on unlabeled rows: TOKT's step 2."""

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.t = temperature

    def forward(self, logits, h, phi, y):
        if phi.shape[1] != logits.shape[1]:
            raise DataError(f"teacher logits have {phi.shape[1]} classes, the student {logits.shape[1]}")
        return {"kd": soft_target_kl(logits, phi, self.t)}


class FeatureDistill(FeatureKD):
    """Task-agnostic transfer: match the teacher's features (linear map, MSE) on unlabeled rows."""

    def forward(self, logits, h, phi, y):
        return {"kd_feat": self.beta * F.mse_loss(self.proj(h.float()), phi.float())}
