"""The two normalizations inside FLA's layers, in plain PyTorch (same math as FLA's ``*_ref``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm(x, weight, bias, num_groups: int, eps: float):
    """FLA ``GroupNorm`` (LayerNorm within each head), over the last dim of ``x``."""
    shape = x.shape
    grouped = x.float().view(*shape[:-1], num_groups, shape[-1] // num_groups)
    out = F.layer_norm(grouped, grouped.shape[-1:], eps=eps).view(shape)
    return (out * weight + bias).to(x.dtype)


def gated_rms_norm(x, gate, weight, eps: float, group_size: int):
    """FLA ``RMSNormGated`` with ``norm_before_gate=False``: RMSNorm(x * silu(gate)) * weight, per group."""
    dtype = x.dtype
    h = x.float() * F.silu(gate.float())
    shape = h.shape
    grouped = h.view(*shape[:-1], shape[-1] // group_size, group_size)
    grouped = grouped * torch.rsqrt(grouped.square().mean(dim=-1, keepdim=True) + eps)
    return (grouped.view(shape) * weight.float()).to(dtype)
