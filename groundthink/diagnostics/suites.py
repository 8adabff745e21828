"""The graduation suites of docs/design.md#diagnostics: S0-S4 (state fundamentals), G1-G4 (gates), D1-D4 (diagnostics).

Each suite is a function ``probe -> SuiteResult`` with a status (PASS / WARN / FAIL, or N/A where it does
not apply, e.g. balance on GPT-2), the number it judged and the threshold it used (all thresholds live in
``thresholds.py``). ``run_suites`` runs a list of them; a suite that raises is reported as FAIL with the
error, so one broken measurement never hides the others.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from groundthink.diagnostics import thresholds as T
from groundthink.diagnostics.metrics import BRANCHES, SHORT_NAME, ablation_share, branch_state, per_sequence_norm
from groundthink.diagnostics.probe import Probe, relative
from groundthink.diagnostics.thresholds import FAIL, NA, PASS, WARN


@dataclass
class SuiteResult:
    id: str
    name: str
    status: str
    value: float | None = None       # the number the status was judged on
    value_text: str = ""            # that number (and any second one) as shown in the table
    threshold: str = ""
    detail: str = ""
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status, "value": self.value,
                "value_text": self.value_text, "threshold": self.threshold, "detail": self.detail,
                "data": self.data}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def signed(value: float) -> str:
    return fmt(value) if value < 0 else "+" + fmt(value)


def worst(*statuses: str) -> str:
    order = {PASS: 0, WARN: 1, FAIL: 2}
    return max(statuses, key=lambda s: order.get(s, -1))


def suite(suite_id: str, name: str):
    """Mark a suite function with its id and name (used to report a suite that raised)."""
    def mark(function):
        function.suite_id, function.suite_name = suite_id, name
        return function
    return mark


def not_applicable(suite_id: str, name: str, why: str) -> SuiteResult:
    return SuiteResult(suite_id, name, NA, detail=why)


def layer_branch(layer: int, branch: str) -> str:
    return f"layer {layer} {SHORT_NAME.get(branch, branch)}"


# ---- S0-S4 ---------------------------------------------------------------------------------------

@suite("S0", "initialization")
def s0_initialization(probe: Probe) -> SuiteResult:
    """Every parameter finite; every block has its branches with parameters; states shaped as initialized."""
    model, problems = probe.model, []
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        problems.append(f"{len(bad)} non-finite parameter tensors (first: {bad[0]})")
    batch = probe.batch[0].shape[0]
    for index, (layer, state) in enumerate(zip(model.layers, probe.output.states)):
        for branch in layer.branches:
            module = getattr(layer, branch, None)
            if module is None or not any(True for _ in module.parameters()):
                problems.append(f"layer {index} lacks its {branch} parameters")
                continue
            if branch not in state:
                problems.append(f"layer {index} returned no {branch} state")
            elif hasattr(module, "initial_state"):
                expected = [tuple(t.shape) for t in module.initial_state(batch)]
                got = [tuple(t.shape) for t in state[branch]]
                if expected != got:
                    problems.append(f"layer {index} {branch} state shapes {got}, initial_state gives {expected}")
    kinds = ", ".join(sorted({"+".join(layer.branches) for layer in model.layers}))
    return SuiteResult("S0", "initialization", FAIL if problems else PASS, float(len(problems)),
                       f"{len(problems)} problems", "0 problems: params finite, every branch built",
                       "; ".join(problems) or f"{len(model.layers)} blocks ({kinds}), "
                       f"{sum(p.numel() for p in model.parameters()):,} params", {"problems": problems})


@suite("S1", "forward")
def s1_forward(probe: Probe) -> SuiteResult:
    """Logits of shape [B, T, V]; no NaN / inf in logits or states; state norms in a sane range (WARN)."""
    logits, (inputs, _) = probe.output.logits, probe.batch
    expected = (*inputs.shape, probe.vocab_size)
    bad_logits = int((~torch.isfinite(logits)).sum())
    bad_states, norms = 0, []
    for layer_state in probe.output.states:
        for branch in probe.branches:
            tensor = branch_state(layer_state, branch)
            if tensor is not None:
                bad_states += int((~torch.isfinite(tensor)).sum())
                norms.extend(per_sequence_norm(tensor).tolist())
    problems = bad_logits + bad_states
    status = FAIL if problems or tuple(logits.shape) != expected else PASS
    detail = f"logits {tuple(logits.shape)}, {bad_logits} non-finite logits, {bad_states} non-finite state values"
    if status == PASS and norms:
        low, high = min(norms), max(norms)
        status = worst(T.S1_STATE_NORM.check(low), T.S1_STATE_NORM.check(high))
        detail += f"; state norms {fmt(low)}..{fmt(high)} (sane: {T.S1_STATE_NORM.describe()})"
    return SuiteResult("S1", "forward", status, float(problems), f"{problems} non-finite",
                       f"shape {list(expected)}, 0 non-finite", detail)


@suite("S2", "state variation")
def s2_state_variation(probe: Probe) -> SuiteResult:
    """Two different inputs must leave different recurrent states, in every branch and layer."""
    if not probe.recurrent:
        return not_applicable("S2", "state variation", "no recurrent branch (attention only)")
    windows = probe.windows(2, probe.seq_len)
    first, second = probe.final_states(windows[:1]), probe.final_states(windows[1:])
    diffs = {}
    for index, (a, b) in enumerate(zip(first, second)):
        for branch in probe.branches:
            sa, sb = branch_state(a, branch), branch_state(b, branch)
            if sa is not None:
                scale = (float(sa.float().norm()) + float(sb.float().norm())) / 2
                diffs[layer_branch(index, branch)] = relative(float((sa.float() - sb.float()).norm()), scale)
    where, value = min(diffs.items(), key=lambda kv: (not math.isnan(kv[1]), kv[1]))
    return SuiteResult("S2", "state variation", T.S2_RELATIVE_STATE_DIFF.check(value), value, fmt(value),
                       "rel. state diff " + T.S2_RELATIVE_STATE_DIFF.describe(), f"smallest at {where}",
                       {"relative_difference": diffs})


@suite("S3", "gradient flow")
def s3_gradient_flow(probe: Probe) -> SuiteResult:
    """The LM loss sends a finite, non-zero gradient to every branch of every layer."""
    norms = probe.gradient_norms
    flat = {layer_branch(i, b): v for i, layer in enumerate(norms) for b, v in layer.items()}
    if not flat:
        return not_applicable("S3", "gradient flow", "no mixer branches")
    dead = [k for k, v in flat.items() if not (math.isfinite(v) and v > 0)]
    where, value = min(flat.items(), key=lambda kv: (not math.isnan(kv[1]), kv[1]))
    return SuiteResult("S3", "gradient flow", FAIL if dead else PASS, value, fmt(value),
                       "every branch: 0 < ||grad|| < inf",
                       f"no gradient at: {', '.join(dead)}" if dead else f"smallest at {where}",
                       {"grad_norm": flat})


@suite("S4", "state persistence")
def s4_state_persistence(probe: Probe) -> SuiteResult:
    """A sequence fed in two halves, the state carried over, gives the logits of the whole sequence; and
    (hybrids) the two branches' state variances are not wildly apart (the seed design's S4 ratio, WARN only)."""
    inputs = probe.batch[0]
    half = inputs.shape[1] // 2
    whole = probe.output.logits.float()
    with torch.no_grad():
        first = probe.model(inputs[:, :half], return_states=True)
        second = probe.model(inputs[:, half:], states=first.states, position_offset=half)
    pieces = torch.cat([first.logits.float(), second.logits.float()], dim=1)
    error = relative(float((pieces - whole).abs().max()), float(whole.abs().max()))
    status = T.S4_CONTINUATION_ERROR.check(error)
    text, data = f"err {fmt(error)}", {"continuation_error": error}
    threshold = "err " + T.S4_CONTINUATION_ERROR.describe()
    if probe.hybrid:
        variances = {}
        for branch in BRANCHES:
            values = [branch_state(s, branch).float().flatten() for s in probe.output.states
                      if branch_state(s, branch) is not None]
            variances[branch] = float(torch.cat(values).var())
        ratio = variances["rwkv6"] / variances["mamba2"] if variances["mamba2"] > 0 else float("inf")
        status = worst(status, T.S4_STATE_VARIANCE_RATIO.check(ratio))
        text += f", var ratio {fmt(ratio)}"
        threshold += f"; R/M state var {T.S4_STATE_VARIANCE_RATIO.describe()}"
        data["state_variance_ratio"] = ratio
    return SuiteResult("S4", "state persistence", status, error, text, threshold,
                       f"split at token {half} of {inputs.shape[1]}", data)


# ---- G1-G4 ---------------------------------------------------------------------------------------

@suite("G1", "forward")
def g1_forward(probe: Probe) -> SuiteResult:
    """Forward on the validation batch: logits [B, T, V] and a finite loss."""
    loss = float(probe.token_loss.mean())
    shape_ok = tuple(probe.output.logits.shape) == (*probe.batch[0].shape, probe.vocab_size)
    status = PASS if math.isfinite(loss) and shape_ok else FAIL
    return SuiteResult("G1", "forward", status, loss, f"loss {fmt(loss)}", "finite loss, logits [B, T, V]",
                       f"uniform guessing: ln V = {fmt(math.log(probe.vocab_size))}")


def entropy(logits: torch.Tensor) -> float:
    logp = F.log_softmax(logits.float(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


@suite("G2", "init entropy")
def g2_init_entropy(probe: Probe) -> SuiteResult:
    """Entropy (nats) of the output distribution of a freshly initialized model of the same config."""
    model = probe.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(probe.options.seed)
        fresh = type(model)(model.config).to(probe.device).eval()
    with torch.no_grad():
        value = entropy(fresh(probe.batch[0]).logits)
    own = entropy(probe.output.logits)
    return SuiteResult("G2", "init entropy", T.G2_INIT_ENTROPY.check(value), value, fmt(value),
                       T.G2_INIT_ENTROPY.describe(),
                       f"fresh init of this config; uniform = ln V = {fmt(math.log(probe.vocab_size))}; "
                       f"this model's entropy {fmt(own)}", {"init_entropy": value, "model_entropy": own})


def _window_mean(values: list[float], first: bool) -> float:
    width = max(1, len(values) // 4)
    chunk = values[:width] if first else values[-width:]
    return sum(chunk) / len(chunk)


@suite("G3", "short training")
def g3_short_training(probe: Probe) -> SuiteResult:
    """Loss falls and the grad norm sits in 0.5-1.5: from the run's own log when it has one, else from a
    short AdamW loop on a copy of the model."""
    _, logged_losses = probe.run_log.train_losses()
    _, logged_norms = probe.run_log.grad_norms()
    if len(logged_losses) >= 4 and len(logged_norms) >= 2:
        losses, norms, source = logged_losses, logged_norms, f"the run's log ({len(logged_losses)} train lines)"
    else:
        trace = probe.training
        if not trace.losses:
            return not_applicable("G3", "short training", "no run log and train_steps = 0")
        losses, norms, source = trace.losses, trace.grad_norms, f"{len(trace.losses)}-step AdamW loop on a copy"
    bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad or len(losses) < 2:
        return SuiteResult("G3", "short training", FAIL if bad else NA, float("nan"),
                           f"loss {fmt(losses[bad[0]])} at step {bad[0]}" if bad else "-",
                           f"loss falls; |g| {T.G3_GRAD_NORM.describe()}",
                           f"from {source}" + ("; a non-finite loss stops training" if bad else "; too few steps"))
    start, end = _window_mean(losses, True), _window_mean(losses, False)
    ratio = end / start if start > 0 and math.isfinite(start) else float("nan")
    grad_norm = statistics.median(norms[len(norms) // 2:])
    status = T.G3_LOSS_RATIO.check(ratio)
    if status == PASS:
        status = T.G3_GRAD_NORM.check(grad_norm)
    return SuiteResult("G3", "short training", status, ratio,
                       f"loss {fmt(start)}->{fmt(end)}, |g| {fmt(grad_norm)}",
                       f"loss falls; |g| {T.G3_GRAD_NORM.describe()}",
                       f"from {source}; |g| = median total grad norm (before clipping) of the second half",
                       {"loss_start": start, "loss_end": end, "grad_norm": grad_norm})


@suite("G4", "balance")
def g4_balance(probe: Probe) -> SuiteResult:
    """``grad_ratio`` = ||grad rwkv6.*|| / ||grad mamba2.*|| on the validation batch, in [0.3, 3.0]."""
    if not probe.hybrid:
        return not_applicable("G4", "balance", "needs both RWKV-6 and Mamba-2")
    value = probe.grad_ratio
    detail = "on the validation batch, at these weights"
    logged = probe.run_log.last("grad_ratio")
    if logged is not None:
        detail += f"; last logged in training: {fmt(logged)}"
    return SuiteResult("G4", "balance", T.G4_GRAD_RATIO.check(value), value, f"grad_ratio {fmt(value)}",
                       T.G4_GRAD_RATIO.describe(), detail, {"grad_ratio": value, "logged_grad_ratio": logged})


# ---- D1-D4 ---------------------------------------------------------------------------------------

@suite("D1", "state divergence")
def d1_state_divergence(probe: Probe) -> SuiteResult:
    """State norm after long_factor x seq_len tokens over the norm after seq_len tokens (max over branches
    and layers): do the states grow without bound?"""
    if not probe.recurrent:
        return not_applicable("D1", "state divergence", "no recurrent branch (attention only)")
    norms = probe.long_pass["norms"]
    if len(next(iter(norms.values()))) < 2:
        return not_applicable("D1", "state divergence", "validation data shorter than two training windows")
    growth = {}
    for branch, windows in norms.items():
        for index, (start, end) in enumerate(zip(windows[0], windows[-1])):
            if start is not None:
                growth[layer_branch(index, branch)] = relative(end, start)
    where, value = max(growth.items(), key=lambda kv: (math.isnan(kv[1]), kv[1]))
    return SuiteResult("D1", "state divergence", T.D1_NORM_GROWTH.check(value), value, f"growth {fmt(value)}x",
                       T.D1_NORM_GROWTH.describe(),
                       f"norm at token {probe.long_len} / at token {probe.seq_len}; largest at {where}",
                       {"growth": growth})


@suite("D2", "frozen state")
def d2_frozen_state(probe: Probe) -> SuiteResult:
    """Does each branch's state vary across different inputs? Variance relative to the state's mean square
    (smallest over layers); one frozen branch = WARN, all frozen = FAIL (the seed design's rule)."""
    if not probe.recurrent:
        return not_applicable("D2", "frozen state", "no recurrent branch (attention only)")
    smallest = {}
    for branch, per_layer in probe.variety.items():
        values = [v for v in per_layer if v is not None]
        smallest[branch] = min(values, key=lambda v: (not math.isnan(v), v))
    frozen = [b for b, v in smallest.items() if not v >= T.D2_FROZEN_RELATIVE_VARIANCE]  # NaN counts as frozen
    status = PASS if not frozen else FAIL if len(frozen) == len(smallest) else WARN
    value = min(smallest.values(), key=lambda v: (not math.isnan(v), v))
    text = ", ".join(f"{SHORT_NAME[b]} {fmt(v)}" for b, v in smallest.items())
    return SuiteResult("D2", "frozen state", status, value, text,
                       f"rel. var >= {T.D2_FROZEN_RELATIVE_VARIANCE:g} per branch",
                       f"frozen: {', '.join(SHORT_NAME[b] for b in frozen)}" if frozen else
                       f"across {probe.options.variety_samples} inputs", {"relative_variance": probe.variety})


@suite("D3", "component balance")
def d3_component_balance(probe: Probe) -> SuiteResult:
    """``ablation_share`` of the smaller branch: its loss increase when zeroed, as a share of both."""
    if not probe.hybrid:
        return not_applicable("D3", "component balance", "needs both RWKV-6 and Mamba-2")
    increases = probe.ablation_increases
    share = ablation_share(increases["rwkv6"], increases["mamba2"])
    shares = {"rwkv6": 0.0, "mamba2": 0.0} if share is None else {"rwkv6": share["rwkv"], "mamba2": share["mamba"]}
    value = min(shares.values())
    detail = ", ".join(f"{SHORT_NAME[b]} {signed(increases[b])} nats" for b in BRANCHES)
    if share is None:
        detail += " (zeroing either branch does not raise the loss)"
    return SuiteResult("D3", "component balance", T.D3_MIN_ABLATION_SHARE.check(value), value,
                       f"rwkv {shares['rwkv6']:.1%} / mamba {shares['mamba2']:.1%}",
                       "min share " + T.D3_MIN_ABLATION_SHARE.describe(), "loss increase when zeroed: " + detail,
                       {"ablation_share": shares, "increase": increases})


@suite("D4", "information flow")
def d4_information_flow(probe: Probe) -> SuiteResult:
    """Both pathways carry information: the logits change when either branch is zeroed (relative change,
    the smaller of the two)."""
    if not probe.hybrid:
        return not_applicable("D4", "information flow", "needs both RWKV-6 and Mamba-2")
    changes = {b: probe.ablation[b]["output_change"] for b in BRANCHES}
    value = min(changes.values(), key=lambda v: (not math.isnan(v), v))
    return SuiteResult("D4", "information flow", T.D4_RELATIVE_OUTPUT_CHANGE.check(value), value,
                       ", ".join(f"{SHORT_NAME[b]} {fmt(v)}" for b, v in changes.items()),
                       "rel. logit change " + T.D4_RELATIVE_OUTPUT_CHANGE.describe(),
                       "||logits - logits with the branch zeroed|| / ||logits||", {"output_change": changes})


SUITES = [s0_initialization, s1_forward, s2_state_variation, s3_gradient_flow, s4_state_persistence,
          g1_forward, g2_init_entropy, g3_short_training, g4_balance,
          d1_state_divergence, d2_frozen_state, d3_component_balance, d4_information_flow]


def run_suites(probe: Probe, suites=None) -> list[SuiteResult]:
    results = []
    for function in suites or SUITES:
        try:
            results.append(function(probe))
        except Exception as err:  # a crashing measurement is a failed check, reported, not a crash
            message = str(err).splitlines()[0] if str(err) else ""
            results.append(SuiteResult(getattr(function, "suite_id", function.__name__),
                                       getattr(function, "suite_name", function.__name__), FAIL,
                                       detail=f"error: {type(err).__name__}: {message}"))
    return results
