"""The model under diagnosis, its data, and the measurements the suites share (each computed once).

A ``Probe`` holds the model, the validation tokens and the options; its cached properties run the forward
passes that several suites read (the evaluation batch with and without each branch, the long-context pass,
the short training loop), so a full ``diagnose`` costs a handful of passes, not one per suite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from groundthink.diagnostics import thresholds as T
from groundthink.diagnostics.metrics import (BRANCHES, branch_state, has_both_branches, per_sequence_norm,
                                             recorded_per_layer)
from groundthink.diagnostics.runlog import RunLog
from groundthink.diagnostics.training_loop import TrainingTrace, train_copy


@dataclass
class DiagnoseOptions:
    seq_len: int = 64              # the training length T (the run's own, when diagnose knows it)
    batch_size: int = 16           # sequences in the evaluation batch
    long_factor: int = T.LONG_CONTEXT_FACTOR   # the long-context pass reaches long_factor x seq_len
    long_sequences: int = 4
    variety_samples: int = 10      # D2: different inputs whose final states are compared (seed: 10)
    train_steps: int = 30          # the short AdamW loop (G3 without a run log, gradient coupling, speed)
    train_batch_size: int = 8
    overfit_steps: int = T.OVERFIT_MAX_STEPS   # 0 skips the overfit check
    overfit_samples: int = T.OVERFIT_SAMPLES
    overfit_seq_len: int = T.OVERFIT_SEQ_LEN
    overfit_lr: float = T.OVERFIT_LR
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("overfit_steps", "train_steps", "seed") else 1
            if f.name == "overfit_lr":
                if not value > 0:
                    raise ValueError(f"overfit_lr must be positive, got {value}")
            elif not isinstance(value, int) or value < minimum:
                raise ValueError(f"diagnose option {f.name} must be an integer >= {minimum}, got {value!r}")
        if self.variety_samples < 2:
            raise ValueError("diagnose option variety_samples must be at least 2 (a variance needs two inputs)")


class Probe:
    def __init__(self, model, val_tokens: torch.Tensor | None = None, tokenizer=None,
                 run_log: RunLog | None = None, options: DiagnoseOptions | None = None, reload=None):
        self.model = model
        self.reload = reload  # () -> the same weights loaded afresh (a run's checkpoint), for the reload check
        self.options = options or DiagnoseOptions()
        self.tokenizer = tokenizer
        self.run_log = run_log or RunLog([])
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.n_layers = len(model.layers)
        self.branches = [b for b in BRANCHES if any(b in layer.branches for layer in model.layers)]
        self.hybrid = has_both_branches(model)
        self.recurrent = bool(self.branches)
        self.seq_len = self.options.seq_len
        self.random_data = val_tokens is None
        self.tokens = self._check_tokens(val_tokens)
        self.long_len = self._long_length()

    # ---- data -------------------------------------------------------------------------------------
    def _check_tokens(self, tokens) -> torch.Tensor:
        need = self.seq_len * self.options.long_factor + 1
        if tokens is None:  # the seed design's own probes used uniform random tokens; loss numbers then mean little
            generator = torch.Generator().manual_seed(self.options.seed)
            return torch.randint(0, self.vocab_size, (max(need, 4096),), generator=generator)
        if isinstance(tokens, np.ndarray):  # e.g. the trainer's memory-mapped uint16 / int32 token arrays
            if not np.issubdtype(tokens.dtype, np.integer):
                raise ValueError(f"validation tokens must be integer ids, got dtype {tokens.dtype}")
            tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64).reshape(-1))
        tokens = torch.as_tensor(tokens).reshape(-1)
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"validation tokens must be integer ids, got dtype {tokens.dtype}")
        tokens = tokens.long().cpu()
        if tokens.numel() < self.seq_len + 1:
            raise ValueError(f"validation data has {tokens.numel()} tokens; diagnose needs at least seq_len + 1 = "
                             f"{self.seq_len + 1}: pass more data or a smaller seq_len")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.vocab_size:
            raise ValueError(f"validation token ids span [{low}, {high}] but the model's vocabulary has "
                             f"{self.vocab_size} entries; use data tokenized with the run's own tokenizer")
        return tokens

    def _long_length(self) -> int:
        """Up to long_factor x seq_len, in whole training windows, within the data and the positions."""
        length = min(self.seq_len * self.options.long_factor, self.tokens.numel() - 1)
        if "A" in self.model.config.layer_kinds():
            length = min(length, self.model.config.max_position_embeddings)
        return max(self.seq_len, length // self.seq_len * self.seq_len)

    def windows(self, count: int, length: int) -> torch.Tensor:
        """``count`` windows of ``length`` tokens, evenly spaced over the data (deterministic)."""
        last = self.tokens.numel() - length
        starts = torch.linspace(0, max(last, 0), count).round().long()
        return torch.stack([self.tokens[s:s + length] for s in starts.tolist()]).to(self.device)

    def random_windows(self, count: int, length: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, self.tokens.numel() - length + 1, (count,), generator=generator)
        return torch.stack([self.tokens[s:s + length] for s in starts.tolist()]).to(self.device)

    @cached_property
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation batch: ``batch_size`` windows of seq_len inputs and their next-token targets."""
        window = self.windows(self.options.batch_size, self.seq_len + 1)
        return window[:, :-1], window[:, 1:]

    # ---- shared measurements ----------------------------------------------------------------------
    @cached_property
    def output(self):
        """Forward pass of the evaluation batch with states (no grad)."""
        with torch.no_grad():
            return self.model(self.batch[0], return_states=True)

    @cached_property
    def token_loss(self) -> torch.Tensor:
        return F.cross_entropy(self.output.logits.float().transpose(1, 2), self.batch[1], reduction="none")

    @cached_property
    def ablation(self) -> dict[str, dict]:
        """Per zeroed branch: per-token loss and the relative change of the logits (hybrids only)."""
        result = {}
        base = self.output.logits.float()
        for branch in self.branches if self.hybrid else []:
            with torch.no_grad(), self.model.ablated(branch):
                logits = self.model(self.batch[0]).logits.float()
            result[branch] = {
                "token_loss": F.cross_entropy(logits.transpose(1, 2), self.batch[1], reduction="none"),
                "output_change": float(torch.linalg.vector_norm(logits - base) /
                                       torch.linalg.vector_norm(base).clamp_min(1e-30)),
            }
        return result

    @cached_property
    def ablation_increases(self) -> dict[str, float]:
        """Mean loss increase over the evaluation batch when each branch is zeroed in every layer."""
        base = float(self.token_loss.mean())
        return {branch: float(data["token_loss"].mean()) - base for branch, data in self.ablation.items()}

    @cached_property
    def gradient_norms(self) -> list[dict[str, float]]:
        """Per layer, per branch: L2 norm of the LM-loss gradient of that branch's parameters (the model's
        own ``.grad`` fields are not touched)."""
        groups = [(index, branch, [p for p in getattr(layer, branch).parameters() if p.requires_grad])
                  for index, layer in enumerate(self.model.layers) for branch in layer.branches]
        params = [p for _, _, group in groups for p in group]
        loss = self.model(self.batch[0], targets=self.batch[1]).loss
        grads = iter(torch.autograd.grad(loss, params, allow_unused=True))
        result: list[dict[str, float]] = [{} for _ in self.model.layers]
        for index, branch, group in groups:
            norms = [torch.linalg.vector_norm(g.float()) for g in (next(grads) for _ in group) if g is not None]
            result[index][branch] = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        return result

    @cached_property
    def grad_ratio(self) -> float:
        """docs/design.md#balance-metrics ``grad_ratio`` on the evaluation batch: ||grad rwkv6.*|| / ||grad mamba2.*||."""
        totals = {b: math.sqrt(sum(layer.get(b, 0.0) ** 2 for layer in self.gradient_norms)) for b in BRANCHES}
        return totals["rwkv6"] / totals["mamba2"] if totals["mamba2"] > 0 else float("inf")

    @cached_property
    def layer_ablation(self) -> list[dict[str, float]]:
        """Per layer: mean loss increase when one branch is zeroed in that layer only."""
        base = float(self.token_loss.mean())
        result = []
        for index, layer in enumerate(self.model.layers):
            increases = {}
            for branch in self.branches:
                if branch in layer.branches:
                    with torch.no_grad(), self.model.ablated(branch, [index]):
                        increases[branch] = float(self.model(self.batch[0], targets=self.batch[1]).loss) - base
            result.append(increases)
        return result

    @cached_property
    def recorded(self) -> dict[str, list[float | None]]:
        return recorded_per_layer(self.model, self.batch[0])

    @cached_property
    def long_pass(self) -> dict:
        """The long-context pass: ``long_sequences`` windows of ``long_len`` tokens, fed one training window
        at a time with the state carried over. Per-token losses ``[n, L]`` and, after every window, the
        mean state norm per branch and layer (``norms[branch][window][layer]``, None where absent)."""
        window = self.windows(self.options.long_sequences, self.long_len + 1)
        inputs, targets = window[:, :-1], window[:, 1:]
        losses, norms = [], {b: [] for b in self.branches}
        states = None
        with torch.no_grad():
            for start in range(0, self.long_len, self.seq_len):
                piece = slice(start, start + self.seq_len)
                out = self.model(inputs[:, piece], states=states, return_states=True, position_offset=start)
                states = out.states
                losses.append(F.cross_entropy(out.logits.float().transpose(1, 2), targets[:, piece],
                                              reduction="none"))
                for branch in self.branches:
                    norms[branch].append([None if branch_state(s, branch) is None
                                          else float(per_sequence_norm(branch_state(s, branch)).mean())
                                          for s in states])
        return {"token_loss": torch.cat(losses, dim=1), "norms": norms}

    def final_states(self, inputs: torch.Tensor) -> list[dict]:
        with torch.no_grad():
            return self.model(inputs, return_states=True).states

    @cached_property
    def variety(self) -> dict[str, list[float | None]]:
        """D2: per branch and layer, the variance of the final state across ``variety_samples`` different
        inputs, relative to the state's mean square (0 for a state that ignores its input)."""
        states = self.final_states(self.windows(self.options.variety_samples, self.seq_len))
        result = {}
        for branch in self.branches:
            per_layer = []
            for layer_state in states:
                tensor = branch_state(layer_state, branch)
                if tensor is None:
                    per_layer.append(None)
                    continue
                flat = tensor.float().flatten(1)
                mean_square = float(flat.pow(2).mean())
                variance = float(flat.var(dim=0).mean())
                per_layer.append(relative(variance, mean_square))
            result[branch] = per_layer
        return result

    @cached_property
    def training(self) -> TrainingTrace:
        """The short AdamW loop on a copy of the model, on random windows of the data."""
        size, length = self.options.train_batch_size, self.seq_len + 1

        def next_batch(step):
            window = self.random_windows(size, length, seed=self.options.seed + 1000 + step)
            return window[:, :-1], window[:, 1:]

        return train_copy(self.model, next_batch, self.options.train_steps, seed=self.options.seed)


def relative(value: float, scale: float) -> float:
    """``value / scale``, with 0/0 = 0 (a state that is identically zero does not vary) and NaN kept."""
    if math.isnan(value) or math.isnan(scale):
        return float("nan")
    return value / scale if scale > 0 else 0.0
