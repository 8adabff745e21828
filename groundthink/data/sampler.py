"""Batches: random windows from a token array, drawn by a seeded generator whose state can be saved.

In a distributed run every rank draws the same global batch of ``world_size * batch_size`` windows (one
generator, seeded without the rank) and keeps rows ``rank::world_size``: ranks see different windows, and N
ranks with batch B see exactly the windows of one process with batch N*B. ``state_dict`` /
``load_state_dict`` make a resumed run draw exactly the windows it would have (with any number of ranks, as
long as the global batch is the same; see training/launch.py).
"""
from __future__ import annotations

import numpy as np
import torch

from groundthink.errors import UserError


def check_window(tokens: np.ndarray, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 1:
        raise UserError(f"the {what} data has {len(tokens)} tokens, fewer than one window of seq_len + 1 = "
                        f"{seq_len + 1}; use more text or a smaller --seq-len")


class RandomWindowSampler:
    """``next_batch() -> (inputs, targets)``, each ``[batch_size, seq_len]`` int64 on the CPU."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        check_window(tokens, seq_len, "training")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.generator = torch.Generator().manual_seed(seed * 1_000_003)  # the same on every rank
        self.offsets = np.arange(seq_len + 1)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.seq_len  # start positions 0 .. len - seq_len - 1
        starts = torch.randint(0, high, (self.batch_size * self.world_size,), generator=self.generator).numpy()
        starts = starts[self.rank::self.world_size]  # this rank's rows of the global batch
        windows = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def eval_windows(tokens: np.ndarray, seq_len: int, n_windows: int) -> torch.Tensor:
    """Evenly spaced windows over the validation tokens: the same set at every evaluation."""
    check_window(tokens, seq_len, "validation")
    high = len(tokens) - seq_len - 1
    starts = np.linspace(0, high, num=n_windows).round().astype(np.int64) if n_windows > 1 else np.zeros(1, np.int64)
    starts = np.unique(starts)
    return torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
