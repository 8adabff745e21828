"""Mamba-2's output side: the ``D * x`` skip and the gated RMSNorm, ``RMSNorm((y + D_h x) * silu(gate)) * weight``.

``y, x: [B, T, H, P]`` (the scan's output and its input), ``D: [H]``, ``gate: [B, T, H * P]`` (a column slice of
the in-projection's output is fine: rows may be strided), ``weight: [H * P]``; the RMS is taken over groups of
``group_size`` channels (FLA's ``RMSNormGated``, norm after the gate). Returns ``[B, T, H * P]`` in ``y.dtype``.

On CUDA (``backend.fused_layer_kernels_wanted``) this is one Triton kernel forward and one backward
(``skip_gated_norm_triton.py``) plus two small sums (the ``weight`` and ``D`` gradients), where the layer took
an ``addcmul``, FLA's gated-norm kernels and the ``addcmul``'s three backward passes. ``skip_gated_rms_norm_torch``
is the reference (what the kernels are tested against); the layer's CPU path keeps its own ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from groundthink.ops.backend import fused_layer_kernels_wanted
from groundthink.ops.precision import upcast


def skip_gated_rms_norm(y, x, D, gate, weight, eps: float, group_size: int) -> torch.Tensor:
    """``RMSNorm((y + D x) * silu(gate)) * weight`` per group of channels, in ``y.dtype``."""
    if fused_layer_kernels_wanted(y):
        from groundthink.ops.skip_gated_norm_triton import skip_gated_rms_norm_fused

        return skip_gated_rms_norm_fused(y, x, D, gate, weight, eps, group_size)
    return skip_gated_rms_norm_torch(y, x, D, gate, weight, eps, group_size)


def skip_gated_rms_norm_torch(y, x, D, gate, weight, eps: float, group_size: int) -> torch.Tensor:
    """``skip_gated_rms_norm`` in PyTorch: in float32 (float64 when ``y`` is), rounded once to ``y.dtype``."""
    batch, seq_len, heads, head_dim = y.shape
    compute = upcast(y).dtype
    skipped = y.to(compute) + x.to(compute) * D.to(compute)[:, None]
    h = (skipped * F.silu(gate.to(compute)).view_as(skipped)).view(batch, seq_len, -1, group_size)
    normed = h * torch.rsqrt(h.square().mean(dim=-1, keepdim=True) + eps)
    return (normed.view(batch, seq_len, heads * head_dim) * weight.to(compute)).to(y.dtype)
