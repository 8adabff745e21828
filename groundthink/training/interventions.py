"""Balance interventions as trainer hooks (the seed design's attempts to make Mamba count, and new ones).

Switched on by the ``interventions`` config section (``interventions_config.py``); the trainer builds
them with ``intervention_hooks`` and runs them with any hooks it was given.

* ``BalanceLoss``: a penalty when RWKV's share leaves a target band, either the fusion's mean gate
  (``gate``) or RWKV's share of the fused output's magnitude (``share``).
* ``GateFreeze``: the fusion parameters receive no updates for the first N steps (the seed design's "frozen gates").
* ``MambaGradScale``: multiply every ``mamba2.*`` gradient before clipping (the seed design, Observation 10).

Branch dropout (``model.rwkv_dropout``), Mamba added straight to the residual (``model.mamba_residual``) and
``train.mamba_lr_mult`` are model / optimizer settings and need no hook.
"""
from __future__ import annotations

import torch

from groundthink.errors import UserError
from groundthink.layers.fusion import FUSIONS
from groundthink.training.hooks import TrainerHook
from groundthink.training.interventions_config import InterventionsConfig


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).mean().sqrt()


def band_distance(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """How far ``x`` lies outside ``[low, high]`` (0 inside)."""
    return torch.relu(low - x) + torch.relu(x - high)


class BalanceLoss(TrainerHook):
    """``loss += weight * mean_layers(band_distance(rwkv_share)^2)``.

    Both targets are read by a forward hook on each fusion module, in training forwards only.
    ``target="gate"``: the share is the fusion's mean gate. ``target="share"``: RWKV's share of the fused
    output's RMS (from the fusion's ``parts``); unlike the gate it also sees the branch norms' learned gains,
    so a gate pushed into the band cannot be undone by a larger RWKV norm weight.
    """

    graph_safe = True  # the penalty is device work of a fixed shape; last_penalty is read at eval only

    def __init__(self, weight: float, target: str, low: float, high: float):
        self.weight, self.target, self.low, self.high = weight, target, low, high
        self.shares: list[torch.Tensor] = []
        self.handles = []
        self.last_penalty: torch.Tensor | None = None
        self.last_share: torch.Tensor | None = None

    def on_fit_start(self, state) -> None:
        if not self.handles:
            self.handles = [fusion.register_forward_hook(self._record_share) for fusion in state.model.fusions()]

    def _record_share(self, fusion, inputs, output) -> None:
        if not (fusion.training and torch.is_grad_enabled()):
            return  # evaluation passes add no penalty
        if self.target == "gate":
            self.shares.append(output[1].float().mean())
            return
        part_r, part_m = fusion.parts(*inputs, output[1])
        size_r, size_m = rms(part_r), rms(part_m)
        self.shares.append(size_r / (size_r + size_m).clamp_min(1e-12))

    def extra_loss(self, state, output) -> torch.Tensor | None:
        shares, self.shares = self.shares, []
        if not shares:
            return None
        share = torch.stack(shares)
        penalty = band_distance(share, self.low, self.high).pow(2).mean()
        self.last_penalty, self.last_share = penalty.detach(), share.detach().mean()
        return self.weight * penalty

    def on_eval(self, state, record: dict) -> None:
        if self.last_penalty is not None:  # read only here: the one host sync of this hook
            record["balance_penalty"] = float(self.last_penalty)
            record[f"balance_{self.target}_rwkv"] = float(self.last_share)


class GateFreeze(TrainerHook):
    """No updates for the fusion parameters during the first ``steps`` optimizer steps.

    While frozen they do not require gradients, so AdamW skips them entirely (no moments, no step count):
    at step ``steps`` they start training as if new. Decided from ``state.step`` alone, so a resumed run
    freezes exactly as an uninterrupted one.
    """

    graph_unsafe_because = ("interventions.gate_freeze_steps switches which parameters train mid-run, which a "
                            "captured step cannot follow")

    def __init__(self, steps: int):
        self.steps = steps

    @staticmethod
    def parameters(model) -> list[torch.nn.Parameter]:
        return [p for fusion in model.fusions() for p in fusion.parameters()]

    def on_step_start(self, state) -> None:
        frozen = state.step < self.steps
        for param in self.parameters(state.model):
            param.requires_grad_(not frozen)

    def on_eval(self, state, record: dict) -> None:
        record["gate_frozen"] = state.step < self.steps


class MambaGradScale(TrainerHook):
    """Every ``mamba2.*`` gradient times ``scale``, after backward and before clipping.

    The logged ``grad_ratio`` stays the ratio of the *loss's* gradients (the held, scaled ratio times
    ``scale``: clipping scales both branches alike), so it compares across interventions;
    ``grad_ratio_scaled`` is the ratio the optimizer saw.
    """

    graph_safe = True  # one in-place multiply of the gradients, whose memory a captured step keeps

    def __init__(self, scale: float):
        self.scale = scale

    def on_after_backward(self, state) -> None:
        grads = [p.grad for p in state.model.branch_parameters("mamba2") if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, self.scale)

    def on_eval(self, state, record: dict) -> None:
        if record.get("grad_ratio") is not None:
            record["grad_ratio_scaled"] = record["grad_ratio"]
            record["grad_ratio"] = record["grad_ratio"] * self.scale


def intervention_hooks(settings: InterventionsConfig, model_config) -> list[TrainerHook]:
    """The hooks the ``interventions`` section asks for, after checking that the model can take them."""
    kinds = model_config.layer_kinds()
    hooks: list[TrainerHook] = []
    if settings.balance_weight > 0:
        if "P" not in kinds:
            raise UserError("interventions.balance_weight needs parallel hybrid blocks (a fusion to balance); "
                            "use a fusion variant such as GF-MH or set interventions.balance_weight=0")
        if settings.balance_target == "gate" and not FUSIONS[model_config.fusion][0].has_gate:
            raise UserError(f"interventions.balance_target=gate needs a fusion with a gate, and the model's "
                            f"fusion {model_config.fusion!r} has none; use interventions.balance_target=share")
        hooks.append(BalanceLoss(settings.balance_weight, settings.balance_target, settings.balance_low,
                                 settings.balance_high))
    if settings.gate_freeze_steps > 0:
        if "P" not in kinds:
            raise UserError("interventions.gate_freeze_steps needs parallel hybrid blocks (a fusion to freeze); "
                            "use a fusion variant such as GF-MH or set interventions.gate_freeze_steps=0")
        hooks.append(GateFreeze(settings.gate_freeze_steps))
    if settings.mamba_grad_scale != 1.0:
        if "P" not in kinds and "M" not in kinds:
            raise UserError("interventions.mamba_grad_scale needs Mamba-2 layers; this model has none")
        hooks.append(MambaGradScale(settings.mamba_grad_scale))
    return hooks
