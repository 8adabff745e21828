"""Normalizations: the two inside FLA's layers, and the blocks' RMSNorm.

``group_norm`` / ``gated_rms_norm`` / ``RMSNorm`` dispatch: FLA's fused Triton kernels on CUDA (one kernel
forward, one backward, instead of ~6 each), the plain PyTorch versions (``*_torch``, same math as FLA's
``*_ref``; ``nn.RMSNorm``) everywhere else and while ``torch.compile`` traces the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from groundthink.ops.backend import fused_ops_wanted
from groundthink.ops.precision import upcast


def group_norm(x, weight, bias, num_groups: int, eps: float):
    """FLA ``GroupNorm`` (LayerNorm within each head), over the last dim of ``x``; output in ``x.dtype``."""
    if fused_ops_wanted(x):
        from fla.modules.norm.layernorm import group_norm as fla_group_norm

        return fla_group_norm(x, weight, bias, eps=eps, num_groups=num_groups)
    return group_norm_torch(x, weight, bias, num_groups, eps)


def gated_rms_norm(x, gate, weight, eps: float, group_size: int):
    """FLA ``RMSNormGated`` (norm after the gate): RMSNorm(x * silu(gate)) * weight, per group."""
    if fused_ops_wanted(x):
        from fla.modules.norm.layernorm_gated import rmsnorm_fn

        return rmsnorm_fn(x, weight, None, z=gate, eps=eps, group_size=group_size, norm_before_gate=False)
    return gated_rms_norm_torch(x, gate, weight, eps, group_size)


def group_norm_torch(x, weight, bias, num_groups: int, eps: float):
    """``group_norm`` in PyTorch (the reference and the CPU path)."""
    shape = x.shape
    grouped = upcast(x).view(*shape[:-1], num_groups, shape[-1] // num_groups)
    out = F.layer_norm(grouped, grouped.shape[-1:], eps=eps).view(shape)
    return (out * weight + bias).to(x.dtype)


def gated_rms_norm_torch(x, gate, weight, eps: float, group_size: int):
    """``gated_rms_norm`` in PyTorch (the reference and the CPU path)."""
    dtype = x.dtype
    h = upcast(x) * F.silu(upcast(gate))
    shape = h.shape
    grouped = h.view(*shape[:-1], shape[-1] // group_size, group_size)
    grouped = grouped * torch.rsqrt(grouped.square().mean(dim=-1, keepdim=True) + eps)
    return (grouped.view(shape) * upcast(weight)).to(dtype)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same parameter, same CPU math) whose CUDA forward is FLA's fused kernel.

    Why: under bf16 autocast the branch outputs reach their norms in bf16 while the weight is float32, and
    PyTorch then falls back to an unfused chain of ~7 kernels forward and more backward. Output dtype
    follows the input, as in FLA.
    """

    def forward(self, x):
        if self.weight is not None and fused_ops_wanted(x):
            from fla.modules.norm.layernorm import rms_norm

            eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
            return rms_norm(x, self.weight, None, eps=eps)
        return super().forward(x)
