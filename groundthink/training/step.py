"""One optimizer step, written once: forward + backward over the micro-batches, clipping, AdamW.

``TrainStep`` runs it eagerly, or captures it as one CUDA graph and replays it. The small models of this
project spend most of a GPU step launching kernels (the char model runs ~2,000 tiny kernels per step), not
computing; a captured step replays all of them with one launch and no Python in between. Capture needs

- static shapes and buffers: the batch is copied into fixed input tensors before each replay;
- no host syncs: the loss and the gradient norm stay on the device (read them at log time);
- an optimizer whose step can be captured (``optim.build_optimizer(..., capturable=True)``) with tensor
  learning rates, which ``optim.set_lr`` changes in place between replays.

Usage (the trainer's loop does exactly this)::

    optimizer = build_optimizer(model, train_config, capturable=True)
    step = TrainStep(model, optimizer, batch_size=32, seq_len=64, accumulation=2, grad_clip=1.0)
    for it, (inputs, targets) in enumerate(batches):   # [accumulation, B, T] (or [B, T] when accumulation=1)
        out = step(inputs, targets, lr=schedule(it))    # out.loss / out.grad_norm: 0-dim device tensors
        if it % 10 == 0:
            print(out.loss.item())                      # the only host sync, at log time

A captured step's first ``warmup_steps`` calls run eagerly (real steps, which also run Triton's autotuning
and build the optimizer state); the next call captures the graph and replays it, later calls only replay.
Each call is exactly one optimizer step on the batch it was given. The tensors in ``StepOutput`` of a
captured step are its static outputs: the next call overwrites them (``.clone()`` them to keep them). After
capture ``p.grad`` holds the last step's clipped gradients (graph memory): don't set grads to None between
calls.

The step knows nothing of the trainer: it is given the module to run (a DDP wrapper is fine), the
learning rate of each call, a ``loss_fn`` (the trainer's adds the hooks' terms), an ``after_backward``
callback and a ``sync_context(last_micro_batch)`` (DDP / FSDP skip their gradient all-reduce on the others).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from groundthink.errors import UserError
from groundthink.training.optim import graph_ready, set_lr


@dataclass
class StepOutput:
    loss: torch.Tensor       # mean training loss over the micro-batches (float32, 0-dim, on the device)
    grad_norm: torch.Tensor  # total gradient norm before clipping (0-dim, on the device)


def lm_loss(model, inputs, targets):
    """The default ``loss_fn``: the language-model loss of one micro-batch."""
    return model(inputs, targets=targets).loss


def hooked_loss(hooks: list, state) -> Callable:
    """A ``loss_fn`` that runs each micro-batch inside the hooks' ``forward_context`` and adds their
    ``extra_loss`` terms; returns ``(loss to backpropagate, language-model loss)``."""
    def loss_fn(module, inputs, targets):
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                context = hook.forward_context(state)
                if context is not None:
                    stack.enter_context(context)
            output = module(inputs, targets=targets)
            loss = output.loss
            for hook in hooks:
                extra = hook.extra_loss(state, output)
                if extra is not None:
                    loss = loss + extra
        return loss, output.loss
    return loss_fn


def capture_problem(world_size: int, hooks: list) -> str | None:
    """Why a run's step cannot be captured as one CUDA graph (None when it can)."""
    if world_size > 1:
        return (f"cannot capture a distributed (DDP/FSDP) step (world size {world_size}): its all-reduce runs "
                f"outside the graph")
    for hook in hooks:
        if not getattr(hook, "graph_safe", False):
            why = getattr(hook, "graph_unsafe_because", None) or "it is not marked graph_safe"
            return f"cannot capture the hook {type(hook).__name__} ({why})"
    return None


def no_sync_needed(last_micro_batch: bool):
    return contextlib.nullcontext()


