"""Validation loss over fixed windows, shared by the trainer's periodic eval and ``groundthink eval``."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from groundthink.models.metrics import record_balance


@torch.no_grad()
def evaluate_loss(model, windows: torch.Tensor, batch_size: int, device, autocast=contextlib.nullcontext) -> float:
    """Mean next-token loss over ``windows`` (``[N, T + 1]`` token ids), one device sync at the end."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size].to(device, non_blocking=True)
        with autocast():
            loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
        total += loss.float() * len(batch)
    model.train(was_training)
    return float(total) / len(windows)


@torch.no_grad()
def evaluate_model(model, val_windows: torch.Tensor, train_windows: torch.Tensor, batch_size: int, device,
                   autocast=contextlib.nullcontext, task=None, grad_ratio: float | None = None) -> dict:
    """A training run's evaluation: val loss and perplexity, the loss on as many fixed training windows (the
    train/val gap without one batch's noise), the cheap balance metrics, and the data source's own metric."""
    val_loss = evaluate_loss(model, val_windows, batch_size, device, autocast)
    metrics = {"val_loss": val_loss, "val_ppl": perplexity(val_loss),
               "train_eval_loss": evaluate_loss(model, train_windows, batch_size, device, autocast)}
    if grad_ratio is not None:
        metrics["grad_ratio"] = grad_ratio
    was_training = model.training
    model.eval()
    metrics.update(record_balance(model, val_windows[:batch_size, :-1].to(device)))
    if task is not None:
        metrics.update(task.evaluate(model, device, batch_size))
    model.train(was_training)
    return metrics


def consecutive_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows covering ``tokens`` (evenly thinned to ``max_windows`` when given)."""
    count = (len(tokens) - 1) // seq_len
    starts = np.arange(count) * seq_len
    if max_windows is not None and count > max_windows:
        starts = starts[np.linspace(0, count - 1, num=max_windows).round().astype(int)]
    return torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
