"""The two short-range mixes around the scans: Mamba-2's causal depthwise convolution and RWKV's token shift.

Each dispatches to FLA's fused Triton kernel on CUDA for whole sequences (no incoming state: the training
path), and to the PyTorch version (``*_torch``) otherwise: on CPU, when a state is carried in, and while
``torch.compile`` traces the model. Both versions return the same tensors, the carried state included.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from groundthink.ops.backend import fused_ops_wanted


def causal_conv1d_silu(x, weight, bias, history=None):
    """``silu(causal depthwise conv)`` over time, channels last.

    ``x: [B, T, D]``, ``weight: [D, W]``, ``bias: [D]`` or None, ``history: [B, D, W - 1]`` (the inputs
    before ``x``; zeros when None). Returns ``(y [B, T, D], new_history [B, D, W - 1])``.
    """
    if history is not None and x.shape[1] == 1:
        return causal_conv1d_silu_step(x, weight, bias, history)
    if history is None and fused_ops_wanted(x):
        from fla.modules.causal_conv1d import causal_conv1d

        y, _ = causal_conv1d(x, weight=weight, bias=bias, activation="silu")
        return y, _last_inputs(x, weight.shape[1] - 1)
    return causal_conv1d_silu_torch(x, weight, bias, history)


def causal_conv1d_silu_step(x, weight, bias, history):
    """One token (decoding) of ``causal_conv1d_silu``: a multiply-and-sum over the window instead of a
    convolution call (which ``torch.compile`` cannot fuse: it stays a separate cuDNN kernel)."""
    window = torch.cat([history.to(x.dtype), x.transpose(1, 2)], dim=-1)     # [B, D, W]
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return F.silu(y).unsqueeze(1), window[..., 1:]


def causal_conv1d_silu_torch(x, weight, bias, history=None):
    """``causal_conv1d_silu`` in PyTorch (the reference and the CPU path)."""
    batch, _, channels = x.shape
    keep = weight.shape[1] - 1
    x = x.transpose(1, 2)                                                   # [B, D, T]
    history = x.new_zeros(batch, channels, keep) if history is None else history.to(x.dtype)
    padded = torch.cat([history, x], dim=-1)
    y = F.silu(F.conv1d(padded, weight.unsqueeze(1), bias, groups=channels))
    return y.transpose(1, 2), padded[..., padded.shape[-1] - keep:]


def _last_inputs(x, keep: int):
    """The last ``keep`` time steps of ``x [B, T, D]`` as ``[B, D, keep]``, zero-padded on the left."""
    tail = x[:, max(x.shape[1] - keep, 0):].transpose(1, 2)
    return F.pad(tail, (keep - tail.shape[-1], 0))


def token_shift_delta(x, previous_last=None):
    """RWKV's token shift: ``x[t-1] - x[t]`` with ``x[-1] = previous_last`` (zeros when None).

    ``x: [B, T, D]``, ``previous_last: [B, D]``. Returns ``delta [B, T, D]``.
    """
    if previous_last is None and fused_ops_wanted(x):
        from fla.modules.token_shift import token_shift

        return token_shift(x)
    return token_shift_delta_torch(x, previous_last)


def token_shift_delta_torch(x, previous_last=None):
    """``token_shift_delta`` in PyTorch (the reference and the CPU path)."""
    if previous_last is not None and x.shape[1] == 1:  # decoding: no concatenation needed
        return previous_last.unsqueeze(1).to(x.dtype) - x
    previous = (F.pad(x, (0, 0, 1, -1)) if previous_last is None
                else torch.cat([previous_last.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1))
    return previous - x
