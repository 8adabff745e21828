"""The balance metrics that training logs and diagnostics report, one name and one definition each
(docs/design.md#balance-metrics): ``grad_ratio``, ``gate_rwkv``, ``act_var_rwkv`` / ``act_var_mamba``.

They are cheap, and return device tensors or plain floats after one recorded forward pass, so the trainer
can log them at every evaluation. The expensive ones (state norms, ablation) are in diagnostics/metrics.py.
"""
from __future__ import annotations

import torch

BRANCHES = ("rwkv6", "mamba2")
SHORT_NAME = {"rwkv6": "rwkv", "mamba2": "mamba"}


def branch_grad_norms(model) -> dict[str, torch.Tensor]:
    """L2 norm of the gradients of all ``rwkv6.*`` and of all ``mamba2.*`` parameters (device tensors)."""
    norms = {}
    for branch in BRANCHES:
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


BALANCE_STATS = ("gate_rwkv", "act_var_rwkv", "act_var_mamba")


@torch.no_grad()
def recorded_per_layer(model, input_ids: torch.Tensor) -> dict[str, list[float | None]]:
    """One recorded forward pass: ``gate_rwkv``, ``act_var_rwkv``, ``act_var_mamba`` per layer, with None
    where a layer lacks the quantity (no gate, no such branch). Keys with no value in any layer are absent."""
    with model.recording() as stats:
        model(input_ids)
    result = {}
    for name in BALANCE_STATS:
        per_layer = [float(layer[name]) if name in layer else None for layer in stats]
        if any(v is not None for v in per_layer):
            result[name] = per_layer
    return result


@torch.no_grad()
def record_balance(model, input_ids: torch.Tensor) -> dict[str, float | list[float]]:
    """One forward pass that records, per layer and overall: ``gate_rwkv`` (gated variants only),
    ``act_var_rwkv`` and ``act_var_mamba`` (variance of each branch's raw output, before its RMSNorm)."""
    result: dict[str, float | list[float]] = {}
    for name, values in recorded_per_layer(model, input_ids).items():
        per_layer = [v for v in values if v is not None]
        result[f"{name}_per_layer"] = per_layer
        result[name] = sum(per_layer) / len(per_layer)
    return result
