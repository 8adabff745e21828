"""Fusion modules: how the (normalized) RWKV-6 output ``r`` and Mamba-2 output ``m`` reach the residual stream.

Each variant is one small class. ``forward(r, m)`` returns ``(fused, gate)`` where ``gate`` is the share
given to RWKV by the variant's interpolation gate (a tensor, broadcastable to ``r``): the sigmoid gates of
GF / HGF and WS's weight ``w``. Variants without an interpolation gate (HY's free gains, CP, RF) return
``None``: SPEC §4 defines ``gate_rwkv`` for gated variants only, so nothing else is reported under that name.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"gate_init must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


class GainFusion(nn.Module):
    """HY: fixed-across-positions per-channel gains, ``g_r * r + g_m * m``."""

    has_gate = False  # forward returns an interpolation gate (logged as gate_rwkv)

    def __init__(self, hidden_size: int, gate_init: float = 0.7):
        super().__init__()
        self.gain_rwkv = nn.Parameter(torch.full((hidden_size,), float(gate_init)))
        self.gain_mamba = nn.Parameter(torch.full((hidden_size,), 1.0 - float(gate_init)))

    def forward(self, r, m):
        return self.gain_rwkv * r + self.gain_mamba * m, None  # free gains: no gate


class GatedFusion(nn.Module):
    """GF family: one sigmoid gate per position, ``s * r + (1 - s) * m``, ``s = sigmoid(W [r, m] + b)``.

    ``per_channel=True`` gives HGF (one gate per position and channel). The weight starts at zero and
    the bias at ``logit(gate_init)``, so every position starts with RWKV share exactly ``gate_init``.
    """

    has_gate = True  # forward returns an interpolation gate (logged as gate_rwkv)

    def __init__(self, hidden_size: int, gate_init: float = 0.5, per_channel: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(2 * hidden_size, hidden_size if per_channel else 1)
        nn.init.zeros_(self.gate_proj.weight)
        nn.init.constant_(self.gate_proj.bias, logit(gate_init))

    def forward(self, r, m):
        gate = torch.sigmoid(self.gate_proj(torch.cat([r, m], dim=-1)))
        return torch.lerp(m, r, gate.to(r.dtype)), gate  # s * r + (1 - s) * m in one kernel


class ConcatProjectFusion(nn.Module):
    """CP: ``Linear(2d, d, bias=False)([r, m])`` — unconstrained, so it reports no gate."""

    has_gate = False  # forward returns an interpolation gate (logged as gate_rwkv)

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)

    def forward(self, r, m):
        return self.proj(torch.cat([r, m], dim=-1)), None


class WeightedSumFusion(nn.Module):
    """WS: one learned scalar, ``w * r + (1 - w) * m``."""

    has_gate = True  # forward returns an interpolation gate (logged as gate_rwkv)

    def __init__(self, hidden_size: int, gate_init: float = 0.5):
        super().__init__()
        self.weight_rwkv = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, r, m):
        return self.weight_rwkv * r + (1.0 - self.weight_rwkv) * m, self.weight_rwkv


class ResidualFusion(nn.Module):
    """RF: RWKV as the base, Mamba as a scaled correction, ``r + a * m``."""

    has_gate = False  # forward returns an interpolation gate (logged as gate_rwkv)

    def __init__(self, hidden_size: int, gate_init: float = 0.3):
        super().__init__()
        self.scale_mamba = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, r, m):
        return r + self.scale_mamba * m, None  # a correction scale, not a gate


# The registry of fusion kinds: name -> (class, whether it takes gate_init, extra kwargs).
FUSIONS = {
    "gain": (GainFusion, {}),
    "gate": (GatedFusion, {"per_channel": False}),
    "gate_channel": (GatedFusion, {"per_channel": True}),
    "concat_project": (ConcatProjectFusion, {}),
    "weighted_sum": (WeightedSumFusion, {}),
    "residual": (ResidualFusion, {}),
}


def build_fusion(kind: str, hidden_size: int, gate_init: float | None = None) -> nn.Module:
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion {kind!r}; valid: {', '.join(FUSIONS)}")
    cls, extra = FUSIONS[kind]
    kwargs = dict(extra)
    if gate_init is not None and cls is not ConcatProjectFusion:
        kwargs["gate_init"] = gate_init
    return cls(hidden_size, **kwargs)
