"""Validation loss over fixed windows, shared by the trainer's periodic eval and ``groundthink eval``."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch


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


def consecutive_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows covering ``tokens`` (evenly thinned to ``max_windows`` when given)."""
    count = (len(tokens) - 1) // seq_len
    starts = np.arange(count) * seq_len
    if max_windows is not None and count > max_windows:
        starts = starts[np.linspace(0, count - 1, num=max_windows).round().astype(int)]
    return torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
