"""AdamW with parameter groups ``rwkv`` / ``mamba`` / ``other``, each split by weight decay, and the few
operations every training loop needs on it: set the learning rate, save and load its state.

Weight decay applies only to matrices of linear, convolution and embedding layers. Norm weights, biases,
RWKV's token-shift mixes and bonus, Mamba's A_log / D / dt_bias (flagged ``_no_weight_decay`` by the layer,
as in FLA), anything else 1-D, and every parameter of a module that declares ``exempt_from_weight_decay``
(the fusion modules) are not decayed.

``build_optimizer(..., capturable=True)`` gives the form a CUDA graph can capture: fused, capturable, with a
*tensor* learning rate per group that ``set_lr`` fills in place between replays. On CPU both forms are the
plain (foreach) AdamW.
"""
from __future__ import annotations

import torch

GROUPS = ("rwkv", "mamba", "other")


def group_of(name: str) -> str:
    if ".rwkv6." in name:
        return "rwkv"
    if ".mamba2." in name:
        return "mamba"
    return "other"


def exempt_parameters(model: torch.nn.Module) -> set[int]:
    """Ids of the parameters of modules that declare ``exempt_from_weight_decay``."""
    return {id(p) for module in model.modules() if getattr(module, "exempt_from_weight_decay", False)
            for p in module.parameters()}


def decays(name: str, param: torch.nn.Parameter, exempt: set[int] = frozenset()) -> bool:
    return (name.endswith("weight") and param.ndim >= 2 and id(param) not in exempt
            and not getattr(param, "_no_weight_decay", False))


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float, mamba_lr_mult: float = 1.0) -> list[dict]:
    """Up to six groups named ``rwkv``, ``rwkv_no_decay``, ``mamba``, ... Each carries its ``lr_mult``."""
    exempt = exempt_parameters(model)
    buckets: dict[str, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = group_of(name) + ("" if decays(name, param, exempt) else "_no_decay")
        buckets.setdefault(key, []).append(param)
    groups = []
    for base in GROUPS:
        mult = mamba_lr_mult if base == "mamba" else 1.0
        for key, wd in ((base, weight_decay), (base + "_no_decay", 0.0)):
            if key in buckets:
                groups.append({"params": buckets[key], "name": key, "lr": lr * mult, "lr_mult": mult,
                               "weight_decay": wd})
    return groups


def build_optimizer(model: torch.nn.Module, train_config, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups`` with the run's betas and weight decay (``train_config``: a TrainConfig)."""
    groups = parameter_groups(model, train_config.lr, train_config.weight_decay, train_config.mamba_lr_mult)
    return make_adamw(groups, lr=train_config.lr, betas=(train_config.beta1, train_config.beta2),
                      weight_decay=train_config.weight_decay, capturable=capturable)


def make_adamw(params, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.1, eps: float = 1e-8,
               capturable: bool = False, device=None) -> torch.optim.AdamW:
    """AdamW on the device of ``params``: fused on CUDA; with ``capturable`` also tensor learning rates."""
    params = list(params)
    device = torch.device(device) if device is not None else _first_device(params)
    if device.type != "cuda":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if not capturable:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, fused=True)
    optimizer = torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=device), betas=betas,
                                  weight_decay=weight_decay, eps=eps, fused=True, capturable=True)
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * group["lr_mult"]`` (1 without one), without a host sync:
    tensor learning rates are filled in place, since a captured step reads them from that memory."""
    for group in optimizer.param_groups:
        value = float(lr) * float(group.get("lr_mult", 1.0))
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def graph_ready(optimizer: torch.optim.Optimizer) -> str | None:
    """None when ``optimizer`` can be captured in a CUDA graph, else why not (a sentence naming the fix)."""
    for group in optimizer.param_groups:
        if not group.get("capturable", False):
            return ("the optimizer is not capturable: build it with build_optimizer(..., capturable=True) "
                    "(fused, capturable)")
        if not isinstance(group["lr"], torch.Tensor):
            return ("a param group's lr is a float, which a CUDA graph would freeze: build the optimizer with "
                    "build_optimizer(..., capturable=True) so learning rates are tensors")
    return None


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with plain-number learning rates (a captured step's are tensors), so
    checkpoints of both kinds of step have one format and resume with either."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:  # copies of the groups: the live tensors stay as they are
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = group["lr"].item()
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load moments and step counts; how the optimizer runs stays its own: a capturable optimizer keeps its
    flags (fused, capturable) and the lr tensors a captured step reads, and a plain one never inherits a
    captured run's ``capturable``."""
    before = [dict(group) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, old in zip(optimizer.param_groups, before):
        kept = ("fused", "capturable", "foreach", "differentiable") if old.get("capturable") else ("capturable",)
        for flag in kept:
            if flag in old:
                group[flag] = old[flag]
        if isinstance(old["lr"], torch.Tensor):
            old["lr"].fill_(float(group["lr"]))
            group["lr"] = old["lr"]


def _first_device(params: list) -> torch.device:
    for item in params:
        tensors = item["params"] if isinstance(item, dict) else [item]
        for tensor in tensors:
            return tensor.device
    return torch.device("cpu")
