"""The model configuration: one dataclass, validated at construction.

Sizes the layers need to divide are checked here, for the layer kinds the pattern uses, so a bad
``--set model.hidden_size=30`` is one line naming the setting and a value that works, not a traceback
from inside a layer.
"""
from __future__ import annotations

import dataclasses
import math
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
    # Balance intervention (the seed design's Q6): add Mamba's raw branch output straight to the residual stream
    # with this weight, besides the fusion. 0 = off.
    mamba_residual: float = 0.0
    # Balance intervention (the seed design's Obs. 11): during training, zero the RWKV-6 output of each sequence with
    # this probability, so the model cannot lean on RWKV alone. 0 = off.
    rwkv_dropout: float = 0.0
    # Regularization (nanoGPT's places): the embeddings, each block's mixer output and FFN output before
    # the residual add, and attention probabilities. Training only; 0 = off (no random numbers drawn).
    dropout: float = 0.0
    # Initialization of the attention and FFN linears: "torch" = PyTorch's defaults; "gpt2" = GPT-2's, as
    # nanoGPT and Hugging Face apply it (model.py). Embeddings start at normal(0, 0.02) under both; RWKV-6
    # and Mamba-2 keep FLA's initialization either way.
    init: str = "torch"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "n_layers", "rwkv_heads", "mamba_expand", "mamba_head_dim",
                     "mamba_state_size", "mamba_conv_kernel", "attn_heads", "max_position_embeddings",
                     "ffn_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        for name in ("rwkv_expand_k", "rwkv_expand_v"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)!r}")
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
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.init not in INITS:
            raise ValueError(f"model.init {self.init!r} is unknown; valid: {', '.join(INITS)}")
        self.check_sizes()

    def check_sizes(self) -> None:
        """Every divisibility the used layers need; the error names the setting and values that work."""
        problem = size_problem(self)
        if problem is None:
            return
        message = problem[1]
        alternatives = [" and ".join(f"model.{k}={v}" for k, v in fix.items())
                        for fix in (divisor_fix(self), hidden_fix(self)) if fix]
        raise ValueError(f"{message}; use {', or '.join(alternatives) or 'other sizes'}")

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


INITS = ("torch", "gpt2")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def nearest(choices: list[int], value: int) -> int:
    return min(choices, key=lambda c: (abs(c - value), c))


def size_problem(cfg: ModelConfig) -> tuple[str, str, list[int]] | None:
    """The first size the used layers cannot work with: ``(setting, message, values of it that divide)``."""
    kinds = set(cfg.layer_kinds())
    hidden = cfg.hidden_size
    if kinds & {"P", "R"}:
        key_dim, value_dim = hidden * cfg.rwkv_expand_k, hidden * cfg.rwkv_expand_v
        for name, dim in (("rwkv_expand_k", key_dim), ("rwkv_expand_v", value_dim)):
            if not math.isclose(dim, round(dim)) or round(dim) < 1:
                return ("hidden_size", f"model.hidden_size {hidden} x model.{name} {getattr(cfg, name)} = {dim:g} "
                        f"is not a whole RWKV-6 dimension", [])
        key_dim, value_dim = round(key_dim), round(value_dim)
        if key_dim % cfg.rwkv_heads or value_dim % cfg.rwkv_heads:
            return ("rwkv_heads", f"model.rwkv_heads {cfg.rwkv_heads} must divide RWKV-6's key dim {key_dim} "
                    f"(hidden_size {hidden} x rwkv_expand_k {cfg.rwkv_expand_k:g}) and value dim {value_dim}",
                    divisors(math.gcd(key_dim, value_dim)))
    if kinds & {"P", "M"}:
        inner = cfg.mamba_expand * hidden
        if inner % cfg.mamba_head_dim:
            return ("mamba_head_dim", f"model.mamba_head_dim {cfg.mamba_head_dim} must divide Mamba-2's inner "
                    f"width {inner} (mamba_expand {cfg.mamba_expand} x hidden_size {hidden})", divisors(inner))
    if "A" in kinds and hidden % cfg.attn_heads:
        return ("attn_heads", f"model.attn_heads {cfg.attn_heads} must divide model.hidden_size {hidden}",
                divisors(hidden))
    return None


def divisor_fix(cfg: ModelConfig) -> dict:
    """Head settings changed to the nearest values that divide (hidden size kept), or {} when none do."""
    fix, trial = {}, _with(cfg)
    while (problem := size_problem(trial)) is not None:
        setting, _, divides = problem
        if not divides:
            return {}
        fix[setting] = nearest(divides, getattr(trial, setting))
        trial = _with(trial, **fix)
    return fix


def hidden_fix(cfg: ModelConfig, reach: int = 1024) -> dict:
    """The hidden size nearest to ``cfg``'s with which every other setting works ({} if none is near)."""
    for distance in range(1, reach + 1):
        for hidden in (cfg.hidden_size - distance, cfg.hidden_size + distance):
            if hidden > 0 and size_problem(_with(cfg, hidden_size=hidden)) is None:
                return {"hidden_size": hidden}
    return {}


def _with(cfg: ModelConfig, **changes) -> ModelConfig:
    # A copy without running __post_init__ (which would check the sizes again, recursively).
    copy = object.__new__(ModelConfig)
    copy.__dict__.update(cfg.__dict__, **changes)
    return copy
