"""Fusion modules: how the (normalized) RWKV-6 output ``r`` and Mamba-2 output ``m`` reach the residual stream.

Each variant is one small class that answers for itself:

* ``forward(r, m) -> (fused, gate)``: ``gate`` is RWKV's share under an interpolation gate (the sigmoid gates
  of GF / HGF, WS's weight ``w``), broadcastable to ``r``; ``None`` for variants without one (HY's free gains,
  CP, RF), since ``gate_rwkv`` is only defined for interpolating fusions (docs/design.md#balance-metrics).
* ``has_gate``: whether ``forward`` returns such a gate (the gate-based balance loss needs one).
* ``parts(r, m, gate) -> (part_rwkv, part_mamba)``: what each branch adds, ``fused == part_rwkv + part_mamba``
  (the contribution-share balance loss and diagnostics read these).
* ``uses_gate_init``: whether the variant starts from ``gate_init``.

No fusion parameter is weight-decayed (``Fusion.exempt_from_weight_decay``, read by the optimizer's
parameter groups): decay would pull the blend towards zero weights, a mix that the data did not choose.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"gate_init must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


class Fusion(nn.Module):
    """Base of the variants: the attributes every fusion declares, and the weight-decay exemption."""

    has_gate = False
    uses_gate_init = True
    exempt_from_weight_decay = True  # a class attribute, so copies of the model keep it

    def parts(self, r: torch.Tensor, m: torch.Tensor, gate) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class GainFusion(Fusion):
    """HY: per-channel gains, the same at every position, ``g_r * r + g_m * m``. Free gains, not a gate."""

    def __init__(self, hidden_size: int, gate_init: float = 0.7):
        super().__init__()
        self.gain_rwkv = nn.Parameter(torch.full((hidden_size,), float(gate_init)))
        self.gain_mamba = nn.Parameter(torch.full((hidden_size,), 1.0 - float(gate_init)))

    def forward(self, r, m):
        return self.gain_rwkv * r + self.gain_mamba * m, None

    def parts(self, r, m, gate):
        return self.gain_rwkv * r, self.gain_mamba * m


class GatedFusion(Fusion):
    """GF family: one sigmoid gate per position, ``s * r + (1 - s) * m``, ``s = sigmoid(W [r, m] + b)``.

    ``per_channel=True`` gives HGF (one gate per position and channel). The weight starts at zero and
    the bias at ``logit(gate_init)``, so every position starts with RWKV share exactly ``gate_init``.
    """

    has_gate = True

    def __init__(self, hidden_size: int, gate_init: float = 0.5, per_channel: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(2 * hidden_size, hidden_size if per_channel else 1)
        nn.init.zeros_(self.gate_proj.weight)
        nn.init.constant_(self.gate_proj.bias, logit(gate_init))

    def forward(self, r, m):
        gate = torch.sigmoid(self.gate_proj(torch.cat([r, m], dim=-1)))
        return torch.lerp(m, r, gate.to(r.dtype)), gate  # s * r + (1 - s) * m in one kernel

    def parts(self, r, m, gate):
        return gate * r, (1.0 - gate) * m


class ConcatProjectFusion(Fusion):
    """CP: ``Linear(2d, d, bias=False)([r, m])``. Unconstrained, so it has no gate and no ``gate_init``."""

    uses_gate_init = False

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)

    def forward(self, r, m):
        return self.proj(torch.cat([r, m], dim=-1)), None

    def parts(self, r, m, gate):
        d = r.shape[-1]
        return r @ self.proj.weight[:, :d].t(), m @ self.proj.weight[:, d:].t()


class WeightedSumFusion(Fusion):
    """WS: one learned scalar, ``w * r + (1 - w) * m``; ``w`` is its gate."""

    has_gate = True

    def __init__(self, hidden_size: int, gate_init: float = 0.5):
        super().__init__()
        self.weight_rwkv = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, r, m):
        return self.weight_rwkv * r + (1.0 - self.weight_rwkv) * m, self.weight_rwkv

    def parts(self, r, m, gate):
        return self.weight_rwkv * r, (1.0 - self.weight_rwkv) * m


class ResidualFusion(Fusion):
    """RF: RWKV as the base, Mamba as a scaled correction, ``r + a * m`` (a correction scale, not a gate)."""

    def __init__(self, hidden_size: int, gate_init: float = 0.3):
        super().__init__()
        self.scale_mamba = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, r, m):
        return r + self.scale_mamba * m, None

    def parts(self, r, m, gate):
        return r, self.scale_mamba * m


# The fusion kinds a model config can name: kind -> (class, extra constructor arguments).
FUSIONS: dict[str, tuple[type[Fusion], dict]] = {
    "gain": (GainFusion, {}),
    "gate": (GatedFusion, {"per_channel": False}),
    "gate_channel": (GatedFusion, {"per_channel": True}),
    "concat_project": (ConcatProjectFusion, {}),
    "weighted_sum": (WeightedSumFusion, {}),
    "residual": (ResidualFusion, {}),
}


def build_fusion(kind: str, hidden_size: int, gate_init: float | None = None) -> Fusion:
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion {kind!r}; valid: {', '.join(FUSIONS)}")
    cls, extra = FUSIONS[kind]
    kwargs = dict(extra)
    if gate_init is not None and cls.uses_gate_init:
        kwargs["gate_init"] = gate_init
    return cls(hidden_size, **kwargs)
