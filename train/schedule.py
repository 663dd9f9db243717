"""How long a run trains and how its learning rate moves: epochs or a budget of steps, cut into
evaluation periods; linear warm-up, then cosine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

@dataclass(frozen=True)
class Budget:
    """How long a run trains, cut into evaluation periods: an epoch each (``optim.epochs``), or
    ``eval_every`` steps each out of a fixed ``optim.steps`` (the official AFT code's budget)."""

    periods: int
    period_steps: int  # steps of every period but a short last one
    total: int  # optimiser steps in all
    warmup: int
    by_steps: bool

    def steps_in(self, period: int) -> int:
        return min(self.period_steps, self.total - period * self.period_steps)

    def done_after(self, period: int) -> int:
        """Optimiser steps taken once ``period`` ends."""
        return period * self.period_steps + self.steps_in(period)

    def describe(self) -> str:
        if self.by_steps:
            return f"{self.total} steps, validation every {self.period_steps}"
        return f"{self.periods} epochs of {self.period_steps} steps ({self.total} steps)"

def make_budget(o: Any, epoch_steps: int) -> Budget:
    if o.steps:
        every = o.eval_every or max(1, o.steps // 10)
        return Budget(math.ceil(o.steps / every), every, o.steps, o.warmup_steps, True)
    return Budget(o.epochs, epoch_steps, epoch_steps * o.epochs, int(epoch_steps * o.warmup_epochs), False)
