"""RWKV-6's output side: the per-head group norm and the SiLU output gate, ``GroupNorm(o) * silu(gate)``.

``o, gate: [B, T, C]`` (the scan's output, heads side by side, and the gate projection), ``weight, bias: [C]``
(FLA's ``GroupNorm``: a LayerNorm within each of ``num_groups`` heads). Returns ``[B, T, C]`` in ``o.dtype``.

On CUDA (``backend.fused_layer_kernels_wanted``) this is one Triton kernel forward and one backward
(``gated_group_norm_triton.py``) plus the two parameter-gradient sums, where the layer took FLA's group-norm
kernels, the SiLU, the product and their backward; elsewhere it is those ops as before (``group_norm`` and a
product: the CPU path is unchanged). ``gated_group_norm_torch`` is the reference the kernels are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from groundthink.ops.backend import fused_layer_kernels_wanted
from groundthink.ops.norms import group_norm
from groundthink.ops.precision import upcast


def gated_group_norm(o, gate, weight, bias, num_groups: int, eps: float) -> torch.Tensor:
    """``group_norm(o) * silu(gate)``, in ``o.dtype``."""
    if fused_layer_kernels_wanted(o):
        from groundthink.ops.gated_group_norm_triton import gated_group_norm_fused

        return gated_group_norm_fused(o, gate, weight, bias, num_groups, eps)
    return group_norm(o, weight, bias, num_groups, eps) * F.silu(gate)


def gated_group_norm_torch(o, gate, weight, bias, num_groups: int, eps: float) -> torch.Tensor:
    """``gated_group_norm`` in PyTorch: in float32 (float64 when ``o`` is), rounded once to ``o.dtype``."""
    compute = upcast(o).dtype
    grouped = o.to(compute).view(*o.shape[:-1], num_groups, o.shape[-1] // num_groups)
    normed = F.layer_norm(grouped, grouped.shape[-1:], eps=eps).view(o.shape)
    return ((normed * weight.to(compute) + bias.to(compute)) * F.silu(gate.to(compute))).to(o.dtype)
