"""The offline default corpus: multi-query associative recall (MQAR) written as plain text.

Each line is one record: key-value pairs, a bar, then the same keys asked again in a shuffled order,
each followed by its value::

    q4c7x1|x1q4c7
    m0b9|b9m0

Keys are distinct lowercase letters, values are digits. The pairs before the bar are random (nothing to
learn but the format); the queried keys are a permutation of those already seen; and each answer digit
after the bar can only be predicted by recalling the pair from earlier in the line — the standard probe of
what a recurrent mixer can hold in its state. ``recall_accuracy`` measures exactly that: how often the
model's top prediction at an answer position is the right digit (chance: 10%).

The corpus is generated from a seed, needs no network and no file, and is deterministic.
"""
from __future__ import annotations

import numpy as np
import torch

KEYS = "abcdefghijklmnopqrstuvwxyz"
VALUES = "0123456789"
BAR = "|"
END = "\n"


def recall_text(n_chars: int, seed: int, min_pairs: int = 2, max_pairs: int = 8) -> str:
    """About ``n_chars`` characters of whole MQAR records, deterministic from ``seed``."""
    if not 1 <= min_pairs <= max_pairs <= len(KEYS):
        raise ValueError(f"recall pairs must satisfy 1 <= min_pairs <= max_pairs <= {len(KEYS)}, "
                         f"got {min_pairs}..{max_pairs}")
    rng = np.random.default_rng(seed)
    lines, total = [], 0
    while total < n_chars:
        for line in _records(rng, n_chars // (2 * (min_pairs + max_pairs) + 2) + 16, min_pairs, max_pairs):
            lines.append(line)
            total += len(line)
            if total >= n_chars:
                break
    return "".join(lines)


def _records(rng, n_records: int, min_pairs: int, max_pairs: int):
    """``n_records`` MQAR lines, drawn with whole-array calls (a Python loop of rng calls is ~10x slower)."""
    sizes = rng.integers(min_pairs, max_pairs + 1, size=n_records)
    keys = np.argsort(rng.random((n_records, len(KEYS))), axis=1)[:, :max_pairs]  # distinct per record
    values = rng.integers(0, len(VALUES), size=(n_records, max_pairs))
    # A random order of each record's first `size` pairs: sort random keys, padding slots pushed last.
    order_keys = rng.random((n_records, max_pairs)) + (np.arange(max_pairs)[None, :] >= sizes[:, None])
    orders = np.argsort(order_keys, axis=1)
    pair_text = np.char.add(np.array(list(KEYS))[keys], np.array(list(VALUES))[values])
    for pairs, order, size in zip(pair_text.tolist(), orders.tolist(), sizes.tolist()):
        yield "".join(pairs[:size]) + BAR + "".join(pairs[i] for i in order[:size]) + END


def answer_mask(text: str) -> np.ndarray:
    """True at every answer digit: a value character that comes after the bar of its line."""
    mask = np.zeros(len(text), dtype=bool)
    after_bar = False
    for i, ch in enumerate(text):
        if ch == END:
            after_bar = False
        elif ch == BAR:
            after_bar = True
        elif after_bar and ch in VALUES:
            mask[i] = True
    return mask


class RecallTask:
    """Recall accuracy on fixed validation windows that start at record boundaries.

    Built once from the validation text; ``evaluate(model)`` is cheap (``n_windows`` sequences of
    ``seq_len`` tokens, one forward pass) so the trainer can call it at every eval.
    """

    name = "recall"

    def __init__(self, val_text: str, tokenizer, seq_len: int, n_windows: int = 64):
        if len(tokenizer.encode(END)) != 1:
            raise ValueError("the recall task needs a character-level tokenizer (data.tokenizer: char)")
        starts = [0] + [i + 1 for i, ch in enumerate(val_text) if ch == END and i + 1 + seq_len + 1 <= len(val_text)]
        starts = [s for s in starts if s + seq_len + 1 <= len(val_text)]
        if not starts:
            raise ValueError(f"the recall validation text is shorter than one window of {seq_len + 1} characters")
        # Evenly spaced record starts: the same windows at every eval, so accuracies are comparable.
        pick = np.linspace(0, len(starts) - 1, num=min(n_windows, len(starts))).round().astype(int)
        ids, masks = [], []
        mask_all = answer_mask(val_text)
        for s in (starts[i] for i in pick):
            window = val_text[s:s + seq_len + 1]
            ids.append(tokenizer.encode(window))
            masks.append(mask_all[s + 1:s + seq_len + 1])  # targets are the window shifted by one
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.mask = torch.tensor(np.stack(masks))

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 32) -> dict[str, float]:
        correct = total = 0
        for i in range(0, len(self.ids), batch_size):
            ids = self.ids[i:i + batch_size].to(device)
            mask = self.mask[i:i + batch_size].to(device)
            logits = model(ids[:, :-1]).logits
            hit = (logits.argmax(-1) == ids[:, 1:]) & mask
            correct += int(hit.sum())
            total += int(mask.sum())
        return {"recall_acc": correct / max(total, 1)}
