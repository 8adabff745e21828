"""One optimizer step as a reusable object: captured once as a single CUDA graph on a GPU, eager on a CPU.

The small models of this project spend most of a GPU step launching kernels (the char model runs
~2,000 tiny kernels per step), not computing. Capturing forward + backward + clipping + AdamW into one CUDA
graph replays all of them with one launch and no Python in between. What that needs, and what this class
provides:

- static shapes and buffers: the batch is copied into fixed input tensors before each replay;
- no host syncs: the loss and the gradient norm stay on the device (read them at log time);
- an optimizer whose step can be captured: AdamW ``fused=True, capturable=True`` with a *tensor* learning
  rate per group, so a schedule changes it between replays (``make_adamw`` and ``set_lr``).

Usage (the trainer's loop)::

    optimizer = make_adamw(param_groups, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, device=device)
    step = TrainStep(model, optimizer, batch_size=32, seq_len=64, accumulation=2, grad_clip=1.0)
    for it, (inputs, targets) in enumerate(batches):   # [accumulation, B, T] (or [B, T] when accumulation=1)
        set_lr(optimizer, schedule(it))                 # per-group multipliers are kept (see set_lr)
        out = step(inputs, targets)                     # out.loss / out.grad_norm: 0-dim device tensors
        if it % 10 == 0:
            print(out.loss.item())                      # the only host sync, at log time

The first ``warmup_steps`` calls run eagerly (real steps; they also run Triton's autotuning and build the
optimizer state); the next call captures the graph and replays it, every later call only replays. Each call
is exactly one optimizer step on the batch it was given. The tensors in ``StepOutput`` are the graph's
static outputs: the next call overwrites them (``.clone()`` or accumulate them to keep them). After capture
``p.grad`` holds the last step's clipped gradients (graph memory): don't set grads to None between calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepOutput:
    loss: torch.Tensor       # mean training loss over the micro-batches (float32, 0-dim, on the device)
    grad_norm: torch.Tensor  # total gradient norm before clipping (0-dim, on the device)


def make_adamw(params, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.1, device=None,
               eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW that ``TrainStep`` can capture on CUDA (fused, capturable, tensor learning rates per group).

    ``params``: parameters or param groups (a group's own ``lr`` is kept, as a tensor). On CPU: the plain
    (foreach) AdamW with float learning rates.
    """
    params = list(params)
    device = torch.device(device) if device is not None else _first_device(params)
    if device.type != "cuda":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    optimizer = torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=device), betas=betas,
                                  weight_decay=weight_decay, eps=eps, fused=True, capturable=True)
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * group.get("lr_mult", 1.0)`` without a host sync.

    Tensor learning rates are filled in place (a captured step reads them from the same memory).
    """
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
            return "the optimizer is not capturable: build it with make_adamw(...) (fused=True, capturable=True)"
        if not isinstance(group["lr"], torch.Tensor):
            return ("a param group's lr is a float, which a CUDA graph would freeze: build the optimizer with "
                    "make_adamw(...) so learning rates are tensors")
    return None


def lm_loss(model, inputs, targets):
    """The default ``loss_fn``: the language-model loss of one micro-batch."""
    return model(inputs, targets=targets).loss


class TrainStep:
    """Forward + backward (with gradient accumulation) + clipping + optimizer step.

    ``cuda_graph``: "auto" (capture on CUDA, eager elsewhere), True or False. ``compile``: run ``loss_fn``
    under ``torch.compile`` (FLA's kernels stay opaque; Inductor fuses the PyTorch ops around them).
    ``amp_dtype``: "auto" (bfloat16 autocast on CUDA, none on CPU), a dtype, or None.
    ``loss_fn(model, inputs, targets)`` returns the loss to backpropagate, or ``(loss, lm_loss)`` when
    extra terms are added (``StepOutput.loss`` is then the mean ``lm_loss``). ``after_backward()`` runs
    once the gradients are complete, before clipping. In a captured step both are captured too: they must
    only launch device work (no ``.item()``, no Python decisions on tensor values).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, seq_len: int,
                 *, accumulation: int = 1, grad_clip: float | None = 1.0, amp_dtype="auto",
                 cuda_graph="auto", compile: bool = False, warmup_steps: int = 3,
                 loss_fn=lm_loss, after_backward=None):
        if accumulation < 1 or batch_size < 1 or seq_len < 1:
            raise ValueError(f"accumulation, batch_size and seq_len must be >= 1, got "
                             f"{accumulation}, {batch_size}, {seq_len}")
        self.model, self.optimizer = model, optimizer
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.use_graph = on_cuda if cuda_graph == "auto" else bool(cuda_graph)
        if self.use_graph:
            if not on_cuda:
                raise ValueError("cuda_graph=True needs the model on a CUDA device; use cuda_graph='auto'")
            problem = graph_ready(optimizer)
            if problem:
                raise ValueError(problem)
        self.amp_dtype = (torch.bfloat16 if on_cuda else None) if amp_dtype == "auto" else amp_dtype
        self.accumulation, self.grad_clip = accumulation, grad_clip
        self.warmup_steps = max(int(warmup_steps), 1) if self.use_graph else 0
        self.loss_fn = torch.compile(loss_fn, dynamic=False) if compile else loss_fn
        self.after_backward = after_backward
        self.params = [p for p in model.parameters() if p.requires_grad]
        shape = (accumulation, batch_size, seq_len)
        self.static_inputs = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.static_targets = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_output: StepOutput | None = None
        self.calls = 0
        self._side_stream = torch.cuda.Stream(self.device) if self.use_graph else None

    # ----------------------------------------------------------------------------------------------
    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        inputs, targets = self._shaped(inputs), self._shaped(targets)
        self.calls += 1
        if not self.use_graph:
            self.optimizer.zero_grad(set_to_none=True)
            return self._work(inputs, targets)
        self.static_inputs.copy_(inputs, non_blocking=True)
        self.static_targets.copy_(targets, non_blocking=True)
        if self.graph is None and self.calls <= self.warmup_steps:
            return self._eager_on_side_stream()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.static_output

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
            # cache_enabled=False: autocast's weight-cast cache must not outlive a captured region.
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None, cache_enabled=False):
                loss = self.loss_fn(self.model, inputs[micro], targets[micro])
            loss, reported = loss if isinstance(loss, tuple) else (loss, loss)
            (loss / self.accumulation).backward()
            total = reported.detach().float() if total is None else total + reported.detach().float()
        if self.after_backward is not None:
            self.after_backward()
        if self.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=self.device.type == "cuda")
        else:
            grad_norm = _total_norm(self.params)
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
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self._side_stream):
            self.static_output = self._work(self.static_inputs, self.static_targets)


def _total_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _first_device(params: list) -> torch.device:
    for item in params:
        tensors = item["params"] if isinstance(item, dict) else [item]
        for tensor in tensors:
            return tensor.device
    return torch.device("cpu")
