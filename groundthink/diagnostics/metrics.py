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


# ---- the expensive metrics of SPEC §4: state norms and ablation ----------------------------------

BRANCHES = ("rwkv6", "mamba2")
SHORT_NAME = {"rwkv6": "rwkv", "mamba2": "mamba"}


def branch_state(layer_state: dict, branch: str) -> torch.Tensor | None:
    """The recurrent state SPEC §4 measures: ``RWKV6State.wkv`` or ``Mamba2State.ssm`` (None if absent)."""
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
    """Every metric of SPEC §4 for one batch: ``grad_ratio``, ``gate_rwkv``, ``act_var_rwkv`` /
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
