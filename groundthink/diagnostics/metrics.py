"""Balance metrics (SPEC §4), one name and one definition each.

The cheap ones (``grad_ratio``, ``gate_rwkv``, ``act_var_*``) are what the trainer logs at eval time; they
return device tensors so the caller decides when to synchronize.
"""
from __future__ import annotations

import torch


def branch_grad_norms(model) -> dict[str, torch.Tensor]:
    """L2 norm of the gradients of all ``rwkv6.*`` and of all ``mamba2.*`` parameters (device tensors)."""
    norms = {}
    for branch in ("rwkv6", "mamba2"):
        grads = [p.grad for p in model.branch_parameters(branch) if p.grad is not None]
        if grads:
            norms[branch] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return norms


def grad_ratio(model) -> torch.Tensor | None:
    """``grad_ratio`` = ||grad rwkv6.*|| / ||grad mamba2.*|| for the gradients currently held by the model.

    None when the model lacks one of the two branches (baselines) or has no gradients yet.
    """
    norms = branch_grad_norms(model)
    if "rwkv6" not in norms or "mamba2" not in norms:
        return None
    return norms["rwkv6"] / norms["mamba2"].clamp_min(1e-12)


@torch.no_grad()
def record_balance(model, input_ids: torch.Tensor) -> dict[str, float | list[float]]:
    """One forward pass that records, per layer and overall: ``gate_rwkv`` (gated variants only),
    ``act_var_rwkv`` and ``act_var_mamba`` (variance of each branch's raw output, before its RMSNorm)."""
    with model.recording() as stats:
        model(input_ids)
    result: dict[str, float | list[float]] = {}
    for name in ("gate_rwkv", "act_var_rwkv", "act_var_mamba"):
        per_layer = [float(layer[name]) for layer in stats if name in layer]
        if per_layer:
            result[f"{name}_per_layer"] = per_layer
            result[name] = sum(per_layer) / len(per_layer)
    return result
