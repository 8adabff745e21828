"""``ddlerp`` as one Triton kernel forward and one backward (CUDA; see ``ddlerp.py`` for the op).

Each program takes ``BLOCK_T`` rows (tokens) of all ``D`` channels, reads ``x``/``delta`` once and the five
mix rows, and writes the five outputs; the backward reads the five output gradients once and writes
``d_x = sum_i g_i``, ``d_delta = sum_i g_i * (mix_i + bias_i)`` and ``d_mix_i = g_i * delta``. Arithmetic in
float32, results rounded once to the tensors' dtypes. ``d_bias`` is ``d_mix`` summed over tokens (PyTorch).
Runs under ``TRITON_INTERPRET=1`` on CPU too (float32), which is how the CPU tests check it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MIXES = 5  # r, w, k, v, g


@triton.jit
def _row_block(n_rows, mix_stride_row, D: tl.constexpr, BLOCK_T: tl.constexpr, BD: tl.constexpr):
    """This program's rows x all channels: column indices, mask, offsets into [rows, D] and into the mix."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BD)
    mask = (rows < n_rows)[:, None] & (cols < D)[None, :]
    return cols, mask, rows[:, None] * D + cols[None, :], rows[:, None] * mix_stride_row + cols[None, :]


@triton.jit
def _load_mix(mix_ptr, bias_ptr, i: tl.constexpr, mix_offs, mix_stride_i, cols, mask, D: tl.constexpr):
    """Mix ``i`` plus its bias, float32."""
    mix = tl.load(mix_ptr + mix_offs + i * mix_stride_i, mask=mask, other=0.).to(tl.float32)
    return mix + tl.load(bias_ptr + i * D + cols, mask=cols < D, other=0.).to(tl.float32)[None, :]


@triton.jit
def _one_mix(x, delta, mix_ptr, bias_ptr, out_ptr, i: tl.constexpr, offs, mix_offs, mix_stride_i, cols, mask,
             D: tl.constexpr):
    mix = _load_mix(mix_ptr, bias_ptr, i, mix_offs, mix_stride_i, cols, mask, D)
    tl.store(out_ptr + offs, (x + delta * mix).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ddlerp_fwd_kernel(x_ptr, delta_ptr, mix_ptr, bias_ptr, out_r, out_w, out_k, out_v, out_g,
                      n_rows, mix_stride_row, mix_stride_i,
                      D: tl.constexpr, BLOCK_T: tl.constexpr, BD: tl.constexpr):
    cols, mask, offs, mix_offs = _row_block(n_rows, mix_stride_row, D, BLOCK_T, BD)
    x = tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32)
    delta = tl.load(delta_ptr + offs, mask=mask, other=0.).to(tl.float32)
    _one_mix(x, delta, mix_ptr, bias_ptr, out_r, 0, offs, mix_offs, mix_stride_i, cols, mask, D)
    _one_mix(x, delta, mix_ptr, bias_ptr, out_w, 1, offs, mix_offs, mix_stride_i, cols, mask, D)
    _one_mix(x, delta, mix_ptr, bias_ptr, out_k, 2, offs, mix_offs, mix_stride_i, cols, mask, D)
    _one_mix(x, delta, mix_ptr, bias_ptr, out_v, 3, offs, mix_offs, mix_stride_i, cols, mask, D)
    _one_mix(x, delta, mix_ptr, bias_ptr, out_g, 4, offs, mix_offs, mix_stride_i, cols, mask, D)


@triton.jit
def _one_mix_grad(d_x, d_delta, delta, mix_ptr, bias_ptr, grad_ptr, d_mix_ptr, i: tl.constexpr, offs, mix_offs,
                  mix_stride_i, cols, mask, D: tl.constexpr):
    """Store ``d_mix_i = g_i * delta``; return ``d_x + g_i`` and ``d_delta + g_i * (mix_i + bias_i)``."""
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.).to(tl.float32)
    mix = _load_mix(mix_ptr, bias_ptr, i, mix_offs, mix_stride_i, cols, mask, D)
    tl.store(d_mix_ptr + mix_offs + i * mix_stride_i, (grad * delta).to(d_mix_ptr.dtype.element_ty), mask=mask)
    return d_x + grad, d_delta + grad * mix


