"""Modules (the ``layers`` of FLA's split): mixers, fusion variants, attention."""
from groundthink.layers.attention import CausalSelfAttention, KVCache
from groundthink.layers.fusion import FUSIONS, build_fusion
from groundthink.layers.mamba2 import Mamba2, Mamba2State
from groundthink.layers.rwkv6 import RWKV6, RWKV6State

__all__ = ["RWKV6", "RWKV6State", "Mamba2", "Mamba2State", "CausalSelfAttention", "KVCache",
           "FUSIONS", "build_fusion"]
