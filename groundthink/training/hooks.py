"""The trainer's extension protocol: hooks (balance interventions, fault injection, ...) and its errors."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from groundthink.errors import UserError

if TYPE_CHECKING:
    from groundthink.training.trainer import Trainer


class TrainingDiverged(UserError):
    """The loss (or gradient norm) became NaN or infinite."""


class TrainerHook:
    """Override any of these; the trainer calls them in order for every hook it was given.

    ``graph_safe``: with ``train.cuda_graph`` the step is captured once and replayed, and ``forward_context``,
    ``extra_loss`` and ``on_after_backward`` are captured with it. A hook may set ``graph_safe = True`` when
    those only launch device work whose shape never changes (no ``.item()``, no decision on a tensor's
    value) and ``on_step_start`` changes nothing the step reads (no ``requires_grad`` switching).
    ``graph_unsafe_because`` names why not, for the error message.
    """

    graph_safe = False
    graph_unsafe_because: str | None = None

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_step_start(self, trainer: Trainer) -> None:
        """Before the step's micro-batches (``trainer.step`` is the 0-based index of this step)."""

    def forward_context(self, trainer: Trainer):
        """A context manager wrapped around each micro-batch forward pass, or None."""
        return None

    def extra_loss(self, trainer: Trainer, output) -> torch.Tensor | None:
        """A term added to the language-model loss of a micro-batch (``output`` is its ``LMOutput``)."""
        return None

    def on_after_backward(self, trainer: Trainer) -> None:
        """Gradients are complete (all micro-batches), not yet clipped."""

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_eval(self, trainer: Trainer, record: dict) -> None:
        """``record`` is the eval line about to be logged; hooks may add metrics to it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
