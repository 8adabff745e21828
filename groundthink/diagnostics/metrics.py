"""The expensive balance metrics (docs/design.md#balance-metrics): recurrent state norms and branch ablation,
plus ``balance_metrics``, every metric for one batch. The cheap ones the trainer logs live in
``groundthink/models/metrics.py`` and are re-exported here.
"""
from __future__ import annotations

import torch

from groundthink.models.metrics import (BALANCE_STATS, BRANCHES, SHORT_NAME, branch_grad_norms, grad_ratio,
                                        record_balance, recorded_per_layer)

__all__ = ["BALANCE_STATS", "BRANCHES", "SHORT_NAME", "branch_grad_norms", "grad_ratio", "record_balance",
           "recorded_per_layer", "branch_state", "per_sequence_norm", "state_norms", "token_losses",
           "ablation_share", "ablation_metrics", "has_both_branches", "balance_metrics"]


# ---- the expensive metrics of docs/design.md#balance-metrics: state norms and ablation ----------------------------------

def branch_state(layer_state: dict, branch: str) -> torch.Tensor | None:
    """The recurrent state docs/design.md#balance-metrics measures: ``RWKV6State.wkv`` or ``Mamba2State.ssm`` (None if absent)."""
    state = layer_state.get(branch)
    if state is None:
        return None
    return state.wkv if branch == "rwkv6" else state.ssm


def per_sequence_norm(tensor: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each batch element's state: ``[B, ...] -> [B]``."""
    return torch.linalg.vector_norm(tensor.float().flatten(1), dim=1)


def state_norms(states: list[dict]) -> dict:
    """``state_norm_rwkv`` / ``state_norm_mamba``: the norm of each branch's recurrent state at the end of the
    sequence (mean over the batch), per layer (None where the layer lacks the branch) and averaged over layers.

    ``states`` is ``model(ids, return_states=True).states``.
    """
    result = {}
    for branch in BRANCHES:
        per_layer = []
        for layer_state in states:
            tensor = branch_state(layer_state, branch)
            per_layer.append(None if tensor is None else float(per_sequence_norm(tensor).mean()))
        present = [v for v in per_layer if v is not None]
        if present:
            result[f"state_norm_{SHORT_NAME[branch]}_per_layer"] = per_layer
            result[f"state_norm_{SHORT_NAME[branch]}"] = sum(present) / len(present)
    return result


@torch.no_grad()
def token_losses(model, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position, ``[B, T]`` (float32)."""
    logits = model(input_ids).logits.float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def ablation_share(increase_rwkv: float, increase_mamba: float) -> dict[str, float] | None:
    """``ablation_share``: each branch's loss increase when zeroed, as a share of the two increases.

    A negative increase (zeroing the branch *helps*) counts as 0: that branch carries nothing useful.
    None when neither increase is positive (no branch carries anything; the share is undefined).
    """
    rwkv, mamba = max(increase_rwkv, 0.0), max(increase_mamba, 0.0)
    if rwkv + mamba <= 0.0:
        return None
    return {"rwkv": rwkv / (rwkv + mamba), "mamba": mamba / (rwkv + mamba)}


@torch.no_grad()
def ablation_metrics(model, input_ids: torch.Tensor, targets: torch.Tensor,
                     layers: list[int] | None = None) -> dict:
    """Loss with each branch zeroed (in ``layers``, default all) and the resulting ``ablation_share``."""
    base = float(token_losses(model, input_ids, targets).mean())
    result = {"loss": base}
    for branch in BRANCHES:
        with model.ablated(branch, layers):
            ablated = float(token_losses(model, input_ids, targets).mean())
        result[f"loss_without_{SHORT_NAME[branch]}"] = ablated
        result[f"increase_{SHORT_NAME[branch]}"] = ablated - base
    share = ablation_share(result["increase_rwkv"], result["increase_mamba"])
    result["ablation_share_rwkv"] = None if share is None else share["rwkv"]
    result["ablation_share_mamba"] = None if share is None else share["mamba"]
    return result


def has_both_branches(model) -> bool:
    return all(any(branch in layer.branches for layer in model.layers) for branch in BRANCHES)


def balance_metrics(model, input_ids: torch.Tensor, targets: torch.Tensor) -> dict:
    """Every metric of docs/design.md#balance-metrics for one batch: ``grad_ratio``, ``gate_rwkv``, ``act_var_rwkv`` /
    ``act_var_mamba``, ``state_norm_rwkv`` / ``state_norm_mamba`` and ``ablation_share`` (per layer where the
    metric is per layer). Metrics that do not apply to the model (a baseline without a branch) are absent.
    The model's own ``.grad`` fields are left untouched (gradients come from ``torch.autograd.grad``).
    """
    result: dict = {}
    if has_both_branches(model):
        loss = model(input_ids, targets=targets).loss
        params = {b: [p for p in model.branch_parameters(b) if p.requires_grad] for b in BRANCHES}
        grads = torch.autograd.grad(loss, params["rwkv6"] + params["mamba2"], allow_unused=True)
        norms = {}
        for branch, chunk in (("rwkv6", grads[:len(params["rwkv6"])]), ("mamba2", grads[len(params["rwkv6"]):])):
            present = [torch.linalg.vector_norm(g.float()) for g in chunk if g is not None]
            norms[branch] = float(torch.linalg.vector_norm(torch.stack(present))) if present else 0.0
        result["grad_norm_rwkv"], result["grad_norm_mamba"] = norms["rwkv6"], norms["mamba2"]
        result["grad_ratio"] = norms["rwkv6"] / norms["mamba2"] if norms["mamba2"] > 0 else float("inf")
    with torch.no_grad():
        result.update(record_balance(model, input_ids))
        result.update(state_norms(model(input_ids, return_states=True).states))
    if has_both_branches(model):
        result.update(ablation_metrics(model, input_ids, targets))
    return result
