"""The trainer's extension protocol: hooks (balance interventions, test instrumentation, ...) and its errors.

A hook is any object with some of ``TrainerHook``'s methods; subclassing ``TrainerHook`` gives the others as
no-ops. Each method receives the ``TrainingState`` of the run: what a hook may read (the model, the step, the
rank, the device) without depending on the trainer's class.
"""
from __future__ import annotations

from typing import Protocol

import torch

from groundthink.errors import UserError


class TrainingDiverged(UserError):
    """The loss (or gradient norm) became NaN or infinite."""


class TrainingState(Protocol):
    model: torch.nn.Module      # the model being trained (never a DDP wrapper)
    step: int                   # optimizer steps done (in on_step_start: the 0-based index of this step)
    rank: int
    device: torch.device
    stop_requested: bool        # a signal asked the run to stop


class TrainerHook(Protocol):
    """Override any of these; the trainer calls them in order for every hook it was given.

    ``graph_safe``: with ``train.cuda_graph`` the step is captured once and replayed, and ``forward_context``,
    ``extra_loss`` and ``on_after_backward`` are captured with it. A hook may set ``graph_safe = True`` when
    those only launch device work whose shape never changes (no ``.item()``, no decision on a tensor's
    value) and ``on_step_start`` changes nothing the step reads (no ``requires_grad`` switching).
    ``graph_unsafe_because`` names why not, for the error message.
    """

    graph_safe: bool = False
    graph_unsafe_because: str | None = None

    def on_fit_start(self, state: TrainingState) -> None: ...

    def on_step_start(self, state: TrainingState) -> None:
        """Before the step's micro-batches (``state.step`` is the 0-based index of this step)."""

    def forward_context(self, state: TrainingState):
        """A context manager wrapped around each micro-batch forward pass, or None."""
        return None

    def extra_loss(self, state: TrainingState, output) -> torch.Tensor | None:
        """A term added to the language-model loss of a micro-batch (``output`` is its ``LMOutput``)."""
        return None

    def on_after_backward(self, state: TrainingState) -> None:
        """Gradients are complete (all micro-batches), not yet clipped."""

    def on_step_end(self, state: TrainingState) -> None: ...

    def on_eval(self, state: TrainingState, record: dict) -> None:
        """``record`` is the eval line about to be logged; hooks may add metrics to it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