class TrainStep:
    """Forward + backward (with gradient accumulation) + clipping + optimizer step.

    ``module``: what forward passes go through (the model, or its DDP / FSDP form); its parameters are
    clipped. ``cuda_graph``: "auto" (capture on CUDA, eager elsewhere), True or False. ``compile``: run
    ``loss_fn`` under ``torch.compile`` (FLA's kernels stay opaque; Inductor fuses the PyTorch ops around
    them). ``amp_dtype``: "auto" (bfloat16 autocast on CUDA, none on CPU), a dtype, or None.
    ``loss_fn(module, inputs, targets)`` returns the loss to backpropagate, or ``(loss, lm_loss)`` when extra
    terms are added (``StepOutput.loss`` is then the mean ``lm_loss``). ``after_backward()`` runs once the
    gradients are complete, before clipping. In a captured step both are captured too: they must only
    launch device work (no ``.item()``, no Python decisions on tensor values).
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, seq_len: int,
                 *, accumulation: int = 1, grad_clip: float | None = 1.0, amp_dtype="auto",
                 cuda_graph="auto", compile: bool = False, warmup_steps: int = 3,
                 loss_fn: Callable = lm_loss, after_backward: Callable | None = None,
                 sync_context: Callable = no_sync_needed):
        if accumulation < 1 or batch_size < 1 or seq_len < 1:
            raise ValueError(f"accumulation, batch_size and seq_len must be >= 1, got "
                             f"{accumulation}, {batch_size}, {seq_len}")
        self.module, self.optimizer = module, optimizer
        self.device = next(module.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.use_graph = on_cuda if cuda_graph == "auto" else bool(cuda_graph)
        if self.use_graph:
            if not on_cuda:
                raise ValueError("cuda_graph=True needs the model on a CUDA device; use cuda_graph='auto'")
            problem = graph_ready(optimizer)
            if problem:
                raise ValueError(problem)
        self.amp_dtype = (torch.bfloat16 if on_cuda else None) if amp_dtype == "auto" else amp_dtype
        self.accumulation = accumulation
        self.max_norm = grad_clip if grad_clip else math.inf  # inf: measure the norm, clip nothing
        self.warmup_steps = max(int(warmup_steps), 1) if self.use_graph else 0
        self.loss_fn = torch.compile(loss_fn, dynamic=False) if compile else loss_fn
        self.after_backward = after_backward
        self.sync_context = sync_context
        shape = (accumulation, batch_size, seq_len)
        self.static_inputs = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.static_targets = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_output: StepOutput | None = None
        self.calls = 0
        # Seconds spent in the first call (kernel compilation, autotuning) and in the capture: the run's
        # phase clock reports them apart from the steady steps.
        self.first_call_s: float | None = None
        self.capture_s: float | None = None
        self._side_stream = torch.cuda.Stream(self.device) if self.use_graph else None

    # ----------------------------------------------------------------------------------------------
    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, lr: float | None = None) -> StepOutput:
        inputs, targets = self._shaped(inputs), self._shaped(targets)
        if lr is not None:
            set_lr(self.optimizer, lr)
        self.calls += 1
        started = time.perf_counter() if self.calls == 1 else None
        if not self.use_graph:
            self.optimizer.zero_grad(set_to_none=True)
            out = self._work(inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True))
        else:
            self.static_inputs.copy_(inputs, non_blocking=True)
            self.static_targets.copy_(targets, non_blocking=True)
            if self.graph is None and self.calls <= self.warmup_steps:
                out = self._eager_on_side_stream()
            else:
                if self.graph is None:
                    self._capture()
                self.graph.replay()
                out = self.static_output
        if started is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.first_call_s = time.perf_counter() - started
        return out

    def _shaped(self, batch: torch.Tensor) -> torch.Tensor:
        expected = tuple(self.static_inputs.shape)
        if batch.dim() == 2 and self.accumulation == 1:
            batch = batch.unsqueeze(0)
        if tuple(batch.shape) != expected:
            raise ValueError(f"batch of shape {tuple(batch.shape)} does not match the step's fixed shape "
                             f"{expected} (accumulation, batch_size, seq_len)")
        return batch

    def _work(self, inputs, targets) -> StepOutput:
        """The step itself: it reads only its arguments, so it can be captured over the static buffers."""
        total = None
        for micro in range(self.accumulation):
            with self.sync_context(micro == self.accumulation - 1):
                # cache_enabled=False: autocast's weight-cast cache must not outlive a captured region.
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None, cache_enabled=False):
                    loss = self.loss_fn(self.module, inputs[micro], targets[micro])
                loss, reported = loss if isinstance(loss, tuple) else (loss, loss)
                (loss / self.accumulation).backward()
            reported = reported.detach().float()
            total = reported if total is None else total + reported
        if self.after_backward is not None:
            self.after_backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_norm, foreach=True)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm is a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        return StepOutput(loss=total / self.accumulation, grad_norm=grad_norm)

    def _eager_on_side_stream(self) -> StepOutput:
        # Warm-up runs on a side stream, as capture will: per-stream library state (cuBLAS workspaces) is
        # then set up for it, and Triton's autotuning (which syncs) happens here, not during capture.
        stream = self._side_stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.optimizer.zero_grad(set_to_none=True)
            out = self._work(self.static_inputs, self.static_targets)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out

    def _capture(self) -> None:
        # Gradients must be allocated inside the graph (its memory pool), so that every replay's backward
        # writes the same tensors that the captured clipping and optimizer step read.
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self._side_stream):
            self.static_output = self._work(self.static_inputs, self.static_targets)
        torch.cuda.synchronize(self.device)
        self.capture_s = time.perf_counter() - started


def wants_graph_step(train_config, problem: str | None, device: torch.device) -> bool:
    """Whether a run's steps are captured (``train.cuda_graph``). ``on`` where it cannot work, and
    ``train.compile`` without a captured step, are one-line errors."""
    captured = _wants_capture(train_config.cuda_graph, problem, device)
    if train_config.compile and not captured:
        why = problem or f"train.cuda_graph={train_config.cuda_graph} on {device}"
        raise UserError(f"train.compile=true compiles the captured step, which this run does not use ({why}); "
                        f"use train.cuda_graph=auto on one CUDA device (on: also on CPU), or train.compile=false")
    return captured


def _wants_capture(mode: str, problem: str | None, device: torch.device) -> bool:
    if mode == "off":
        return False
    if problem is not None:
        if mode == "auto":
            return False
        raise UserError(f"train.cuda_graph=on {problem}; use train.cuda_graph=auto (it falls back to the "
                        f"eager step) or train.cuda_graph=off")
    if device.type != "cuda":
        if mode == "auto":
            return False
        warnings.warn(f"train.cuda_graph=on on {device}: there is no CUDA graph here, the same step "
                      f"runs eagerly (for tests; use a CUDA device for the speedup)", stacklevel=6)
    return True
