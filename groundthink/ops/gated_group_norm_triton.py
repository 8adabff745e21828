"""``gated_group_norm`` as one Triton kernel forward and one backward (CUDA; the op is in ``gated_group_norm.py``).

A program takes ``BLOCK_T`` rows (tokens) of one head: it reads ``o`` and the gate once and writes
``(LayerNorm(o) * weight + bias) * silu(gate)``. The backward reads the output gradient, ``o`` and the gate
(recomputing the statistics), writes the gradients of ``o`` and the gate, and leaves per program one partial
sum of the ``weight`` and ``bias`` gradients, which PyTorch adds up. Arithmetic in float32, results rounded
once to the tensors' dtypes. Runs under ``TRITON_INTERPRET=1`` on CPU too (float32). The tiling is
``skip_gated_norm_triton.py``'s.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from groundthink.ops.skip_gated_norm_triton import group_block_sizes, partial_sum_programs, row_group_tile


@triton.jit
def _normed_and_gate(o_ptr, g_ptr, offs, mask, eps, GROUP: tl.constexpr):
    """One tile in float32: ``(o - mean) / std`` per row, ``1 / std`` (a column), the gate and its sigmoid."""
    o = tl.load(o_ptr + offs, mask=mask, other=0.).to(tl.float32)
    gate = tl.load(g_ptr + offs, mask=mask, other=0.).to(tl.float32)
    centered = tl.where(mask, o - (tl.sum(o, axis=1) / GROUP)[:, None], 0.0)
    inv_std = tl.rsqrt(tl.sum(centered * centered, axis=1) / GROUP + eps)[:, None]
    return centered * inv_std, inv_std, gate, tl.sigmoid(gate)


@triton.jit
def gated_group_norm_fwd_kernel(o_ptr, g_ptr, w_ptr, b_ptr, out_ptr, n_rows, eps,
                                C: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr, BG: tl.constexpr):
    rows, cols, col_mask, mask, offs = row_group_tile(tl.program_id(0).to(tl.int64) * BLOCK_T, n_rows,
                                                      tl.program_id(1), C, GROUP, BLOCK_T, BG)
    normed, _, gate, sig = _normed_and_gate(o_ptr, g_ptr, offs, mask, eps, GROUP)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.).to(tl.float32)[None, :]
    b = tl.load(b_ptr + cols, mask=col_mask, other=0.).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, ((normed * w + b) * gate * sig).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_group_norm_bwd_kernel(grad_ptr, o_ptr, g_ptr, w_ptr, b_ptr, do_ptr, dg_ptr, dw_part_ptr, db_part_ptr,
                                n_rows, blocks_per_program, eps,
                                C: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr, BG: tl.constexpr):
    program, group = tl.program_id(0), tl.program_id(1)
    start = program.to(tl.int64) * blocks_per_program * BLOCK_T
    lanes = tl.arange(0, BG)
    w = tl.load(w_ptr + group * GROUP + lanes, mask=lanes < GROUP, other=0.).to(tl.float32)[None, :]
    b = tl.load(b_ptr + group * GROUP + lanes, mask=lanes < GROUP, other=0.).to(tl.float32)[None, :]
    d_w = tl.zeros([BG], dtype=tl.float32)
    d_b = tl.zeros([BG], dtype=tl.float32)
    for block in range(0, blocks_per_program):
        rows, cols, col_mask, mask, offs = row_group_tile(start + block * BLOCK_T, n_rows, group, C, GROUP,
                                                          BLOCK_T, BG)
        normed, inv_std, gate, sig = _normed_and_gate(o_ptr, g_ptr, offs, mask, eps, GROUP)
        grad = tl.load(grad_ptr + offs, mask=mask, other=0.).to(tl.float32)
        d_y = grad * gate * sig                                   # out = y * silu(gate), y = normed * w + b
        d_gate = grad * (normed * w + b) * sig * (1 + gate * (1 - sig))
        d_w += tl.sum(d_y * normed, axis=0)
        d_b += tl.sum(d_y, axis=0)
        d_normed = d_y * w
        mean_d = tl.sum(d_normed, axis=1) / GROUP
        mean_dn = tl.sum(d_normed * normed, axis=1) / GROUP
        d_o = inv_std * (d_normed - mean_d[:, None] - normed * mean_dn[:, None])
        tl.store(do_ptr + offs, d_o.to(do_ptr.dtype.element_ty), mask=mask)
        tl.store(dg_ptr + offs, d_gate.to(dg_ptr.dtype.element_ty), mask=mask)
    part = program * C + group * GROUP + lanes
    tl.store(dw_part_ptr + part, d_w, mask=lanes < GROUP)
    tl.store(db_part_ptr + part, d_b, mask=lanes < GROUP)


class GatedGroupNormFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o, gate, weight, bias, num_groups, eps):
        channels = o.shape[-1]
        rows, group = o.numel() // channels, channels // num_groups
        o, gate, weight, bias = o.contiguous(), gate.contiguous(), weight.contiguous(), bias.contiguous()
        out = torch.empty_like(o)
        meta = group_block_sizes(group, 4096)
        gated_group_norm_fwd_kernel[(triton.cdiv(rows, meta["BLOCK_T"]), num_groups)](
            o, gate, weight, bias, out, rows, eps, C=channels, GROUP=group, **meta)
        ctx.save_for_backward(o, gate, weight, bias)
        ctx.num_groups, ctx.eps = num_groups, eps
        return out

    @staticmethod
    def backward(ctx, grad):
        o, gate, weight, bias = ctx.saved_tensors
        channels = o.shape[-1]
        rows, group = o.numel() // channels, channels // ctx.num_groups
        d_o, d_gate = torch.empty_like(o), torch.empty_like(gate)
        meta = group_block_sizes(group, 2048)
        programs, blocks_per_program = partial_sum_programs(o.device, rows, meta["BLOCK_T"])
        d_w_part = torch.empty(programs, channels, dtype=torch.float32, device=o.device)
        d_b_part = torch.empty_like(d_w_part)
        gated_group_norm_bwd_kernel[(programs, ctx.num_groups)](
            grad.contiguous(), o, gate, weight, bias, d_o, d_gate, d_w_part, d_b_part, rows, blocks_per_program,
            ctx.eps, C=channels, GROUP=group, **meta)
        return d_o, d_gate, d_w_part.sum(0).to(weight.dtype), d_b_part.sum(0).to(bias.dtype), None, None


def gated_group_norm_fused(o, gate, weight, bias, num_groups: int, eps: float) -> torch.Tensor:
    """``gated_group_norm`` (see ``gated_group_norm.py``) with the Triton kernels; output in ``o.dtype``."""
    channels = o.shape[-1]
    if (gate.shape != o.shape or weight.shape != (channels,) or bias.shape != (channels,)
            or channels % num_groups):
        raise ValueError(f"gated_group_norm: expected o and gate [..., C], weight and bias [C], C divisible by "
                         f"num_groups {num_groups}; got {tuple(o.shape)}, {tuple(gate.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    return GatedGroupNormFused.apply(o, gate, weight, bias, num_groups, eps)
