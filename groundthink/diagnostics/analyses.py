"""The further checks and analyses of docs/design.md#diagnostics and the seed design, beside the S/G/D suites.

Component ablation (per layer and overall), state evolution, long-context degradation, gradient coupling,
per-token-type contribution (the seed design's open questions Q1 / Q5), overfit one batch, beat a random model,
checkpoint reload identical, and a speed profile. Each returns a ``SuiteResult`` (PASS / WARN / FAIL against
``thresholds.py``, or INFO for pure measurements) whose ``data`` carries what the plots draw.
"""
from __future__ import annotations

import math
import tempfile
import time
import unicodedata
from pathlib import Path

import torch

from groundthink.diagnostics import thresholds as T
from groundthink.diagnostics.metrics import BRANCHES, SHORT_NAME, ablation_share, branch_state
from groundthink.diagnostics.probe import Probe
from groundthink.diagnostics.suites import SuiteResult, fmt, not_applicable, signed, suite
from groundthink.diagnostics.thresholds import FAIL, INFO, PASS, WARN
from groundthink.diagnostics.training_loop import train_copy


@suite("ABL", "component ablation")
def component_ablation(probe: Probe) -> SuiteResult:
    """Zero one branch (in one layer, and in all layers): how much does the loss rise?"""
    if not probe.hybrid:
        return not_applicable("ABL", "component ablation", "needs both RWKV-6 and Mamba-2")
    overall = probe.ablation_increases
    larger, smaller = max(overall.values()), min(overall.values())
    ratio = larger / smaller if smaller > 0 else float("inf")
    per_layer = probe.layer_ablation
    layer_shares = []
    for increases in per_layer:
        share = (ablation_share(increases["rwkv6"], increases["mamba2"])
                 if len(increases) == 2 else None)
        layer_shares.append(None if share is None else share["mamba"])
    shown = ", ".join("-" if s is None else f"{s:.0%}" for s in layer_shares)
    return SuiteResult("ABL", "component ablation", T.ABLATION_INTERACTION_RATIO.check(ratio), ratio,
                       f"ratio {fmt(ratio)}", "larger/smaller increase " + T.ABLATION_INTERACTION_RATIO.describe(),
                       f"all layers: rwkv {signed(overall['rwkv6'])}, mamba {signed(overall['mamba2'])} nats; "
                       f"Mamba share per layer: {shown}",
                       {"overall": overall, "per_layer": per_layer, "mamba_share_per_layer": layer_shares})


def _state_variance(probe: Probe, inputs: torch.Tensor) -> dict[str, float]:
    """Per branch: variance of the final state's elements (per sequence), averaged over sequences and layers."""
    result = {}
    states = probe.final_states(inputs)
    for branch in probe.branches:
        values = [float(branch_state(s, branch).float().flatten(1).var(dim=1).mean())
                  for s in states if branch_state(s, branch) is not None]
        result[branch] = sum(values) / len(values)
    return result


