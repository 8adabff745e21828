"""The model configuration: one dataclass, validated at construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from groundthink.layers.fusion import FUSIONS

# One letter per layer kind: a pattern like "P" (every block parallel) or "R M M R" (a sequential stack).
LAYER_KINDS = {
    "P": "parallel hybrid block: RWKV-6 and Mamba-2 on the same input, fused",
    "R": "RWKV-6 only block",
    "M": "Mamba-2 only block",
    "A": "causal self-attention block (GPT-2 style)",
}


@dataclass
class ModelConfig:
    vocab_size: int = 65
    hidden_size: int = 128
    n_layers: int = 8
    # Layer pattern, cycled to n_layers: "P" = all parallel blocks; "R M M R" = sequential stack.
    layers: str = "P"
    fusion: str = "gate"
    gate_init: float | None = None
    # RWKV-6 (FLA RWKV6Attention arguments): key dim = hidden * expand_k, heads divide the key dim.
    rwkv_heads: int = 4
    rwkv_expand_k: float = 0.5
    rwkv_expand_v: float = 1.0
    # Mamba-2 (FLA Mamba2 arguments): heads = expand * hidden / head_dim.
    mamba_expand: int = 2
    mamba_head_dim: int = 64
    mamba_state_size: int = 128
    mamba_conv_kernel: int = 4
    # Attention baseline.
    attn_heads: int = 4
    max_position_embeddings: int = 1024
    ffn_mult: int = 4
    norm_eps: float = 1e-5
    # Balance intervention (seeds' Q6): add Mamba's raw branch output straight to the residual stream
    # with this weight, besides the fusion. 0 = off.
    mamba_residual: float = 0.0
    # Balance intervention (seeds' Obs. 11): during training, zero the RWKV-6 output of each sequence with
    # this probability, so the model cannot lean on RWKV alone. 0 = off.
    rwkv_dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "n_layers", "rwkv_heads", "mamba_head_dim",
                     "mamba_state_size", "attn_heads", "max_position_embeddings", "ffn_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        unknown = set(self.pattern) - set(LAYER_KINDS)
        if not self.pattern or unknown:
            raise ValueError(f"model.layers {self.layers!r} has unknown layer kinds {sorted(unknown)}; "
                             f"use letters from {', '.join(LAYER_KINDS)} (e.g. 'P' or 'R M M R')")
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion {self.fusion!r} is unknown; valid: {', '.join(FUSIONS)}")
        if not 0.0 <= self.rwkv_dropout < 1.0:
            raise ValueError(f"model.rwkv_dropout must be in [0, 1), got {self.rwkv_dropout}")
        if self.gate_init is not None and not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"model.gate_init must be in (0, 1), got {self.gate_init}")

    @property
    def pattern(self) -> list[str]:
        letters = self.layers.replace(",", " ").split() if " " in self.layers or "," in self.layers \
            else list(self.layers)
        return [letter.upper() for letter in letters]

    def layer_kinds(self) -> list[str]:
        pattern = self.pattern
        return [pattern[i % len(pattern)] for i in range(self.n_layers)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; valid: {', '.join(sorted(fields))}")
        return cls(**data)
