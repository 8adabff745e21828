"""Learning rate: linear warmup over ``warmup_ratio`` of the steps, then cosine decay to ``min_lr``,
times a plateau factor (1 unless the plateau protocol reduced it). A pure function of the step, so the
schedule's saved state is just the plateau protocol's."""
from __future__ import annotations

import math


def lr_at(step: int, lr: float, min_lr: float, steps: int, warmup_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``steps``."""
    warmup = int(round(warmup_ratio * steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class PlateauProtocol:
    """The seed design's plateau rule: when the val loss has not improved for ``patience`` of the run, multiply the
    LR by ``factor``; once ``max_reductions`` reductions in a row brought no improvement, stop."""

    def __init__(self, steps: int, patience: float, factor: float, max_reductions: int, min_delta: float = 1e-4):
        self.patience_steps = max(1, int(round(patience * steps)))
        self.factor, self.max_reductions, self.min_delta = factor, max_reductions, min_delta
        self.scale = 1.0
        self.best = math.inf
        self.since = 0               # step of the last improvement (or reduction)
        self.reductions = 0          # reductions since the last improvement

    def update(self, step: int, val_loss: float) -> str | None:
        """Record an eval; returns "reduce", "stop" or None."""
        if val_loss < self.best - self.min_delta:
            self.best, self.since, self.reductions = val_loss, step, 0
            return None
        if step - self.since < self.patience_steps:
            return None
        if self.reductions >= self.max_reductions:
            return "stop"
        self.scale *= self.factor
        self.reductions += 1
        self.since = step
        return "reduce"

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "since": self.since, "reductions": self.reductions}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best = float(state["scale"]), float(state["best"])
        self.since, self.reductions = int(state["since"]), int(state["reductions"])
