"""Mamba-2's input side: from the in-projection's ``xBC`` and ``dt`` columns to the inputs of the SSD scan.

``xBC: [B, T, H*P + 2*G*N]`` and ``dt: [B, T, H]`` (column slices of the in-projection's output are fine),
the short convolution's ``conv_weight: [H*P + 2*G*N, W]`` and ``conv_bias``, ``dt_bias: [H]``, ``A_log: [H]``.
Computes ``silu(causal depthwise conv(xBC))``, splits it into ``x``, ``B``, ``C``, and ``dt = softplus(dt +
dt_bias)`` clamped to ``dt_limit``, and returns the scan's inputs in the form FLA's gated linear attention
takes them (``ops/ssd.py``: q = C, k = B, v = dt x, log decay g = dt A), with ``dt`` folded into the keys
instead of the values (the same product, ``(dt x)^T B = x^T (dt B)``), so ``x`` itself is the value and also
serves the layer's ``D * x`` skip:

    x [B, T, H, P], k = dt * B [B, T, H, N], q = C [B, T, H, N] (groups repeated to heads), g = dt * A [B, T, H]

``x``, ``k``, ``q`` in ``xBC.dtype``, ``g`` in float32. On CUDA (``backend.fused_layer_kernels_wanted``) this
is one Triton kernel forward and two backward (``mamba2_inputs_triton.py``) where the layer took FLA's
convolution kernels, a dozen small PyTorch ops and their backward; ``mamba2_scan_inputs_torch`` is the
reference (what the kernels are tested against). The layer's CPU path keeps its own ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from groundthink.ops.backend import fused_layer_kernels_wanted, mamba_ssm_chunk_scan
from groundthink.ops.precision import upcast
from groundthink.ops.shortconv import causal_conv1d_silu_torch
from groundthink.ops.ssd import _ssd_fla


def fused_mamba2_wanted(xBC) -> bool:
    """Whether the layer takes these kernels around FLA's scan: where ``fused_layer_kernels_wanted``, and FLA's
    scan is the one in use (``mamba_ssm``'s, when installed, takes ``x, dt, B, C`` itself)."""
    return fused_layer_kernels_wanted(xBC) and mamba_ssm_chunk_scan() is None


def ssd_from_scan_inputs(x, k, q, g):
    """The SSD scan on ``mamba2_scan_inputs``'s outputs, from a zero state, with FLA's kernels (CUDA).
    Returns ``(y [B, T, H, P], final state [B, H, P, N])``."""
    return _ssd_fla(x, g, k, q, None)


def mamba2_scan_inputs(xBC, dt, conv_weight, conv_bias, dt_bias, A_log, dt_limit: tuple[float, float],
                       num_heads: int, n_groups: int, state_size: int):
    """``(x, k, q, g)``: the SSD scan's inputs (see the module docstring)."""
    if fused_layer_kernels_wanted(xBC):
        from groundthink.ops.mamba2_inputs_triton import mamba2_scan_inputs_fused

        return mamba2_scan_inputs_fused(xBC, dt, conv_weight, conv_bias, dt_bias, A_log, dt_limit, num_heads,
                                        n_groups, state_size)
    return mamba2_scan_inputs_torch(xBC, dt, conv_weight, conv_bias, dt_bias, A_log, dt_limit, num_heads,
                                    n_groups, state_size)


def mamba2_scan_inputs_torch(xBC, dt, conv_weight, conv_bias, dt_bias, A_log, dt_limit: tuple[float, float],
                             num_heads: int, n_groups: int, state_size: int):
    """``mamba2_scan_inputs`` in PyTorch: in float32 (float64 when ``xBC`` is), ``x``, ``k``, ``q`` rounded once."""
    batch, seq_len, _ = xBC.shape
    compute = upcast(xBC).dtype
    act, _ = causal_conv1d_silu_torch(xBC.to(compute), conv_weight.to(compute),
                                      None if conv_bias is None else conv_bias.to(compute))
    group_width = n_groups * state_size
    x, B, C = act.split([act.shape[-1] - 2 * group_width, group_width, group_width], dim=-1)
    dt = F.softplus(dt.to(compute) + dt_bias.to(compute)).clamp(*dt_limit)             # [B, T, H]
    A = -torch.exp(A_log.to(compute))

    def per_head(t):
        return t.reshape(batch, seq_len, n_groups, state_size).repeat_interleave(num_heads // n_groups, dim=2)

    return (x.reshape(batch, seq_len, num_heads, -1).to(xBC.dtype), (per_head(B) * dt[..., None]).to(xBC.dtype),
            per_head(C).to(xBC.dtype), dt * A)
