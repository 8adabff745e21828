"""The ``interventions`` section of a run's configuration: trainer-side balance interventions, all off by
default. (The model-side ones are model fields: ``model.rwkv_dropout``, ``model.mamba_residual``; the
Mamba learning-rate multiplier is ``train.mamba_lr_mult``.) The hooks themselves are in ``interventions.py``;
this dataclass lives apart so that ``config.py`` can import it without importing the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass

BALANCE_TARGETS = ("gate", "share")


@dataclass
class InterventionsConfig:
    # Balance regularization: loss += balance_weight * mean over fused layers of d^2, where d is how far
    # RWKV's share lies outside [balance_low, balance_high]. The share is the mean gate ("gate": the fusion's
    # gate_rwkv) or RWKV's share of the fused output's magnitude ("share": rms(rwkv part) / (rms(rwkv part)
    # + rms(mamba part)), which also sees the branch norms' learned gains that the gate cannot).
    balance_weight: float = 0.0
    balance_target: str = "gate"
    balance_low: float = 0.3
    balance_high: float = 0.7
    # Gate freezing: the fusion parameters get no updates for the first N optimizer steps.
    gate_freeze_steps: int = 0
    # Mamba gradient scaling: every mamba2.* gradient is multiplied by this before clipping (1 = off).
    mamba_grad_scale: float = 1.0

    def validate(self) -> None:
        if self.balance_weight < 0:
            raise ValueError(f"interventions.balance_weight must be >= 0, got {self.balance_weight}")
        if self.balance_target not in BALANCE_TARGETS:
            raise ValueError(f"interventions.balance_target {self.balance_target!r} is unknown; valid: "
                             f"{', '.join(BALANCE_TARGETS)}")
        if not 0.0 <= self.balance_low <= self.balance_high <= 1.0:
            raise ValueError(f"interventions.balance_low / balance_high must satisfy 0 <= low <= high <= 1, got "
                             f"{self.balance_low} / {self.balance_high}")
        if self.gate_freeze_steps < 0:
            raise ValueError(f"interventions.gate_freeze_steps must be >= 0, got {self.gate_freeze_steps}")
        if not self.mamba_grad_scale > 0:
            raise ValueError(f"interventions.mamba_grad_scale must be > 0, got {self.mamba_grad_scale}")

    @property
    def active(self) -> bool:
        return self.balance_weight > 0 or self.gate_freeze_steps > 0 or self.mamba_grad_scale != 1.0
