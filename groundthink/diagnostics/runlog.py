"""A run's ``metrics.jsonl``, read for the training curves, the balance-over-training plot and G3 (the
run's own training).

One JSON object per line, each with a ``step`` and a ``kind``: ``train`` lines carry the train loss and
the grad norm, ``eval`` lines ``val_loss`` and the balance metrics (``grad_ratio``, ``gate_rwkv``, ...),
a ``summary`` line closes the run. A torn last line (a run killed mid-write) is skipped; a value the
trainer could not write as a number (NaN is logged as null) is skipped too.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# The spellings a train line may use for its loss and grad norm.
TRAIN_LOSS_KEYS = ("train_loss", "loss")
GRAD_NORM_KEYS = ("grad_norm",)


@dataclass
class RunLog:
    records: list[dict]

    @classmethod
    def read(cls, path) -> RunLog:
        path = Path(path)
        if not path.is_file():
            return cls([])
        records = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                records.append(record)
        return cls(records)

    def series(self, *keys: str, kind: str | None = None) -> tuple[list[float], list[float]]:
        """(steps, values) of the first of ``keys`` that each record (of ``kind``, if given) has as a number."""
        steps, values = [], []
        for record in self.records:
            if kind is not None and record.get("kind", kind) != kind:
                continue
            for key in keys:
                value = record.get(key)
                if _is_number(value):
                    steps.append(float(record["step"]))
                    values.append(float(value))
                    break
        return steps, values

    def train_losses(self) -> tuple[list[float], list[float]]:
        return self.series(*TRAIN_LOSS_KEYS, kind="train")

    def grad_norms(self) -> tuple[list[float], list[float]]:
        return self.series(*GRAD_NORM_KEYS, kind="train")

    def eval_series(self, key: str) -> tuple[list[float], list[float]]:
        return self.series(key, kind="eval")

    def ratio_series(self, top: str, bottom: str, kind: str = "eval") -> tuple[list[float], list[float]]:
        """(steps, top / bottom) over the records that have both as numbers (bottom non-zero)."""
        steps, values = [], []
        for record in self.records:
            a, b = record.get(top), record.get(bottom)
            if record.get("kind", kind) == kind and _is_number(a) and _is_number(b) and b != 0:
                steps.append(float(record["step"]))
                values.append(float(a) / float(b))
        return steps, values

    def numeric_keys(self, kind: str) -> list[str]:
        """The scalar numbers the records of ``kind`` carry, in first-seen order (lists, e.g. per layer, not)."""
        keys: dict[str, None] = {}
        for record in self.records:
            if record.get("kind") == kind:
                keys.update((k, None) for k, v in record.items() if k != "step" and _is_number(v))
        return list(keys)

    def has(self, key: str) -> bool:
        return bool(self.eval_series(key)[0])

    def last(self, key: str) -> float | None:
        values = [v for v in self.eval_series(key)[1] if not math.isnan(v)]
        return values[-1] if values else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
