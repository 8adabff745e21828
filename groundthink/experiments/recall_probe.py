"""Which branch recalls? A per-branch MQAR probe in Zoology's style (``groundthink recall-probe``).

Every model is trained from scratch on MQAR (``data/mqar.py``) of each setting for a fixed budget, with the
loss on the answer positions only, and is then scored on a fixed test set: the share of answers whose top
prediction is the right value (chance ~1 / (vocab / 2)). Models with both branches are also scored with
each branch's output zeroed in every layer (``model.ablated``), on the same weights: what recall is left
without RWKV-6, and without Mamba-2. Attention models get ``attention_layers`` layers, all others
``layers``, as in Zoology's comparison (2-layer attention, deeper recurrent models).

All models of a setting and seed see the same training batches. With several learning rates each is
trained once per rate and the table keeps the best rate per model (as Zoology reports). ``results.json``
is rewritten after every trained model; rerunning the same command skips what it holds.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from groundthink.data.files import atomic_write_text
from groundthink.data.mqar import MQARSetting, answer_accuracy, answer_loss, mqar_batch
from groundthink.devices import resolve_device
from groundthink.errors import UserError
from groundthink.models.model import GroundThinkLM
from groundthink.models.registry import get_config
from groundthink.training.config import PRECISIONS
from groundthink.training.optim import make_adamw, parameter_groups
from groundthink.training.precision import amp_dtype, autocast_for
from groundthink.training.schedule import lr_at
from groundthink.training.step import TrainStep

RESULTS = "results.json"
ABLATIONS = ("rwkv6", "mamba2")


@dataclass
class ProbeOptions:
    settings: list[tuple[int, int]] = field(default_factory=lambda: [(64, 4), (128, 8), (256, 16)])
    models: list[str] = field(default_factory=lambda: ["GF-MH", "RWKV6", "MAMBA2", "GPT2"])
    vocab_size: int = 8192
    hidden_size: int = 128
    layers: int = 4
    attention_layers: int = 2
    model_settings: dict = field(default_factory=dict)   # other ModelConfig fields, for every model
    steps: int = 2000
    batch_size: int = 64
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    warmup_ratio: float = 0.1
    weight_decay: float = 0.1
    test_examples: int = 1000
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "layers", "attention_layers", "steps", "batch_size", "test_examples"):
            if getattr(self, name) < 1:
                raise UserError(f"recall probe: {name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"recall probe: precision {self.precision!r} is unknown; valid: {', '.join(PRECISIONS)}")
        if not self.settings or not self.models or not self.lrs or not self.seeds:
            raise UserError("recall probe: settings, models, learning rates and seeds must each name at least one")
        for seq_len, pairs in self.settings:
            try:
                MQARSetting(seq_len, pairs, self.vocab_size)
            except ValueError as err:
                raise UserError(f"recall probe setting {seq_len}:{pairs}: {err}") from None
        for key in self.models:
            self.model_config(key)  # unknown keys and sizes that do not divide, before anything trains

    def model_config(self, key: str):
        settings = {**self.model_settings, "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                    "max_position_embeddings": max(t for t, _ in self.settings)}
        try:
            attention_only = set(get_config(key).layer_kinds()) == {"A"}
            return get_config(key, **settings, n_layers=self.attention_layers if attention_only else self.layers)
        except (KeyError, ValueError, TypeError) as err:
            raise UserError(f"recall probe, model {key}: {' '.join(str(err).split())}") from None


def entry_key(entry: dict) -> tuple:
    return entry["model"], entry["seq_len"], entry["pairs"], entry["lr"], entry["seed"]


def train_and_score(options: ProbeOptions, key: str, setting: MQARSetting, lr: float, seed: int,
                    device: torch.device) -> dict:
    """Train ``key`` on ``setting`` from scratch; its test accuracy (and per-ablation accuracies)."""
    autocast = autocast_for(device, options.precision)
    torch.manual_seed(seed)
    model = GroundThinkLM(options.model_config(key)).to(device)
    groups = parameter_groups(model, lr, options.weight_decay)
    optimizer = make_adamw(groups, lr=lr, betas=(0.9, 0.99), weight_decay=options.weight_decay,
                           capturable=device.type == "cuda")
    # The trainer's step: on CUDA captured once as a CUDA graph and replayed (these small models are bound
    # by kernel launches), on CPU the same step eagerly.
    step_fn = TrainStep(model, optimizer, options.batch_size, setting.seq_len, grad_clip=1.0,
                        amp_dtype=amp_dtype(device, options.precision),
                        loss_fn=lambda model, inputs, targets: answer_loss(model(inputs).logits, targets))
    batches = torch.Generator().manual_seed(1000 * seed + setting.seq_len)  # the same for every model
    start, losses = time.perf_counter(), []
    model.train()
    for step in range(options.steps):
        inputs, targets = (t.to(device, non_blocking=True) for t in mqar_batch(setting, options.batch_size, batches))
        losses.append(step_fn(inputs, targets, lr=lr_at(step, lr, lr / 10, options.steps, options.warmup_ratio)).loss.clone())
    tail = torch.stack(losses[-max(1, options.steps // 10):]).float().mean().item()
    entry = {"model": key, "seq_len": setting.seq_len, "pairs": setting.pairs, "lr": lr, "seed": seed,
             "params": model.num_params, "steps": options.steps, "final_train_loss": tail,
             "train_seconds": time.perf_counter() - start}
    if not math.isfinite(tail):
        entry["diverged"] = True
    test = mqar_batch(setting, options.test_examples, torch.Generator().manual_seed(10_000_019 + seed))
    entry["accuracy"] = score(model, test, options.batch_size, device, autocast)
    branches = set().union(*(layer.branches for layer in model.layers))
    for branch in ABLATIONS if set(ABLATIONS) <= branches else ():
        with model.ablated(branch):
            entry[f"accuracy_without_{branch}"] = score(model, test, options.batch_size, device, autocast)
    return entry


@torch.no_grad()
def score(model, test: tuple[torch.Tensor, torch.Tensor], batch_size: int, device, autocast) -> float:
    model.eval()
    correct, total = torch.zeros((), device=device, dtype=torch.long), 0
    for i in range(0, len(test[0]), batch_size):
        inputs, targets = (t[i:i + batch_size].to(device) for t in test)
        with autocast():
            hits, count = answer_accuracy(model(inputs).logits, targets)
        correct += hits
        total += count
    model.train()
    return int(correct) / total


def run_probe(options: ProbeOptions, out: Path, argv: list[str] | None = None, log=print) -> dict:
    """Train and score everything ``options`` names that ``out/results.json`` does not hold yet."""
    options.validate()
    out = Path(out)
    path = out / RESULTS
    wanted = json.loads(json.dumps(asdict(options)))  # as results.json holds them (tuples become lists)
    record = json.loads(path.read_text()) if path.is_file() else None
    if record is not None and record.get("options") != wanted:
        raise UserError(f"{path} holds a probe with other options; pass another --out, or remove it to rerun")
    device = resolve_device(options.device, "--device")
    record = record or {"options": wanted, "entries": []}
    record.setdefault("invocations", []).append({"argv": argv or [], "device": device_name(device),
                                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    done = {entry_key(e) for e in record["entries"]}
    out.mkdir(parents=True, exist_ok=True)
    for seq_len, pairs in options.settings:
        setting = MQARSetting(seq_len, pairs, options.vocab_size)
        for seed in options.seeds:
            for key in options.models:
                for lr in options.lrs:
                    if (key, seq_len, pairs, lr, seed) in done:
                        continue
                    entry = train_and_score(options, key, setting, lr, seed, device)
                    record["entries"].append(entry)
                    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
                    log(describe(entry))
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    atomic_write_text(out / "results.md", markdown(record))
    return record


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def describe(entry: dict) -> str:
    parts = [f"{entry['model']} T={entry['seq_len']} kv={entry['pairs']} lr={entry['lr']:g} seed {entry['seed']}: "
             f"accuracy {entry['accuracy']:.1%}"]
    parts += [f"without {b} {entry[f'accuracy_without_{b}']:.1%}" for b in ABLATIONS if f"accuracy_without_{b}" in entry]
    return ", ".join(parts) + f" (train loss {entry['final_train_loss']:.3f}, {entry['train_seconds']:.0f} s)"


def best_entries(record: dict) -> dict[tuple, dict]:
    """(model, seq_len, pairs, seed) -> the entry of the learning rate with the best full-model accuracy."""
    best: dict[tuple, dict] = {}
    for entry in record["entries"]:
        key = (entry["model"], entry["seq_len"], entry["pairs"], entry["seed"])
        if key not in best or entry["accuracy"] > best[key]["accuracy"]:
            best[key] = entry
    return best


def table_rows(record: dict) -> list[dict]:
    """One row per model (and per ablation of a two-branch model): mean accuracy over seeds per setting."""
    options, best = record["options"], best_entries(record)
    rows = []
    for key in options["models"]:
        for field_name, label in [("accuracy", key)] + [(f"accuracy_without_{b}", f"{key} without {b}")
                                                         for b in ABLATIONS]:
            cells = {}
            for seq_len, pairs in options["settings"]:
                values = [best[k][field_name] for k in best if k[:3] == (key, seq_len, pairs)
                          and field_name in best[k]]
                if values:
                    cells[f"T{seq_len}-kv{pairs}"] = (statistics.fmean(values), len(values))
            if cells:
                rows.append({"row": label, "cells": cells})
    return rows


def markdown(record: dict) -> str:
    options = record["options"]
    settings = [f"T{t}-kv{k}" for t, k in options["settings"]]
    lines = ["# MQAR recall probe", "",
             f"Vocabulary {options['vocab_size']}, hidden {options['hidden_size']}, {options['layers']} layers "
             f"({options['attention_layers']} for attention), {options['steps']} steps of {options['batch_size']}, "
             f"learning rates {', '.join(f'{lr:g}' for lr in options['lrs'])} (best kept), seeds "
             f"{', '.join(map(str, options['seeds']))}, {options['test_examples']} test sequences. Accuracy: share "
             f"of answers whose top prediction is the value (chance ~{2 / options['vocab_size']:.2g}); "
             f"*without X*: the same weights with branch X zeroed in every layer.", ""]
    lines += ["Commands: " + "; ".join(f"`{' '.join(i['argv'])}` on {i['device']}" for i in record.get("invocations", [])),
              ""]
    lines += ["| model | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for row in table_rows(record):
        cells = [f"{row['cells'][s][0]:.1%}" + (f" (n={row['cells'][s][1]})" if row["cells"][s][1] > 1 else "")
                 if s in row["cells"] else "-" for s in settings]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
