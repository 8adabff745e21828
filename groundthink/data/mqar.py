"""Multi-query associative recall (MQAR) at the token level, laid out as in Zoology (Arora et al., 2023).

A sequence of ``seq_len`` token ids: first ``pairs`` key-value pairs (``k1 v1 k2 v2 ...``), then a query
region of random tokens in which every key appears once more, at an even offset; at that position the
model must predict the key's value. Keys come from the lower half of the vocabulary (id 0 excluded) and
values from the upper half, both distinct within a sequence, so nothing but recall from the context can
give the answer. Query offsets are drawn with Zoology's power law (``power_a``): most queries come soon
after the pairs, a few far away.

``targets`` hold the value at each query position and ``IGNORE`` everywhere else: the loss and the accuracy
count the answer positions only (``answer_loss``, ``answer_accuracy``, computed from the model's logits).
The generator is a ``torch.Generator``, so a batch is deterministic from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100
ROWS_PER_DRAW = 1024  # distinct keys are drawn as the top-k of random scores: [rows, vocab / 2] at a time


@dataclass(frozen=True)
class MQARSetting:
    seq_len: int
    pairs: int
    vocab_size: int = 8192
    power_a: float = 0.01

    def __post_init__(self):
        if self.pairs < 1 or self.seq_len < 4 * self.pairs:
            raise ValueError(f"MQAR needs seq_len >= 4 x pairs (pairs, then a query region with room for every "
                             f"key at an even offset), got seq_len {self.seq_len}, {self.pairs} pairs")
        if self.vocab_size // 2 - 1 < self.pairs:
            raise ValueError(f"MQAR vocab_size {self.vocab_size} is too small for {self.pairs} distinct keys; "
                             f"use a vocab_size of at least {2 * self.pairs + 2}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"MQAR power_a must be in (0, 1], got {self.power_a}")

    @property
    def label(self) -> str:
        return f"T{self.seq_len}-kv{self.pairs}"


def distinct_draws(count: int, low: int, high: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, k]`` ids from ``[low, high)``, distinct within each row, in random order."""
    rows = []
    for start in range(0, count, ROWS_PER_DRAW):
        scores = torch.rand(min(ROWS_PER_DRAW, count - start), high - low, generator=generator)
        rows.append(scores.topk(k, dim=1).indices + low)
    return torch.cat(rows)


def mqar_batch(setting: MQARSetting, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``[count, seq_len]`` int64 on the CPU."""
    half, k, length = setting.vocab_size // 2, setting.pairs, setting.seq_len
    keys = distinct_draws(count, 1, half, k, generator)
    values = distinct_draws(count, half, setting.vocab_size, k, generator)
    inputs = torch.randint(0, setting.vocab_size, (count, length), generator=generator)
    inputs[:, 0:2 * k:2], inputs[:, 1:2 * k:2] = keys, values
    # The query slots: even offsets into the region after the pairs, nearer ones likelier (Zoology's law).
    slots = (length - 2 * k) // 2
    weights = setting.power_a * torch.arange(1, slots + 1, dtype=torch.float64) ** (setting.power_a - 1)
    gaps = torch.multinomial(weights.expand(count, slots), k, replacement=False, generator=generator)
    positions = 2 * k + 2 * gaps
    inputs.scatter_(1, positions, keys)
    targets = torch.full_like(inputs, IGNORE).scatter_(1, positions, values)
    return inputs, targets


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions only (``logits: [B, T, V]`` from ``model(ids).logits``)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def answer_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(number of answer positions whose top prediction is the value, number of answer positions)."""
    asked = targets != IGNORE
    return (logits.argmax(-1)[asked] == targets[asked]).sum(), int(asked.sum())
