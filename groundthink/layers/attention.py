"""Causal multi-head self-attention for the GPT-2 baseline (PyTorch SDPA: flash attention on CUDA)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache(NamedTuple):
    key: torch.Tensor    # [B, H, T_past, Dh]
    value: torch.Tensor  # [B, H, T_past, Dh]


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"attention heads ({num_heads}) must divide hidden_size ({hidden_size})")
        self.num_heads = num_heads
        self.dropout = dropout  # on the attention probabilities, in training only
        self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, state: KVCache | None = None):
        batch, seq_len, hidden = x.shape
        q, k, v = (t.view(batch, seq_len, self.num_heads, -1).transpose(1, 2)
                   for t in self.qkv_proj(x).chunk(3, dim=-1))
        if state is not None:
            k = torch.cat([state.key.to(k.dtype), k], dim=2)
            v = torch.cat([state.value.to(v.dtype), v], dim=2)
        past = k.shape[2] - seq_len
        dropout = self.dropout if self.training else 0.0
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            # Query i sits at absolute position past + i and sees keys 0..past + i.
            keys = torch.arange(k.shape[2], device=x.device)
            mask = keys[None, :] <= (past + torch.arange(seq_len, device=x.device))[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, seq_len, hidden)
        return self.o_proj(out), KVCache(k, v)
