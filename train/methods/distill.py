"""Distillation on unlabeled rows (TOKT's step 2, Vemulapalli et al. 2024): the student matches
the teacher on every valid row of a transfer store, labels never read."""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import FeatureDistill, LogitDistill
from .registry import BuildContext, Method, register


@register
@dataclass(frozen=True)
class LogitDistillMethod(Method):
    """Match the teacher's task logits, cached as that teacher's features (KL at a temperature)."""

    name = "distill_logits"
    needs_features = True
    unlabeled = True
    temperature: float = 4.0  # softens the teacher's and the student's predictions

    def validate(self) -> list[str]:
        return [] if self.temperature > 0 else ["temperature: must be > 0"]

    def build(self, ctx: BuildContext) -> LogitDistill:
        return LogitDistill(self.temperature)


@register
@dataclass(frozen=True)
class FeatureDistillMethod(Method):
    """Task-agnostic transfer, the paper's baseline: match the teacher's features (linear map, MSE)."""

    name = "distill_features"
    needs_features = True
    unlabeled = True
    kd_beta: float = 1.0  # weight of the MSE term

    def build(self, ctx: BuildContext) -> FeatureDistill:
        return FeatureDistill(ctx.d_h, ctx.d_phi, beta=self.kd_beta)
