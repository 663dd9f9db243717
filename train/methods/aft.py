"""AFT (Qiu et al., ICML 2024): cross-entropy plus beta times the kernel distance between the
student's features and the teacher's, each teacher feature weighted by a learned sigmoid(s)."""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import AFT
from .registry import BuildContext, Method, register


@register
@dataclass(frozen=True)
class AFTMethod(Method):
    name = "aft"
    needs_features = True
    beta: float = 10.0  # AFT weight (reference recipe)
    prior_lr: float = 1e-2  # learning rate of AFT's feature weights s (no weight decay)

    def build(self, ctx: BuildContext) -> AFT:
        return AFT(ctx.d_phi, beta=self.beta, prior_lr=self.prior_lr)
