"""``skip_gated_rms_norm`` as one Triton kernel forward and one backward (CUDA; the op is in ``skip_gated_norm.py``).

A program takes ``BLOCK_T`` rows (tokens) of one norm group: it reads ``y``, ``x`` and the gate once, forms
``s = y + D x`` and ``h = s * silu(gate)``, and writes ``h / rms(h) * weight``. The backward reads the output
gradient and the same three inputs (recomputing ``h`` and its RMS: cheaper than storing them) and writes the
gradients of ``y``, ``x`` and the gate; each program walks a contiguous range of rows and leaves one partial
sum of the ``weight`` gradient and of ``D``'s (per channel), which PyTorch adds up. Arithmetic in float32,
results rounded once to the tensors' dtypes. Runs under ``TRITON_INTERPRET=1`` on CPU too (float32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from groundthink.ops.triton_grid import reduction_programs


@triton.jit
def row_group_tile(row0, n_rows, group, HP: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr,
                   BG: tl.constexpr):
    """Rows ``row0 ...`` x the channels of ``group``: row indices, column indices and masks, offsets into [rows, HP]."""
    rows = row0 + tl.arange(0, BLOCK_T)
    lanes = tl.arange(0, BG)
    cols = group * GROUP + lanes
    col_mask = lanes < GROUP
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    return rows, cols, col_mask, mask, rows[:, None] * HP + cols[None, :]


@triton.jit
def _skip_gate(y_ptr, x_ptr, z_ptr, d_ptr, rows, cols, col_mask, mask, offs, z_stride, P: tl.constexpr):
    """One tile in float32: ``x``, the gate ``z``, ``D`` per column, ``sigmoid(z)``, ``s = y + D x``,
    ``h = s silu(z)``."""
    y = tl.load(y_ptr + offs, mask=mask, other=0.).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.).to(tl.float32)
    z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=mask, other=0.).to(tl.float32)
    d = tl.load(d_ptr + cols // P, mask=col_mask, other=0.).to(tl.float32)[None, :]
    sig = tl.sigmoid(z)
    s = y + d * x
    return x, z, d, sig, s, s * z * sig


@triton.jit
def _inverse_rms(h, eps, GROUP: tl.constexpr):
    """``1 / sqrt(mean(h^2) + eps)`` per row, as a column ``[BLOCK_T, 1]`` (masked lanes hold zeros)."""
    return tl.rsqrt(tl.sum(h * h, axis=1) / GROUP + eps)[:, None]


@triton.jit
def skip_gated_norm_fwd_kernel(y_ptr, x_ptr, z_ptr, d_ptr, w_ptr, out_ptr, n_rows, z_stride, eps,
                               HP: tl.constexpr, GROUP: tl.constexpr, P: tl.constexpr,
                               BLOCK_T: tl.constexpr, BG: tl.constexpr):
    rows, cols, col_mask, mask, offs = row_group_tile(tl.program_id(0).to(tl.int64) * BLOCK_T, n_rows,
                                                      tl.program_id(1), HP, GROUP, BLOCK_T, BG)
    _, _, _, _, _, h = _skip_gate(y_ptr, x_ptr, z_ptr, d_ptr, rows, cols, col_mask, mask, offs, z_stride, P)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, (h * _inverse_rms(h, eps, GROUP) * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def skip_gated_norm_bwd_kernel(grad_ptr, y_ptr, x_ptr, z_ptr, d_ptr, w_ptr, dy_ptr, dx_ptr, dz_ptr, dw_part_ptr,
                               dd_part_ptr, n_rows, blocks_per_program, z_stride, eps,
                               HP: tl.constexpr, GROUP: tl.constexpr, P: tl.constexpr,
                               BLOCK_T: tl.constexpr, BG: tl.constexpr):
    program, group = tl.program_id(0), tl.program_id(1)
    start = program.to(tl.int64) * blocks_per_program * BLOCK_T
    lanes = tl.arange(0, BG)
    w = tl.load(w_ptr + group * GROUP + lanes, mask=lanes < GROUP, other=0.).to(tl.float32)[None, :]
    d_w = tl.zeros([BG], dtype=tl.float32)
    d_d = tl.zeros([BG], dtype=tl.float32)
    for block in range(0, blocks_per_program):
        rows, cols, col_mask, mask, offs = row_group_tile(start + block * BLOCK_T, n_rows, group, HP, GROUP,
                                                          BLOCK_T, BG)
        x, z, d, sig, s, h = _skip_gate(y_ptr, x_ptr, z_ptr, d_ptr, rows, cols, col_mask, mask, offs, z_stride, P)
        inv_rms = _inverse_rms(h, eps, GROUP)
        normed = h * inv_rms
        grad = tl.load(grad_ptr + offs, mask=mask, other=0.).to(tl.float32)
        d_w += tl.sum(grad * normed, axis=0)
        d_normed = grad * w
        d_h = inv_rms * (d_normed - normed * (tl.sum(d_normed * normed, axis=1) / GROUP)[:, None])
        d_s = d_h * z * sig                                     # h = s * silu(z)
        d_z = d_h * s * sig * (1 + z * (1 - sig))               # silu'(z) = sig (1 + z (1 - sig))
        d_d += tl.sum(d_s * x, axis=0)
        tl.store(dy_ptr + offs, d_s.to(dy_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + offs, (d_s * d).to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dz_ptr + offs, d_z.to(dz_ptr.dtype.element_ty), mask=mask)
    part = program * HP + group * GROUP + lanes
    tl.store(dw_part_ptr + part, d_w, mask=lanes < GROUP)
    tl.store(dd_part_ptr + part, d_d, mask=lanes < GROUP)


def group_block_sizes(group_size: int, elements: int) -> dict:
    """All channels of one group per program, ~``elements`` of them per tile, ~8 per thread in the backward
    (``elements=2048``) and ~16 in the forward (``4096``): under ~160 registers on Hopper (sm_90 build)."""
    block_g = triton.next_power_of_2(group_size)
    block_t = max(1, min(16, elements // block_g))
    return dict(BLOCK_T=block_t, BG=block_g, num_warps=8 if block_t * block_g >= 2048 else 4)


def partial_sum_programs(device: torch.device, rows: int, block_t: int) -> tuple[int, int]:
    """``(programs, row blocks per program)`` for a backward that walks contiguous row ranges and writes one
    partial sum per program."""
    row_blocks = triton.cdiv(rows, block_t)
    per_program = triton.cdiv(row_blocks, reduction_programs(device, row_blocks))
    return triton.cdiv(row_blocks, per_program), per_program


def _row_strided(gate: torch.Tensor) -> torch.Tensor:
    """``gate [B, T, C]`` such that row ``b * T + t`` starts at ``(b * T + t) * stride(1)``: a column slice of a
    contiguous tensor already is (no copy); anything else is copied."""
    batch, seq_len, _ = gate.shape
    if gate.stride(2) == 1 and (batch == 1 or gate.stride(0) == seq_len * gate.stride(1)):
        return gate
    return gate.contiguous()


class SkipGatedRMSNormFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, D, gate, weight, eps, group_size):
        batch, seq_len, heads, head_dim = y.shape
        channels, rows = heads * head_dim, batch * seq_len
        y, x, D, weight = y.contiguous(), x.contiguous(), D.contiguous(), weight.contiguous()
        gate = _row_strided(gate)
        out = torch.empty(batch, seq_len, channels, dtype=y.dtype, device=y.device)
        meta = group_block_sizes(group_size, 4096)
        grid = (triton.cdiv(rows, meta["BLOCK_T"]), channels // group_size)
        skip_gated_norm_fwd_kernel[grid](y, x, gate, D, weight, out, rows, gate.stride(1), eps,
                                         HP=channels, GROUP=group_size, P=head_dim, **meta)
        ctx.save_for_backward(y, x, D, gate, weight)
        ctx.eps, ctx.group_size = eps, group_size
        return out

    @staticmethod
    def backward(ctx, grad):
        y, x, D, gate, weight = ctx.saved_tensors
        batch, seq_len, heads, head_dim = y.shape
        channels, rows = heads * head_dim, batch * seq_len
        grad = grad.contiguous()
        d_y, d_x = torch.empty_like(y), torch.empty_like(x)
        d_gate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
        meta = group_block_sizes(ctx.group_size, 2048)
        programs, blocks_per_program = partial_sum_programs(y.device, rows, meta["BLOCK_T"])
        d_w_part = torch.empty(programs, channels, dtype=torch.float32, device=y.device)
        d_d_part = torch.empty(programs, channels, dtype=torch.float32, device=y.device)
        skip_gated_norm_bwd_kernel[(programs, channels // ctx.group_size)](
            grad, y, x, gate, D, weight, d_y, d_x, d_gate, d_w_part, d_d_part, rows, blocks_per_program,
            gate.stride(1), ctx.eps, HP=channels, GROUP=ctx.group_size, P=head_dim, **meta)
        d_weight = d_w_part.sum(0).to(weight.dtype)
        d_D = d_d_part.sum(0).view(heads, head_dim).sum(-1).to(D.dtype)
        return d_y, d_x, d_D, d_gate, d_weight, None, None


def skip_gated_rms_norm_fused(y, x, D, gate, weight, eps: float, group_size: int) -> torch.Tensor:
    """``skip_gated_rms_norm`` (see ``skip_gated_norm.py``) with the Triton kernels; output in ``y.dtype``."""
    batch, seq_len, heads, head_dim = y.shape
    channels = heads * head_dim
    if (x.shape != y.shape or D.shape != (heads,) or gate.shape != (batch, seq_len, channels)
            or weight.shape != (channels,) or channels % group_size):
        raise ValueError(f"skip_gated_rms_norm: expected y, x [B, T, H, P], D [H], gate [B, T, H*P], weight [H*P], "
                         f"H*P divisible by group_size {group_size}; got {tuple(y.shape)}, {tuple(x.shape)}, "
                         f"{tuple(D.shape)}, {tuple(gate.shape)}, {tuple(weight.shape)}")
    return SkipGatedRMSNormFused.apply(y, x, D, gate, weight, eps, group_size)