@suite("EVO", "state evolution")
def state_evolution(probe: Probe) -> SuiteResult:
    """State response to input variety (the seed design's Task 59): the spread of the final state's entries for one
    repeated token, two alternating tokens, real text and uniform random tokens; and the state norm along the
    long-context pass. A measurement without a verdict (thresholds.py says why)."""
    if not probe.recurrent:
        return not_applicable("EVO", "state evolution", "no recurrent branch (attention only)")
    count, length = 4, probe.seq_len
    common = torch.bincount(probe.tokens, minlength=probe.vocab_size).argsort(descending=True)[:2].tolist()
    generator = torch.Generator().manual_seed(probe.options.seed)
    inputs = {
        "repeated": torch.full((count, length), common[0]),
        "alternating": torch.tensor(common * (length // 2 + 1))[:length].repeat(count, 1),
        "text": probe.windows(count, length).cpu(),
        "random": torch.randint(0, probe.vocab_size, (count, length), generator=generator),
    }
    variance = {kind: _state_variance(probe, ids.to(probe.device)) for kind, ids in inputs.items()}
    ratios = {b: variance["random"][b] / variance["repeated"][b] if variance["repeated"][b] > 0 else float("inf")
              for b in probe.branches}
    value = min(ratios.values())
    norms = probe.long_pass["norms"]
    trajectory = {b: [_mean([v for v in window if v is not None]) for window in windows]
                  for b, windows in norms.items()}
    return SuiteResult("EVO", "state evolution", INFO, value,
                       "var(random)/var(repeated): " + ", ".join(f"{SHORT_NAME[b]} {fmt(r)}x" for b, r in ratios.items()),
                       "- (see thresholds.py)",
                       "final-state element variance: " + "; ".join(
                           f"{kind} " + "/".join(fmt(v[b]) for b in probe.branches) for kind, v in variance.items()),
                       {"variance": variance, "ratio": ratios, "norm_trajectory": trajectory,
                        "positions": [probe.seq_len * (i + 1) for i in range(len(next(iter(norms.values()))))]})


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


@suite("LC", "long context")
def long_context(probe: Probe) -> SuiteResult:
    """Loss by position bucket from 0 to ``long_factor`` x the training length (state carried across
    training windows); the verdict is the perplexity over the last half-window against that over the second
    half of the first training window (the seed design's 512-vs-64 comparison at seq 64)."""
    losses = probe.long_pass["token_loss"]              # [n, L]
    length, width = losses.shape[1], max(1, probe.seq_len // 2)
    if length < 2 * probe.seq_len:
        return not_applicable("LC", "long context", "validation data shorter than two training windows")
    per_position = losses.mean(dim=0)
    starts = list(range(0, length, width))
    buckets = [float(per_position[s:s + width].mean()) for s in starts]
    reference = float(per_position[probe.seq_len - width:probe.seq_len].mean())
    far = float(per_position[length - width:].mean())
    ratio = math.exp(far - reference) if math.isfinite(far - reference) else float("nan")
    return SuiteResult("LC", "long context", T.LONG_CONTEXT_PPL_RATIO.check(ratio), ratio,
                       f"ppl x{fmt(ratio)} at {length}",
                       f"ppl({length})/ppl({probe.seq_len}) " + T.LONG_CONTEXT_PPL_RATIO.describe(),
                       f"loss {fmt(reference)} at tokens {probe.seq_len - width}-{probe.seq_len}, "
                       f"{fmt(far)} at {length - width}-{length} ({length // probe.seq_len}x the training length)",
                       {"bucket_start": starts, "bucket_width": width, "bucket_loss": buckets,
                        "train_length": probe.seq_len})


@suite("GC", "gradient coupling")
def gradient_coupling(probe: Probe) -> SuiteResult:
    """Over the short training loop: both branches' gradient norms, their ratio, and the cosine between the
    gradients arriving at the two branches' outputs (same shape: both write to the same stream)."""
    if not probe.hybrid:
        return not_applicable("GC", "gradient coupling", "needs both RWKV-6 and Mamba-2")
    trace = probe.training
    if not trace.losses:
        return not_applicable("GC", "gradient coupling", "train_steps = 0")
    cosines = [c for step in trace.output_grad_cosine for c in step]
    cosine = _mean(cosines)
    ratios = trace.grad_ratio
    return SuiteResult("GC", "gradient coupling", INFO, cosine,
                       f"cos {fmt(cosine)}, ratio {fmt(ratios[0])}->{fmt(ratios[-1])}", "-",
                       f"over {len(trace.losses)} AdamW steps on a copy; cos = cosine of dL/d(branch output), "
                       f"mean over steps and hybrid layers",
                       {"grad_norm_rwkv": trace.grad_norm_rwkv, "grad_norm_mamba": trace.grad_norm_mamba,
                        "grad_ratio": ratios, "output_grad_cosine": trace.output_grad_cosine})


# ---- per-token-type contribution -----------------------------------------------------------------

def character_class(text: str) -> str:
    """whitespace / punctuation / digits / letters / other, for one decoded token."""
    stripped = text.strip()
    if not text or "\ufffd" in text:  # empty, or a piece of a multi-byte character (byte-level BPE)
        return "other"
    if not stripped:
        return "whitespace"
    if all(unicodedata.category(ch)[0] in "PS" for ch in stripped):
        return "punctuation"
    if stripped.isdigit():
        return "digits"
    if stripped.isalpha():
        return "letters"
    return "other"


def token_classes(probe: Probe) -> dict[str, torch.Tensor]:
    """Class name -> boolean mask over token ids. Character classes need the tokenizer; frequency classes
    come from the data: ``frequent`` = the most common ids making up half of all tokens, ``rare`` = the least
    common ids making up the last 10%."""
    classes: dict[str, torch.Tensor] = {}
    vocab = probe.vocab_size
    if probe.tokenizer is not None:
        names = [character_class(probe.tokenizer.decode([i])) for i in range(vocab)]
        for name in ("whitespace", "punctuation", "digits", "letters", "other"):
            classes[name] = torch.tensor([n == name for n in names])
    counts = torch.bincount(probe.tokens, minlength=vocab).double()
    order = counts.argsort(descending=True)
    covered = counts[order].cumsum(0) / counts.sum()
    frequent, rare = torch.zeros(vocab, dtype=torch.bool), torch.zeros(vocab, dtype=torch.bool)
    frequent[order[:int((covered < 0.5).sum()) + 1]] = True
    rare[order[covered > 0.9]] = True
    rare &= counts > 0
    classes["frequent"], classes["rare"] = frequent, rare
    return classes


@suite("TOK", "per-token-type")
def token_types(probe: Probe) -> SuiteResult:
    """Which token classes lose most when Mamba (or RWKV) is zeroed (the seed design's Q1 / Q5)."""
    if not probe.hybrid:
        return not_applicable("TOK", "per-token-type", "needs both RWKV-6 and Mamba-2")
    targets = probe.batch[1].cpu()
    base = probe.token_loss.cpu()
    deltas = {b: probe.ablation[b]["token_loss"].cpu() - base for b in BRANCHES}
    table = {}
    for name, mask_by_id in token_classes(probe).items():
        mask = mask_by_id[targets]
        count = int(mask.sum())
        if count == 0:
            continue
        row = {"count": count, "loss": float(base[mask].mean())}
        for branch in BRANCHES:
            row[f"increase_{SHORT_NAME[branch]}"] = float(deltas[branch][mask].mean())
        share = ablation_share(row["increase_rwkv"], row["increase_mamba"])
        row["mamba_share"] = None if share is None else share["mamba"]
        table[name] = row
    most = max(table.items(), key=lambda kv: kv[1]["increase_mamba"])
    return SuiteResult("TOK", "per-token-type", INFO, most[1]["increase_mamba"],
                       f"Mamba matters most: {most[0]}", "-",
                       "; ".join(f"{name} (n={row['count']}): mamba {signed(row['increase_mamba'])}, "
                                 f"rwkv {signed(row['increase_rwkv'])}" for name, row in table.items()),
                       {"classes": table})


# ---- functional checks ---------------------------------------------------------------------------

@suite("OVF", "overfit one batch")
def overfit_one_batch(probe: Probe) -> SuiteResult:
    """Can a copy of the model memorize one small batch (seed Task 43)?"""
    options = probe.options
    if options.overfit_steps == 0:
        return not_applicable("OVF", "overfit one batch", "skipped (overfit_steps = 0)")
    length = min(options.overfit_seq_len, probe.tokens.numel() - 1)
    window = probe.windows(options.overfit_samples, length + 1)
    batch = (window[:, :-1], window[:, 1:])
    # The seed's loop: plain AdamW (torch defaults besides lr), no clipping, stop at the target.
    trace = train_copy(probe.model, lambda step: batch, options.overfit_steps, lr=options.overfit_lr,
                       weight_decay=0.01, clip=0.0, stop_below=T.OVERFIT_TARGET_LOSS, seed=options.seed)
    first, last = trace.losses[0], trace.losses[-1]
    if last < T.OVERFIT_TARGET_LOSS:
        status = PASS
    elif last <= T.OVERFIT_WARN_FRACTION * first:
        status = WARN
    else:
        status = FAIL
    return SuiteResult("OVF", "overfit one batch", status, last,
                       f"loss {fmt(first)}->{fmt(last)} in {len(trace.losses)} steps",
                       f"PASS < {T.OVERFIT_TARGET_LOSS:g}; WARN if halved",
                       f"{options.overfit_samples} x {length} tokens, AdamW lr {options.overfit_lr:g}, "
                       f"at most {options.overfit_steps} steps", {"losses": trace.losses})


@suite("RND", "beat random")
def beat_random(probe: Probe) -> SuiteResult:
    """Validation loss against uniform guessing, ln V (seed Task 44)."""
    loss, uniform = float(probe.token_loss.mean()), math.log(probe.vocab_size)
    improvement = (uniform - loss) / uniform
    detail = f"loss {fmt(loss)} vs ln V = {fmt(uniform)}"
    if probe.random_data:
        detail += " (random tokens: nothing to learn)"
    return SuiteResult("RND", "beat random", T.BEAT_RANDOM_IMPROVEMENT.check(improvement), improvement,
                       f"{improvement:.1%} better", "improvement " + T.BEAT_RANDOM_IMPROVEMENT.describe(), detail)


@suite("RLD", "reload identical")
def reload_identical(probe: Probe) -> SuiteResult:
    """Load the weights into a fresh model of the same config: the logits must be bit-identical.

    With a run, the fresh model comes from the run's own checkpoint (``probe.reload``); otherwise the weights
    go through a safetensors file (``save_model`` / ``load_model``, which handle the tied embedding).
    """
    from safetensors.torch import load_model, save_model

    model = probe.model
    if probe.reload is not None:
        reloaded, how = probe.reload(), "the run's checkpoint loaded into a fresh model"
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "model.safetensors")
            save_model(model, path)
            with torch.random.fork_rng(devices=[]):
                reloaded = type(model)(model.config)
            load_model(reloaded, path, device=str(probe.device))
        how = "safetensors save -> fresh model of the config -> load"
    reloaded = reloaded.to(probe.device).eval()
    with torch.no_grad():
        logits = reloaded(probe.batch[0]).logits
    original = probe.output.logits
    same_nan = bool((torch.isnan(logits) == torch.isnan(original)).all())
    diff = float((logits - original).abs().nan_to_num(0.0).max()) if same_nan else float("nan")
    return SuiteResult("RLD", "reload identical", T.RELOAD_MAX_DIFF.check(diff), diff, f"max diff {fmt(diff)}",
                       "bit-identical logits", how + "; same batch")


@suite("SPD", "speed")
def speed_profile(probe: Probe) -> SuiteResult:
    """Forward tokens/s on the evaluation batch (no grad) and training tokens/s of the short loop."""
    inputs = probe.batch[0]
    probe.output  # the cached pass doubles as warm-up
    repeats, start = 3, time.perf_counter()
    with torch.no_grad():
        for _ in range(repeats):
            probe.model(inputs)
    if inputs.is_cuda:
        torch.cuda.synchronize()
    forward = repeats * inputs.numel() / (time.perf_counter() - start)
    train = probe.training.tokens_per_s if probe.options.train_steps > 1 else None
    device = torch.cuda.get_device_name(probe.device) if inputs.is_cuda else "CPU"
    return SuiteResult("SPD", "speed", INFO, forward,
                       f"fwd {forward:,.0f} tok/s" + (f", train {train:,.0f} tok/s" if train else ""), "-",
                       f"{device}, batch {tuple(inputs.shape)}, float32, this machine's load included",
                       {"forward_tokens_per_s": forward, "train_tokens_per_s": train, "device": device})


ANALYSES = [component_ablation, state_evolution, long_context, gradient_coupling, token_types,
            overfit_one_batch, beat_random, reload_identical, speed_profile]
