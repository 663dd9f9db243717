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
    prior_lr: float = 1e-2  # learning rate of AFT's feature weights s (no weight decay; the official value)
    # the least distance s may travel over the run, lr x steps (Adam moves s about lr a step): the
    # official 1e-2 x 5,000 steps is 50; a run short enough that prior_lr x steps falls below this
    # raises the weights' learning rate to prior_travel / steps, so rho can still leave 1/2 (0 = never)
    prior_travel: float = 10.0

    def validate(self) -> list[str]:
        errors = []
        if self.prior_lr <= 0:
            errors.append("prior_lr: must be > 0")
        if self.prior_travel < 0:
            errors.append("prior_travel: must be >= 0 (0 = keep prior_lr)")
        return errors

    def weights_lr(self, total_steps: int) -> float:
        if total_steps and self.prior_lr * total_steps < self.prior_travel:
            return self.prior_travel / total_steps
        return self.prior_lr

    def build(self, ctx: BuildContext) -> AFT:
        return AFT(ctx.d_phi, beta=self.beta, prior_lr=self.weights_lr(ctx.total_steps))
