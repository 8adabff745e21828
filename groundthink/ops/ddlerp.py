"""RWKV-6's five data-dependent token-shift mixes: ``x + delta * (mix_t[i] + bias[i])`` for r, w, k, v, g.

``x, delta: [B, T, D]`` (the input and its token shift), ``mix: [B, T, 5, D]`` (the low-rank ``x_proj``
output, one row per mix), ``bias: [5, D]``. Returns five ``[B, T, D]`` tensors, the inputs of the five
projections.

On CUDA (where FLA's fused small ops are used, ``backend.fused_ops_wanted``) this is one Triton kernel
forward and one backward (``ddlerp_triton.py``) plus the bias-gradient sum; in PyTorch (``ddlerp_torch``:
the reference, the CPU path, and what ``torch.compile`` traces) it is a broadcast ``addcmul`` whose backward
is several passes over ``[B, T, 5, D]`` tensors (on an H100 at ~125M the kernel cut the step's element-wise
time from 53 to 40 ms; benchmarks/results/2026-11-25-h100/session10).
"""
from __future__ import annotations

import torch

from groundthink.ops.backend import fused_ops_wanted


def ddlerp(x, delta, mix, bias) -> tuple[torch.Tensor, ...]:
    """The five mixed inputs ``x + delta * (mix[:, :, i] + bias[i])``, each ``[B, T, D]`` in ``x.dtype``."""
    if fused_ops_wanted(x):
        from groundthink.ops.ddlerp_triton import ddlerp_fused

        return ddlerp_fused(x, delta, mix, bias)
    return ddlerp_torch(x, delta, mix, bias)


def ddlerp_torch(x, delta, mix, bias) -> tuple[torch.Tensor, ...]:
    """``ddlerp`` in PyTorch: computed in ``mix``'s dtype, one broadcast ``addcmul``."""
    mix = mix + bias.to(mix.dtype)
    return torch.addcmul(x.unsqueeze(-2), delta.unsqueeze(-2), mix).unbind(-2)
