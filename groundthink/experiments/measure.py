"""Measurements taken once at the end of each sweep run, on the final weights, into ``final_metrics.json``.

* ``ablation``: the validation loss with each branch zeroed in every layer, on the trainer's own validation
  windows, and the resulting ``ablation_share`` (docs/design.md#balance-metrics, D3) — the share that says whether Mamba counts.
* ``long_context``: the diagnostics' long-context analysis (loss by position up to N tokens, the state
  carried across training-length windows).
"""
from __future__ import annotations

import contextlib

import torch

from groundthink.data import eval_windows
from groundthink.diagnostics.analyses import long_context as lc_suite
from groundthink.diagnostics.metrics import ablation_share, has_both_branches
from groundthink.diagnostics.probe import DiagnoseOptions, Probe

FINAL_METRICS = "final_metrics.json"


@torch.no_grad()
def ablation(model, windows: torch.Tensor, batch_size: int, device, autocast=contextlib.nullcontext) -> dict:
    """Mean loss over ``windows`` (``[N, T + 1]``) as is and with each branch zeroed, and the shares."""
    was_training = model.training
    model.eval()
    contexts = {"loss": contextlib.nullcontext, "loss_without_rwkv": lambda: model.ablated("rwkv6"),
                "loss_without_mamba": lambda: model.ablated("mamba2")}
    result = {}
    for name, context in contexts.items():
        total = torch.zeros((), device=device)
        for i in range(0, len(windows), batch_size):
            batch = windows[i:i + batch_size].to(device)
            with context(), autocast():
                total += model(batch[:, :-1], targets=batch[:, 1:]).loss.float() * len(batch)
        result[name] = float(total) / len(windows)
    model.train(was_training)
    result["increase_rwkv"] = result["loss_without_rwkv"] - result["loss"]
    result["increase_mamba"] = result["loss_without_mamba"] - result["loss"]
    shares = ablation_share(result["increase_rwkv"], result["increase_mamba"])
    result["ablation_share_rwkv"] = None if shares is None else shares["rwkv"]
    result["ablation_share_mamba"] = None if shares is None else shares["mamba"]
    result["windows"] = len(windows)
    return result


def long_context(model, val_tokens, tokenizer, seq_len: int, length: int, sequences: int,
                 autocast=contextlib.nullcontext) -> dict:
    """Loss by position bucket up to ``length`` tokens (the diagnostics' LC analysis)."""
    factor = max(1, length // seq_len)
    options = DiagnoseOptions(seq_len=seq_len, long_factor=factor, long_sequences=sequences, train_steps=0,
                              overfit_steps=0)
    was_training = model.training
    model.eval()
    try:
        with autocast():  # the precision the run trained and evaluated in
            result = lc_suite(Probe(model, val_tokens, tokenizer, options=options))
    finally:
        model.train(was_training)
    data = dict(result.data or {})
    data.update({"ppl_ratio": result.value, "status": result.status, "detail": result.detail,
                 "length": probe_length(data, seq_len), "sequences": sequences})
    return data


def probe_length(data: dict, seq_len: int) -> int:
    if not data.get("bucket_start"):
        return seq_len
    return data["bucket_start"][-1] + data["bucket_width"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def final_measurements(model, data, config, measure, device, autocast=contextlib.nullcontext) -> dict:
    """Everything ``measure`` asks for, on ``model`` (final weights) and ``data`` (its ``DataBundle``)."""
    tc = config.train
    result: dict = {"device": device_name(device)}
    if measure.ablation and has_both_branches(model):
        windows = eval_windows(data.val, tc.seq_len, tc.eval_windows)
        result["ablation"] = ablation(model, windows, tc.batch_size, device, autocast)
    if measure.long_context:
        result["long_context"] = long_context(model, data.val, data.tokenizer, tc.seq_len, measure.long_context,
                                              measure.long_sequences, autocast)
    return result
