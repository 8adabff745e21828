"""``mamba2_scan_inputs`` as one Triton kernel forward and two backward (CUDA; the op is in ``mamba2_inputs.py``).

Grid: ``BT`` tokens of one sequence x one section of channels. ``x`` programs take ``BX`` channels of ``x``;
``B`` and ``C`` programs take one group's ``N`` channels and write them once per head of the group (``B``
scaled by that head's ``dt``; those programs also write ``g = dt * A``). Each recomputes the short
convolution from ``xBC`` (the ``W`` taps are ``W`` shifted loads) and ``dt``'s softplus.

Backward, kernel 1 (same grid): the gradient of the convolution's output (``d_x``; ``sum_h dt_h d_k_h``;
``sum_h d_q_h``) times SiLU's derivative, ``d_pre`` (float32), and ``dt``'s gradient (through ``k`` and ``g``,
the clamp and the softplus); kernel 2 (tokens x any channels): the convolution's input gradient
``d_xBC[t] = sum_w weight[w] d_pre[t + W - 1 - w]`` and, per program, partial sums of the weight and bias
gradients. PyTorch adds up the partials and the per-token terms of ``dt_bias``'s and ``A_log``'s gradients.
Arithmetic in float32, results rounded once. Runs under ``TRITON_INTERPRET=1`` on CPU too (float32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Tokens per program, with 8 warps: ~8 elements of a [BT, 128] tile per thread keeps the kernels under ~170
# registers on Hopper (sm_90 build: 32 tokens took all 255), so at least 8 warps stay resident per SM.
BT = 16       # the forward and kernel 1
BT_CONV = 32  # kernel 2 (the convolution's backward: ~60 registers)
WARPS = 8


@triton.jit
def _softplus(x):
    """``log(1 + exp(x))`` to float32 precision everywhere (``log1p`` by Goldberg's ``log(u) e / (u - 1)``)."""
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    return tl.maximum(x, 0.0) + tl.where(u == 1.0, e, tl.log(u) * e / tl.where(u == 1.0, 1.0, u - 1.0))


@triton.jit
def _conv(xbc_ptr, w_ptr, b_ptr, local, times, cols, t_mask, c_mask, stride_t,
          W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The convolution's pre-activation at this program's tokens x ``cols``, float32. ``xbc_ptr`` points at the
    program's first token; ``local`` are the tokens' offsets from it, ``times`` their positions in the sequence."""
    pre = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        pre += tl.load(b_ptr + cols, mask=c_mask, other=0.).to(tl.float32)[None, :]
    for w in tl.static_range(W):
        mask = (t_mask & (times - (W - 1) + w >= 0))[:, None] & c_mask[None, :]
        taps = tl.load(xbc_ptr + (local - (W - 1) + w)[:, None] * stride_t + cols[None, :], mask=mask, other=0.)
        pre += taps.to(tl.float32) * tl.load(w_ptr + cols * W + w, mask=c_mask, other=0.).to(tl.float32)[None, :]
    return pre


@triton.jit
def _dt(dt_ptr, dt_bias_ptr, local, t_mask, head, stride_t, dt_min, dt_max):
    """``(dt + dt_bias, clamp(softplus(dt + dt_bias)), whether the clamp passes gradients)`` for one head, ``[BT]``."""
    raw = tl.load(dt_ptr + local * stride_t + head, mask=t_mask, other=0.).to(tl.float32)
    raw += tl.load(dt_bias_ptr + head).to(tl.float32)
    soft = _softplus(raw)
    return raw, tl.minimum(tl.maximum(soft, dt_min), dt_max), (soft >= dt_min) & (soft <= dt_max)


@triton.jit
def _section(T, HP, N, G, X_BLOCKS, BX: tl.constexpr, BLOCK_T: tl.constexpr):
    """This program's tokens and channel section: (tokens' offsets from the first, their positions, mask, row of
    the first token in [B * T], batch, section 0/1/2 = x/B/C, first column, group). Offsets inside a tile stay
    32-bit; the 64-bit part goes into the base pointers (fewer registers)."""
    first_token = tl.program_id(0) * BLOCK_T
    local = tl.arange(0, BLOCK_T)
    batch = tl.program_id(1).to(tl.int64)
    section_id = tl.program_id(2)
    kind = tl.where(section_id < X_BLOCKS, 0, tl.where(section_id < X_BLOCKS + G, 1, 2))
    group = tl.where(kind == 1, section_id - X_BLOCKS, section_id - X_BLOCKS - G)
    first = tl.where(kind == 0, section_id * BX, HP + (kind - 1) * G * N + group * N)
    times = first_token + local
    return local, times, times < T, batch * T + first_token, batch, kind, first, group


@triton.jit
def _fwd_x_block(xbc_ptr, w_ptr, b_ptr, x_ptr, local, times, t_mask, first, HP, xbc_stride_t,
                 W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BX: tl.constexpr):
    """``x`` for ``BX`` channels from ``first``."""
    cols = first + tl.arange(0, BX)
    c_mask = cols < HP
    pre = _conv(xbc_ptr, w_ptr, b_ptr, local, times, cols, t_mask, c_mask, xbc_stride_t, W, HAS_BIAS, BLOCK_T, BX)
    tl.store(x_ptr + local[:, None] * HP + cols[None, :], (pre * tl.sigmoid(pre)).to(x_ptr.dtype.element_ty),
             mask=t_mask[:, None] & c_mask[None, :])


@triton.jit
def _fwd_group_block(xbc_ptr, w_ptr, b_ptr, dt_ptr, dt_bias_ptr, a_log_ptr, k_ptr, q_ptr, g_ptr, local, times,
                     t_mask, first, group, is_b, H, N, HEADS_PER_GROUP, xbc_stride_t, dt_stride_t, dt_min, dt_max,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BN: tl.constexpr):
    """One group's ``B`` (``is_b``: written as ``k = dt * B`` per head, with ``g = dt * A``) or ``C`` (``q``)."""
    lanes = tl.arange(0, BN)
    n_mask = lanes < N
    pre = _conv(xbc_ptr, w_ptr, b_ptr, local, times, first + lanes, t_mask, n_mask, xbc_stride_t, W, HAS_BIAS,
                BLOCK_T, BN)
    act = pre * tl.sigmoid(pre)
    mask = t_mask[:, None] & n_mask[None, :]
    for i in range(0, HEADS_PER_GROUP):
        head = group * HEADS_PER_GROUP + i
        offs = (local[:, None] * H + head) * N + lanes[None, :]
        if is_b:
            _, dt, _ = _dt(dt_ptr, dt_bias_ptr, local, t_mask, head, dt_stride_t, dt_min, dt_max)
            tl.store(k_ptr + offs, (act * dt[:, None]).to(k_ptr.dtype.element_ty), mask=mask)
            A = -tl.exp(tl.load(a_log_ptr + head).to(tl.float32))
            tl.store(g_ptr + local * H + head, dt * A, mask=t_mask)
        else:
            tl.store(q_ptr + offs, act.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def mamba2_inputs_fwd_kernel(xbc_ptr, dt_ptr, w_ptr, b_ptr, dt_bias_ptr, a_log_ptr, x_ptr, k_ptr, q_ptr, g_ptr,
                             T, xbc_stride_b, xbc_stride_t, dt_stride_b, dt_stride_t, dt_min, dt_max,
                             HP, H, N, G, HEADS_PER_GROUP, X_BLOCKS,
                             W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BX: tl.constexpr,
                             BN: tl.constexpr):
    local, times, t_mask, row0, batch, kind, first, group = _section(T, HP, N, G, X_BLOCKS, BX, BLOCK_T)
    xbc_ptr += batch * xbc_stride_b + (row0 - batch * T) * xbc_stride_t
    # One helper per section: compiled Triton wants a name bound in both branches of an `if` to keep its type.
    if kind == 0:
        _fwd_x_block(xbc_ptr, w_ptr, b_ptr, x_ptr + row0 * HP, local, times, t_mask, first, HP, xbc_stride_t,
                     W, HAS_BIAS, BLOCK_T, BX)
    else:
        _fwd_group_block(xbc_ptr, w_ptr, b_ptr, dt_ptr + batch * dt_stride_b + (row0 - batch * T) * dt_stride_t,
                         dt_bias_ptr, a_log_ptr, k_ptr + row0 * H * N, q_ptr + row0 * H * N, g_ptr + row0 * H, local,
                         times, t_mask, first, group, kind == 1, H, N, HEADS_PER_GROUP, xbc_stride_t, dt_stride_t,
                         dt_min, dt_max, W, HAS_BIAS, BLOCK_T, BN)


@triton.jit
def _store_d_pre(d_pre_ptr, pre, d_act, local, cols, mask, CONV):
    """``d_pre = d_act * silu'(pre)``, ``silu'(p) = sigmoid(p) (1 + p (1 - sigmoid(p)))``."""
    sig = tl.sigmoid(pre)
    tl.store(d_pre_ptr + local[:, None] * CONV + cols[None, :], d_act * sig * (1 + pre * (1 - sig)), mask=mask)


@triton.jit
def _bwd_x_block(xbc_ptr, w_ptr, b_ptr, dx_ptr, d_pre_ptr, local, times, t_mask, first, HP, CONV, xbc_stride_t,
                 W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BX: tl.constexpr):
    """``d_pre`` for ``BX`` channels of ``x`` from ``first``: their gradient is ``d_x``."""
    cols = first + tl.arange(0, BX)
    c_mask = cols < HP
    mask = t_mask[:, None] & c_mask[None, :]
    pre = _conv(xbc_ptr, w_ptr, b_ptr, local, times, cols, t_mask, c_mask, xbc_stride_t, W, HAS_BIAS, BLOCK_T, BX)
    d_act = tl.load(dx_ptr + local[:, None] * HP + cols[None, :], mask=mask, other=0.).to(tl.float32)
    _store_d_pre(d_pre_ptr, pre, d_act, local, cols, mask, CONV)


@triton.jit
def _bwd_group_block(xbc_ptr, w_ptr, b_ptr, dt_ptr, dt_bias_ptr, a_log_ptr, dk_ptr, dq_ptr, dg_ptr, d_pre_ptr,
                     d_dt_ptr, a_terms_ptr, local, times, t_mask, first, group, is_b, H, N, HEADS_PER_GROUP, CONV,
                     xbc_stride_t, dt_stride_t, dt_min, dt_max,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BN: tl.constexpr):
    """``d_pre`` for one group's ``B`` (gradient ``sum_h dt_h d_k_h``; also ``dt``'s gradient and ``A``'s terms)
    or ``C`` (``sum_h d_q_h``)."""
    lanes = tl.arange(0, BN)
    n_mask = lanes < N
    mask = t_mask[:, None] & n_mask[None, :]
    pre = _conv(xbc_ptr, w_ptr, b_ptr, local, times, first + lanes, t_mask, n_mask, xbc_stride_t, W, HAS_BIAS,
                BLOCK_T, BN)
    act = pre * tl.sigmoid(pre)
    d_act = tl.zeros([BLOCK_T, BN], dtype=tl.float32)
    for i in range(0, HEADS_PER_GROUP):
        head = group * HEADS_PER_GROUP + i
        offs = (local[:, None] * H + head) * N + lanes[None, :]
        if is_b:   # k = dt * B: B gets sum_h dt_h d_k_h, dt_h gets d_k_h . B (+ A d_g_h through g)
            raw, dt, passes = _dt(dt_ptr, dt_bias_ptr, local, t_mask, head, dt_stride_t, dt_min, dt_max)
            d_k = tl.load(dk_ptr + offs, mask=mask, other=0.).to(tl.float32)
            d_act += d_k * dt[:, None]
            d_g = tl.load(dg_ptr + local * H + head, mask=t_mask, other=0.).to(tl.float32)
            A = -tl.exp(tl.load(a_log_ptr + head).to(tl.float32))
            d_dt = tl.where(passes, tl.sum(d_k * act, axis=1) + d_g * A, 0.0)
            tl.store(d_dt_ptr + local * H + head, d_dt * tl.sigmoid(raw), mask=t_mask)
            tl.store(a_terms_ptr + local * H + head, d_g * dt, mask=t_mask)
        else:
            d_act += tl.load(dq_ptr + offs, mask=mask, other=0.).to(tl.float32)
    _store_d_pre(d_pre_ptr, pre, d_act, local, first + lanes, mask, CONV)


@triton.jit
def mamba2_inputs_bwd_act_kernel(xbc_ptr, dt_ptr, w_ptr, b_ptr, dt_bias_ptr, a_log_ptr, dx_ptr, dk_ptr, dq_ptr,
                                 dg_ptr, d_pre_ptr, d_dt_ptr, a_terms_ptr,
                                 T, xbc_stride_b, xbc_stride_t, dt_stride_b, dt_stride_t, dt_min, dt_max,
                                 HP, H, N, G, HEADS_PER_GROUP, X_BLOCKS, CONV,
                                 W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BX: tl.constexpr,
                                 BN: tl.constexpr):
    local, times, t_mask, row0, batch, kind, first, group = _section(T, HP, N, G, X_BLOCKS, BX, BLOCK_T)
    xbc_ptr += batch * xbc_stride_b + (row0 - batch * T) * xbc_stride_t
    d_pre_ptr += row0 * CONV
    if kind == 0:
        _bwd_x_block(xbc_ptr, w_ptr, b_ptr, dx_ptr + row0 * HP, d_pre_ptr, local, times, t_mask, first, HP, CONV,
                     xbc_stride_t, W, HAS_BIAS, BLOCK_T, BX)
    else:
        _bwd_group_block(xbc_ptr, w_ptr, b_ptr, dt_ptr + batch * dt_stride_b + (row0 - batch * T) * dt_stride_t,
                         dt_bias_ptr, a_log_ptr, dk_ptr + row0 * H * N, dq_ptr + row0 * H * N, dg_ptr + row0 * H,
                         d_pre_ptr, d_dt_ptr + row0 * H, a_terms_ptr + row0 * H, local, times, t_mask, first, group,
                         kind == 1, H, N, HEADS_PER_GROUP, CONV, xbc_stride_t, dt_stride_t, dt_min, dt_max,
                         W, HAS_BIAS, BLOCK_T, BN)


@triton.jit
def mamba2_inputs_bwd_conv_kernel(xbc_ptr, w_ptr, d_pre_ptr, d_xbc_ptr, d_w_part_ptr, d_b_part_ptr,
                                  T, xbc_stride_b, xbc_stride_t, CONV,
                                  W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr,
                                  BC: tl.constexpr):
    t_block, batch = tl.program_id(0), tl.program_id(1).to(tl.int64)
    first_token = t_block * BLOCK_T
    local = tl.arange(0, BLOCK_T)
    times = first_token + local
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    t_mask, c_mask = times < T, cols < CONV
    mask = t_mask[:, None] & c_mask[None, :]
    row0 = batch * T + first_token
    d_pre_ptr += row0 * CONV
    xbc_ptr += batch * xbc_stride_b + first_token.to(tl.int64) * xbc_stride_t
    d_in = tl.zeros([BLOCK_T, BC], dtype=tl.float32)
    for w in tl.static_range(W):   # input t feeds outputs t .. t + W - 1, through tap W - 1 - (their distance)
        ahead = local + (W - 1) - w
        d_out = tl.load(d_pre_ptr + ahead[:, None] * CONV + cols[None, :],
                        mask=(times + (W - 1) - w < T)[:, None] & c_mask[None, :], other=0.)
        d_in += d_out * tl.load(w_ptr + cols * W + w, mask=c_mask, other=0.).to(tl.float32)[None, :]
    tl.store(d_xbc_ptr + row0 * CONV + local[:, None] * CONV + cols[None, :], d_in.to(d_xbc_ptr.dtype.element_ty),
             mask=mask)
    d_pre = tl.load(d_pre_ptr + local[:, None] * CONV + cols[None, :], mask=mask, other=0.)
    part = batch * tl.num_programs(0) + t_block
    for w in tl.static_range(W):
        taps = tl.load(xbc_ptr + (local - (W - 1) + w)[:, None] * xbc_stride_t + cols[None, :],
                       mask=(t_mask & (times - (W - 1) + w >= 0))[:, None] & c_mask[None, :], other=0.)
        tl.store(d_w_part_ptr + (part * CONV + cols) * W + w, tl.sum(d_pre * taps.to(tl.float32), axis=0),
                 mask=c_mask)
    if HAS_BIAS:
        tl.store(d_b_part_ptr + part * CONV + cols, tl.sum(d_pre, axis=0), mask=c_mask)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """``t [B, T, C]`` with unit channel stride (a column slice of the in-projection's output already has it)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _sizes(xBC, dt, num_heads: int, n_groups: int, state_size: int) -> dict:
    head_channels = xBC.shape[-1] - 2 * n_groups * state_size
    block_x = min(128, triton.next_power_of_2(head_channels))
    return dict(HP=head_channels, H=num_heads, N=state_size, G=n_groups, HEADS_PER_GROUP=num_heads // n_groups,
                X_BLOCKS=triton.cdiv(head_channels, block_x), BX=block_x, BN=triton.next_power_of_2(state_size))


class Mamba2ScanInputsFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xBC, dt, conv_weight, conv_bias, dt_bias, A_log, dt_limit, num_heads, n_groups, state_size):
        batch, seq_len, _ = xBC.shape
        xBC, dt, conv_weight = _unit_stride(xBC), _unit_stride(dt), conv_weight.contiguous()
        sizes = _sizes(xBC, dt, num_heads, n_groups, state_size)
        head_dim = sizes["HP"] // num_heads
        x = torch.empty(batch, seq_len, num_heads, head_dim, dtype=xBC.dtype, device=xBC.device)
        k = torch.empty(batch, seq_len, num_heads, state_size, dtype=xBC.dtype, device=xBC.device)
        q = torch.empty_like(k)
        g = torch.empty(batch, seq_len, num_heads, dtype=torch.float32, device=xBC.device)
        grid = (triton.cdiv(seq_len, BT), batch, sizes["X_BLOCKS"] + 2 * n_groups)
        mamba2_inputs_fwd_kernel[grid](
            xBC, dt, conv_weight, conv_weight if conv_bias is None else conv_bias, dt_bias, A_log, x, k, q, g,
            seq_len, xBC.stride(0), xBC.stride(1), dt.stride(0), dt.stride(1), float(dt_limit[0]),
            float(dt_limit[1]), W=conv_weight.shape[1], HAS_BIAS=conv_bias is not None, BLOCK_T=BT,
            num_warps=WARPS, **sizes)
        ctx.save_for_backward(xBC, dt, conv_weight, conv_bias, dt_bias, A_log)
        ctx.dt_limit, ctx.sizes = dt_limit, sizes
        return x, k, q, g

    @staticmethod
    def backward(ctx, d_x, d_k, d_q, d_g):
        xBC, dt, conv_weight, conv_bias, dt_bias, A_log = ctx.saved_tensors
        batch, seq_len, channels = xBC.shape
        sizes, width, has_bias = ctx.sizes, conv_weight.shape[1], conv_bias is not None
        d_pre = torch.empty(batch, seq_len, channels, dtype=torch.float32, device=xBC.device)
        d_dt = torch.empty(dt.shape, dtype=torch.float32, device=xBC.device)
        a_terms = torch.empty_like(d_dt)
        grid = (triton.cdiv(seq_len, BT), batch, sizes["X_BLOCKS"] + 2 * sizes["G"])
        mamba2_inputs_bwd_act_kernel[grid](
            xBC, dt, conv_weight, conv_weight if conv_bias is None else conv_bias, dt_bias, A_log, d_x.contiguous(),
            d_k.contiguous(), d_q.contiguous(), d_g.contiguous(), d_pre, d_dt, a_terms,
            seq_len, xBC.stride(0), xBC.stride(1), dt.stride(0), dt.stride(1), float(ctx.dt_limit[0]),
            float(ctx.dt_limit[1]), CONV=channels, W=width, HAS_BIAS=has_bias, BLOCK_T=BT, num_warps=WARPS,
            **sizes)
        d_xBC = torch.empty(batch, seq_len, channels, dtype=xBC.dtype, device=xBC.device)
        block_c = min(64, triton.next_power_of_2(channels))
        grid = (triton.cdiv(seq_len, BT_CONV), batch, triton.cdiv(channels, block_c))
        d_w_part = torch.empty(grid[0] * batch, channels, width, dtype=torch.float32, device=xBC.device)
        d_b_part = torch.empty(grid[0] * batch, channels, dtype=torch.float32, device=xBC.device) if has_bias else None
        mamba2_inputs_bwd_conv_kernel[grid](
            xBC, conv_weight, d_pre, d_xBC, d_w_part, d_w_part if d_b_part is None else d_b_part,
            seq_len, xBC.stride(0), xBC.stride(1), channels, W=width, HAS_BIAS=has_bias, BLOCK_T=BT_CONV,
            BC=block_c, num_warps=WARPS)
        d_bias = d_b_part.sum(0).to(conv_bias.dtype) if has_bias else None
        d_A_log = (a_terms.sum((0, 1)) * -torch.exp(A_log.float())).to(A_log.dtype)
        return (d_xBC, d_dt.to(dt.dtype), d_w_part.sum(0).to(conv_weight.dtype), d_bias,
                d_dt.sum((0, 1)).to(dt_bias.dtype), d_A_log, None, None, None, None)


def mamba2_scan_inputs_fused(xBC, dt, conv_weight, conv_bias, dt_bias, A_log, dt_limit, num_heads: int,
                             n_groups: int, state_size: int):
    """``mamba2_scan_inputs`` (see ``mamba2_inputs.py``) with the Triton kernels."""
    batch, seq_len, channels = xBC.shape
    head_channels = channels - 2 * n_groups * state_size
    if (head_channels <= 0 or head_channels % num_heads or num_heads % n_groups
            or dt.shape != (batch, seq_len, num_heads)
            or conv_weight.shape[0] != channels or dt_bias.shape != (num_heads,) or A_log.shape != (num_heads,)):
        raise ValueError(f"mamba2_scan_inputs: expected xBC [B, T, H*P + 2*G*N], dt [B, T, H], conv_weight [C, W], "
                         f"dt_bias and A_log [H] with H={num_heads}, G={n_groups}, N={state_size}; got "
                         f"{tuple(xBC.shape)}, {tuple(dt.shape)}, {tuple(conv_weight.shape)}, "
                         f"{tuple(dt_bias.shape)}, {tuple(A_log.shape)}")
    return Mamba2ScanInputsFused.apply(xBC, dt, conv_weight, conv_bias, dt_bias, A_log, dt_limit, num_heads,
                                       n_groups, state_size)
