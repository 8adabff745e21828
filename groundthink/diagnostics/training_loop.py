"""A short, real optimizer loop on a copy of the model: G3 (short training), gradient coupling, overfit.

The trainer's own step (``training/step.py``) and optimizer (its parameter groups, the training defaults'
betas) at a constant learning rate, in float32. The model being diagnosed is never touched: the loop trains
a deep copy.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from groundthink.diagnostics.metrics import BRANCHES
from groundthink.training.config import TrainConfig
from groundthink.training.optim import build_optimizer
from groundthink.training.step import TrainStep


@dataclass
class TrainingTrace:
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)        # total, before clipping
    grad_norm_rwkv: list[float] = field(default_factory=list)
    grad_norm_mamba: list[float] = field(default_factory=list)
    # Per step, per hybrid layer: cosine between dL/d(raw RWKV output) and dL/d(raw Mamba output). Both
    # branches read the same input and write to the same place, so this says whether the loss pushes them
    # the same way (redundant) or different ways (complementary).
    output_grad_cosine: list[list[float]] = field(default_factory=list)
    tokens_per_s: float | None = None

    @property
    def grad_ratio(self) -> list[float]:
        return [r / m if m > 0 else float("inf") for r, m in zip(self.grad_norm_rwkv, self.grad_norm_mamba)]


class _BranchOutputs:
    """Forward hooks that keep each hybrid layer's raw branch outputs, so their gradients can be read."""

    def __init__(self, model):
        self.outputs: list[dict[str, torch.Tensor]] = []
        self.handles = []
        for layer in model.layers:
            if all(branch in layer.branches for branch in BRANCHES):
                slot: dict[str, torch.Tensor] = {}
                self.outputs.append(slot)
                for branch in BRANCHES:
                    self.handles.append(getattr(layer, branch).register_forward_hook(self._keep(slot, branch)))

    @staticmethod
    def _keep(slot, branch):
        def hook(module, inputs, output):
            out = output[0]
            if out.requires_grad:
                out.retain_grad()
                slot[branch] = out
        return hook

    def cosines(self) -> list[float]:
        result = []
        for slot in self.outputs:
            grads = [slot[b].grad for b in BRANCHES if b in slot and slot[b].grad is not None]
            if len(grads) == 2:
                result.append(float(F.cosine_similarity(grads[0].flatten().float(), grads[1].flatten().float(), dim=0)))
        return result

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _branch_grad_norm(model, branch: str) -> float:
    grads = [p.grad.float() for p in model.branch_parameters(branch) if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The trainer's AdamW (its parameter groups and default betas) at this learning rate and decay."""
    return build_optimizer(model, TrainConfig(lr=lr, min_lr=0.0, weight_decay=weight_decay))


def train_copy(model, next_batch, steps: int, lr: float = 3e-4, weight_decay: float = 0.1, clip: float = 1.0,
               stop_below: float | None = None, seed: int = 0) -> TrainingTrace:
    """Train a deep copy of ``model`` for ``steps`` steps on ``next_batch(step) -> (inputs, targets)``.

    ``stop_below``: stop as soon as the loss falls below it (the overfit test). A non-finite loss stops
    the loop too (it is recorded, so the caller sees it).
    """
    torch.manual_seed(seed)
    trainee = copy.deepcopy(model).train()
    optimizer = make_optimizer(trainee, lr, weight_decay)
    hooks = _BranchOutputs(trainee)
    has_both = all(trainee.branch_parameters(b) for b in BRANCHES)
    trace = TrainingTrace()
    tokens, seconds = 0, 0.0
    train_step = None
    try:
        for step in range(steps):
            inputs, targets = next_batch(step)
            if train_step is None:
                train_step = TrainStep(trainee, optimizer, inputs.shape[0], inputs.shape[1], grad_clip=clip,
                                       amp_dtype=None, cuda_graph=False)
            start = time.perf_counter()
            out = train_step(inputs, targets)
            if inputs.is_cuda:
                torch.cuda.synchronize()
            if step > 0:  # the first step pays one-time costs (allocator, kernel selection)
                seconds += time.perf_counter() - start
                tokens += inputs.numel()
            # The gradients the step left behind (clipped, as the optimizer used them).
            trace.losses.append(float(out.loss))
            trace.grad_norms.append(float(out.grad_norm))
            if has_both:
                trace.grad_norm_rwkv.append(_branch_grad_norm(trainee, "rwkv6"))
                trace.grad_norm_mamba.append(_branch_grad_norm(trainee, "mamba2"))
            trace.output_grad_cosine.append(hooks.cosines())
            if not math.isfinite(trace.losses[-1]) or (stop_below is not None and trace.losses[-1] < stop_below):
                break
    finally:
        hooks.remove()
    trace.tokens_per_s = tokens / seconds if seconds > 0 else None
    return trace