@triton.jit
def ddlerp_bwd_kernel(delta_ptr, mix_ptr, bias_ptr, grad_r, grad_w, grad_k, grad_v, grad_g,
                      d_x_ptr, d_delta_ptr, d_mix_ptr, n_rows, mix_stride_row, mix_stride_i,
                      D: tl.constexpr, BLOCK_T: tl.constexpr, BD: tl.constexpr):
    cols, mask, offs, mix_offs = _row_block(n_rows, mix_stride_row, D, BLOCK_T, BD)
    delta = tl.load(delta_ptr + offs, mask=mask, other=0.).to(tl.float32)
    d_x = tl.zeros([BLOCK_T, BD], dtype=tl.float32)
    d_delta = tl.zeros([BLOCK_T, BD], dtype=tl.float32)
    # One call per mix (r, w, k, v, g), each adding its share to d_x and d_delta.
    d_x, d_delta = _one_mix_grad(d_x, d_delta, delta, mix_ptr, bias_ptr, grad_r, d_mix_ptr, 0, offs, mix_offs,
                                 mix_stride_i, cols, mask, D)
    d_x, d_delta = _one_mix_grad(d_x, d_delta, delta, mix_ptr, bias_ptr, grad_w, d_mix_ptr, 1, offs, mix_offs,
                                 mix_stride_i, cols, mask, D)
    d_x, d_delta = _one_mix_grad(d_x, d_delta, delta, mix_ptr, bias_ptr, grad_k, d_mix_ptr, 2, offs, mix_offs,
                                 mix_stride_i, cols, mask, D)
    d_x, d_delta = _one_mix_grad(d_x, d_delta, delta, mix_ptr, bias_ptr, grad_v, d_mix_ptr, 3, offs, mix_offs,
                                 mix_stride_i, cols, mask, D)
    d_x, d_delta = _one_mix_grad(d_x, d_delta, delta, mix_ptr, bias_ptr, grad_g, d_mix_ptr, 4, offs, mix_offs,
                                 mix_stride_i, cols, mask, D)
    tl.store(d_x_ptr + offs, d_x.to(d_x_ptr.dtype.element_ty), mask=mask)
    tl.store(d_delta_ptr + offs, d_delta.to(d_delta_ptr.dtype.element_ty), mask=mask)


def _launch_shape(rows: int, channels: int) -> tuple[tuple[int], dict]:
    """Grid and block sizes: all channels of ~4K elements' worth of rows per program."""
    block_d = triton.next_power_of_2(channels)
    block_t = max(1, min(16, 4096 // block_d))
    return (triton.cdiv(rows, block_t),), dict(BLOCK_T=block_t, BD=block_d, num_warps=4 if block_d <= 512 else 8)


def _rows_view(mix: torch.Tensor, rows: int, channels: int) -> torch.Tensor:
    """``mix [B, T, 5, D]`` as ``[rows, 5, D]`` without copying where its layout allows (the einsum that
    produces it leaves the mix index outermost); channels must be unit-stride."""
    view = mix.reshape(rows, MIXES, channels)
    return view if view.stride(-1) == 1 else view.contiguous()


class DDLerpFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, mix, bias):
        batch, seq_len, channels = x.shape
        rows = batch * seq_len
        x, delta, bias = x.contiguous(), delta.contiguous(), bias.contiguous()
        mix_rows = _rows_view(mix, rows, channels)
        outs = [torch.empty_like(x) for _ in range(MIXES)]
        grid, meta = _launch_shape(rows, channels)
        ddlerp_fwd_kernel[grid](x, delta, mix_rows, bias, *outs, rows, mix_rows.stride(0), mix_rows.stride(1),
                                D=channels, **meta)
        ctx.save_for_backward(delta, mix_rows, bias)
        ctx.mix_shape = mix.shape
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        delta, mix_rows, bias = ctx.saved_tensors
        rows, _, channels = mix_rows.shape
        grads = [g.contiguous() for g in grads]
        d_x, d_delta = torch.empty_like(delta), torch.empty_like(delta)
        d_mix = torch.empty_like(mix_rows)  # same layout as mix, so the einsum's backward reads it as is
        grid, meta = _launch_shape(rows, channels)
        ddlerp_bwd_kernel[grid](delta, mix_rows, bias, *grads, d_x, d_delta, d_mix, rows,
                                mix_rows.stride(0), mix_rows.stride(1), D=channels, **meta)
        d_bias = d_mix.sum(0, dtype=torch.float32).to(bias.dtype)
        return d_x, d_delta, d_mix.view(ctx.mix_shape), d_bias


def ddlerp_fused(x, delta, mix, bias) -> tuple[torch.Tensor, ...]:
    """``ddlerp`` (see ``ddlerp.py``) with the Triton kernels; outputs in ``x.dtype``."""
    if x.shape != delta.shape or mix.shape != (*x.shape[:2], MIXES, x.shape[2]) or bias.shape != (MIXES, x.shape[2]):
        raise ValueError(f"ddlerp: expected x, delta [B, T, D], mix [B, T, 5, D], bias [5, D]; got "
                         f"{tuple(x.shape)}, {tuple(delta.shape)}, {tuple(mix.shape)}, {tuple(bias.shape)}")
    return DDLerpFused.apply(x, delta, mix, bias)
