"""The two precisions a layer computes in: float32 (or wider) for decays and norms, and the matmul precision.

Under bf16 autocast the residual stream stays float32 while every matmul reads bf16. Element-wise work that
only feeds matmuls (RWKV's token-shift mixes, Mamba-2's gated output) is cheaper done in bf16 directly: half
the memory traffic, and no cast kernel in front of each projection (which autocast would insert anyway).
"""
from __future__ import annotations

import torch


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32: half types are computed in float32, float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` computes in: autocast's (for float32 ``x``) when it is on, else ``x.dtype``."""
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def to_matmul_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` cast to ``matmul_dtype(x)`` (a no-op without autocast)."""
    return x.to(matmul_dtype(x))
