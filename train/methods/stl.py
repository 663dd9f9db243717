"""STL: the student trained on its labels alone, the baseline every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import MethodLoss
from .registry import BuildContext, Method, register


@register
@dataclass(frozen=True)
class STLMethod(Method):
    name = "stl"  # reads no teacher features: runs ignore [data] teachers and the other feature keys

    def build(self, ctx: BuildContext) -> MethodLoss:
        return MethodLoss()
