"""Parameter accounting per component, for any model."""
from __future__ import annotations

import torch.nn as nn

COMPONENTS = ("embedding", "rwkv6", "mamba2", "attention", "fusion", "ffn", "norms")


def component_of(name: str) -> str:
    """The component a parameter belongs to, from its qualified name."""
    if name.startswith(("embed.", "pos_embed.", "head.")):
        return "embedding"
    for part in ("rwkv6", "mamba2", "attention", "fusion", "ffn"):
        if f".{part}." in name:
            return part
    return "norms"


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{component: count, ..., "total": count}``; tied weights are counted once."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, param in model.named_parameters():  # named_parameters() already de-duplicates tied weights
        counts[component_of(name)] += param.numel()
    counts["total"] = sum(counts.values())
    return counts
