"""Helpers over a model's per-layer states: a list (one per layer) of dicts of NamedTuples of tensors.

``{"rwkv6": RWKV6State(wkv, shift), "mamba2": Mamba2State(ssm, conv)}`` for recurrent blocks,
``{"attention": KVCache(key, value)}`` for attention blocks.
"""
from __future__ import annotations

from typing import Callable

import torch

States = list  # list[dict[str, NamedTuple of tensors]]


def map_states(fn: Callable[[torch.Tensor], torch.Tensor], states: States) -> States:
    """A new states structure with ``fn`` applied to every tensor."""
    return [{name: type(state)(*(fn(t) for t in state)) for name, state in layer.items()} for layer in states]


def state_tensors(states: States) -> list[torch.Tensor]:
    """Every tensor of the structure, in a fixed order (layer, branch, field)."""
    return [t for layer in states for state in layer.values() for t in state]


def state_nbytes(states: States) -> int:
    """Bytes held by the states: constant in context length for RWKV-6 / Mamba-2, growing for a KV cache."""
    return sum(t.numel() * t.element_size() for t in state_tensors(states))


def copy_states_(dst: States, src: States) -> None:
    """In place: every tensor of ``dst`` takes the values of the matching tensor of ``src``."""
    for d, s in zip(state_tensors(dst), state_tensors(src), strict=True):
        d.copy_(s)
