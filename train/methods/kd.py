"""The knowledge-distillation baselines AFT is compared with, on labeled rows: feature KD,
relational KD and prediction KD."""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import RKD, FeatureKD, PredictionKD
from .registry import BuildContext, Method, register


@register
@dataclass(frozen=True)
class FeatureKDMethod(Method):
    """FitNets-style: a learned linear map from student to teacher features, MSE."""

    name = "kd_feat"
    needs_features = True
    kd_beta: float = 1.0  # weight of the MSE term

    def build(self, ctx: BuildContext) -> FeatureKD:
        return FeatureKD(ctx.d_h, ctx.d_phi, beta=self.kd_beta)


@register
@dataclass(frozen=True)
class RKDMethod(Method):
    """Relational KD (Park et al. 2019): pairwise distances and triplet angles."""

    name = "rkd"
    needs_features = True
    rkd_distance: float = 25.0  # weight of the distance term
    rkd_angle: float = 50.0  # weight of the angle term

    def build(self, ctx: BuildContext) -> RKD:
        return RKD(self.rkd_distance, self.rkd_angle)


@register
@dataclass(frozen=True)
class PredictionKDMethod(Method):
    """KL to the predictions of a linear probe fitted on the cached features (Hinton et al.)."""

    name = "kd_pred"
    needs_features = True
    needs_probe = True
    temperature: float = 4.0  # softens the probe's and the student's predictions
    alpha: float = 0.5  # weight of the KL term, 1 - alpha on cross-entropy

    def validate(self) -> list[str]:
        errors = [] if self.temperature > 0 else ["temperature: must be > 0"]
        return errors + ([] if 0 <= self.alpha <= 1 else ["alpha: must be in [0, 1]"])

    def build(self, ctx: BuildContext) -> PredictionKD:
        return PredictionKD(ctx.probe, self.temperature, self.alpha)
