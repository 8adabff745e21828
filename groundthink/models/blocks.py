"""Blocks: the parallel hybrid block (docs/design.md#block) and the single-mixer blocks of the baselines.

Every block maps ``x -> x'`` and carries a per-branch recurrent state. For diagnostics a block can
record what it measured (``record = True``: gate share, raw branch activation variance) and can have a
branch silenced (``ablate = {"rwkv6"}`` / ``{"mamba2"}``: that branch's output is replaced by zeros).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from groundthink.layers.attention import CausalSelfAttention
from groundthink.layers.fusion import build_fusion
from groundthink.layers.mamba2 import Mamba2
from groundthink.layers.rwkv6 import RWKV6
from groundthink.models.config import ModelConfig
from groundthink.ops.norms import RMSNorm

# Metric suffixes of docs/design.md#balance-metrics: act_var_rwkv, act_var_mamba, ...
SHORT_NAME = {"rwkv6": "rwkv", "mamba2": "mamba", "attention": "attention"}


class FFN(nn.Module):
    """Linear(d, m*d) -> GELU -> Linear(m*d, d), no bias."""

    def __init__(self, hidden_size: int, mult: int):
        super().__init__()
        self.up = nn.Linear(hidden_size, mult * hidden_size, bias=False)
        self.act = nn.GELU()
        self.down = nn.Linear(mult * hidden_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def make_rwkv6(cfg: ModelConfig) -> RWKV6:
    return RWKV6(hidden_size=cfg.hidden_size, expand_k=cfg.rwkv_expand_k, expand_v=cfg.rwkv_expand_v,
                 num_heads=cfg.rwkv_heads, norm_eps=cfg.norm_eps)


def make_mamba2(cfg: ModelConfig) -> Mamba2:
    return Mamba2(hidden_size=cfg.hidden_size, expand=cfg.mamba_expand, head_dim=cfg.mamba_head_dim,
                  state_size=cfg.mamba_state_size, conv_kernel=cfg.mamba_conv_kernel, norm_eps=cfg.norm_eps)


class Block(nn.Module):
    """``x' = x + mix(RMSNorm(x))``; ``out = x' + FFN(RMSNorm(x'))``. Subclasses define ``mix``."""

    branches: tuple[str, ...] = ()

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.ffn = FFN(cfg.hidden_size, cfg.ffn_mult)
        # model.dropout on the mixer's and the FFN's output before each residual add (Identity at 0, so a
        # run without dropout draws no random numbers).
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.record = False
        self.ablate: set[str] = set()
        self.last_stats: dict[str, torch.Tensor] = {}

    def branch(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Record a raw branch output's variance, and silence it when ablated."""
        if self.record:
            self.last_stats[f"act_var_{SHORT_NAME[name]}"] = out.detach().float().var()
        return torch.zeros_like(out) if name in self.ablate else out

    def forward(self, x, state=None):
        mixed, new_state = self.mix(self.norm(x), state)
        x = x + self.dropout(mixed)
        return x + self.dropout(self.ffn(self.ffn_norm(x))), new_state


class ParallelHybridBlock(Block):
    """RWKV-6 and Mamba-2 read the same normalized input; a fusion module blends their normalized outputs."""

    branches = ("rwkv6", "mamba2")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.rwkv6 = make_rwkv6(cfg)
        self.mamba2 = make_mamba2(cfg)
        self.norm_rwkv = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.norm_mamba = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.fusion = build_fusion(cfg.fusion, cfg.hidden_size, cfg.gate_init)
        self.mamba_residual = cfg.mamba_residual
        self.rwkv_dropout = cfg.rwkv_dropout

    def mix(self, h, state):
        out_rwkv, state_rwkv = self.rwkv6(h, None if state is None else state["rwkv6"])
        out_mamba, state_mamba = self.mamba2(h, None if state is None else state["mamba2"])
        out_rwkv, out_mamba = self.branch("rwkv6", out_rwkv), self.branch("mamba2", out_mamba)
        rwkv_normed = self.norm_rwkv(out_rwkv)
        if self.training and self.rwkv_dropout > 0:
            keep = torch.rand(h.shape[0], 1, 1, device=h.device) >= self.rwkv_dropout
            rwkv_normed = rwkv_normed * keep.to(rwkv_normed.dtype)
        fused, gate = self.fusion(rwkv_normed, self.norm_mamba(out_mamba))
        if self.mamba_residual:
            fused = fused + self.mamba_residual * out_mamba
        if gate is not None and self.record:
            self.last_stats["gate_rwkv"] = gate.detach().float().mean()
        return fused, {"rwkv6": state_rwkv, "mamba2": state_mamba}


class RWKV6Block(Block):
    branches = ("rwkv6",)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.rwkv6 = make_rwkv6(cfg)
        self.norm_rwkv = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)

    def mix(self, h, state):
        out, new = self.rwkv6(h, None if state is None else state["rwkv6"])
        return self.norm_rwkv(self.branch("rwkv6", out)), {"rwkv6": new}


class Mamba2Block(Block):
    branches = ("mamba2",)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.mamba2 = make_mamba2(cfg)
        self.norm_mamba = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)

    def mix(self, h, state):
        out, new = self.mamba2(h, None if state is None else state["mamba2"])
        return self.norm_mamba(self.branch("mamba2", out)), {"mamba2": new}


class AttentionBlock(Block):
    """GPT-2 style pre-norm block (no norm after the mixer, as in GPT-2)."""

    branches = ("attention",)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.attention = CausalSelfAttention(cfg.hidden_size, cfg.attn_heads, cfg.dropout)

    def mix(self, h, state):
        out, cache = self.attention(h, None if state is None else state["attention"])
        return self.branch("attention", out), {"attention": cache}


BLOCKS = {"P": ParallelHybridBlock, "R": RWKV6Block, "M": Mamba2Block, "A": AttentionBlock}
