"""``diagnose``: every suite and analysis on one model, as a table, ``report.md``, ``diagnosis.json`` and plots.

The CLI (``groundthink diagnose``) only adds loading a run or checkpoint; everything else happens here, so a
model built in Python (``get_model(...)``) and a token tensor are enough.
"""
from __future__ import annotations

import contextlib
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from groundthink.diagnostics import plots
from groundthink.diagnostics.analyses import ANALYSES
from groundthink.diagnostics.metrics import ablation_share, state_norms
from groundthink.diagnostics.probe import DiagnoseOptions, Probe
from groundthink.diagnostics.runlog import RunLog
from groundthink.diagnostics.suites import SUITES, SuiteResult, fmt, run_suites
from groundthink.diagnostics.thresholds import STATUSES
from groundthink.progress import BACKWARD_WEIGHT, Progress, announce, count_model_tokens

TABLE_WIDTH = 100     # the terminal table wraps its value and threshold cells to fit
VALUE_WIDTH = 30


BALANCE_NAMES = ("grad_ratio", "gate_rwkv", "act_var_rwkv", "act_var_mamba", "state_norm_rwkv",
                 "state_norm_mamba", "ablation_share_rwkv", "ablation_share_mamba")


@dataclass
class Diagnosis:
    results: list[SuiteResult]        # S0-S4, G1-G4, D1-D4, then the further checks and analyses
    metrics: dict                      # the balance metrics of docs/design.md#balance-metrics, overall and per layer
    info: dict                         # what was diagnosed: model, data, options
    files: list[Path] = field(default_factory=list)

    def result(self, suite_id: str) -> SuiteResult:
        return next(r for r in self.results if r.id == suite_id)

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in STATUSES}

    def table(self) -> str:
        return format_table(self.results) + "\n" + "  ".join(f"{s} {n}" for s, n in self.counts().items() if n)

    def to_dict(self) -> dict:
        return _plain({"info": self.info, "metrics": self.metrics,
                       "results": [r.to_dict() for r in self.results], "files": [str(f) for f in self.files]})


def format_table(results: list[SuiteResult], width: int = TABLE_WIDTH) -> str:
    """id, check, status, value, threshold; the last two wrap onto further lines to fit ``width``."""
    rows = [("id", "check", "status", "value", "threshold")]
    rows += [(r.id, r.name, r.status, r.value_text or "-", r.threshold or "-") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    widths.append(min(VALUE_WIDTH, max(len(row[3]) for row in rows)))
    widths.append(max(12, width - sum(widths) - 2 * len(widths)))
    lines = []
    for row in rows:
        cells = [[cell] for cell in row[:3]] + [textwrap.wrap(cell, w) or [""] for cell, w in zip(row[3:], widths[3:])]
        for depth in range(max(len(c) for c in cells)):
            parts = [c[depth] if depth < len(c) else "" for c in cells]
            lines.append("  ".join(part.ljust(w) for part, w in zip(parts, widths)).rstrip())
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def balance_metrics(probe: Probe) -> dict:
    """docs/design.md#balance-metrics from the probe's shared passes: grad_ratio, gate_rwkv, act_var_*, state_norm_*, ablation_share."""
    metrics: dict = {}
    if probe.hybrid:
        metrics["grad_ratio"] = probe.grad_ratio
    for name, per_layer in probe.recorded.items():
        present = [v for v in per_layer if v is not None]
        metrics[name] = sum(present) / len(present)
        metrics[f"{name}_per_layer"] = per_layer
    metrics.update(state_norms(probe.output.states))
    if probe.hybrid:
        increases = probe.ablation_increases
        share = ablation_share(increases["rwkv6"], increases["mamba2"])
        metrics["ablation_share_rwkv"] = None if share is None else share["rwkv"]
        metrics["ablation_share_mamba"] = None if share is None else share["mamba"]
        layer_shares = [ablation_share(layer["rwkv6"], layer["mamba2"]) if len(layer) == 2 else None
                        for layer in probe.layer_ablation]
        metrics["ablation_share_rwkv_per_layer"] = [None if s is None else s["rwkv"] for s in layer_shares]
        metrics["ablation_share_mamba_per_layer"] = [None if s is None else s["mamba"] for s in layer_shares]
    return metrics


def planned_tokens(probe: Probe) -> float:
    """The tokens the default suites and analyses feed the model (a backward pass adds BACKWARD_WEIGHT times
    its tokens), from the options: the total of diagnose's progress. It follows the probe's passes (for a
    hybrid it matches the count exactly, the overfit check at its step limit); fresh models built for G2
    and the reload check are not counted."""
    options, length = probe.options, probe.seq_len
    batch, train = options.batch_size * length, 1 + BACKWARD_WEIGHT
    total = batch * (1 + train + 1 + 1 + 3)          # the batch; its gradient; recorded; S4; SPD's repeats
    total += options.long_sequences * probe.long_len  # the long-context pass (D1, EVO, LC)
    if probe.recurrent:
        total += (2 + options.variety_samples + 16) * length   # S2, D2, EVO's 4 x 4 windows
    if probe.hybrid:
        zeroed = sum(b in layer.branches for layer in probe.model.layers for b in probe.branches)
        total += batch * (2 + zeroed)                 # each branch zeroed everywhere, then per layer
    total += options.train_steps * options.train_batch_size * length * train
    return total + options.overfit_steps * overfit_step_tokens(probe)


def overfit_step_tokens(probe: Probe) -> float:
    length = min(probe.options.overfit_seq_len, probe.tokens.numel() - 1)
    return probe.options.overfit_samples * length * (1 + BACKWARD_WEIGHT)


def run_with_progress(probe: Probe, functions: list, progress: Progress | None) -> list[SuiteResult]:
    """``run_suites``, one at a time, naming each on the progress; the overfit check may stop early, and
    then the steps it did not need come off the total."""
    results = []
    for function in functions:
        if progress is not None:
            suite_id = getattr(function, "suite_id", "")
            note = (f" (at most {probe.options.overfit_steps} steps, often fewer: the ETA is an upper bound)"
                    if suite_id == "OVF" else "")
            progress.set_postfix(f"{suite_id} {getattr(function, 'suite_name', '')}{note}")
        result = run_suites(probe, [function])[0]
        steps = len((result.data or {}).get("losses", [])) if result.id == "OVF" else 0
        if progress is not None and steps and steps < probe.options.overfit_steps:
            progress.set_total(progress.total - (probe.options.overfit_steps - steps) * overfit_step_tokens(probe))
        results.append(result)
    return results


def diagnose(model, tokenizer=None, val_tokens=None, run_dir=None, out_dir=None,
             options: DiagnoseOptions | None = None, step: int | None = None,
             suites=None, analyses=None, reload=None, progress: bool = True) -> Diagnosis:
    """Run every suite (S0-S4, G1-G4, D1-D4) and analysis on ``model`` with ``val_tokens`` (1-D token ids;
    None = uniform random tokens, as the seed design's probes used). ``run_dir``: the run folder, whose
    ``metrics.jsonl`` feeds G3 and the balance-over-training plot. ``out_dir``: where report.md,
    diagnosis.json and the PNG plots go (None: write nothing). ``reload``: ``() -> model`` loading the same
    weights afresh (the run's checkpoint) for the reload check; default: a safetensors round trip.
    ``progress``: show progress on stderr (a bar on a terminal, else status lines with an ETA)."""
    options = options or DiagnoseOptions()
    run_log = RunLog.read(Path(run_dir) / "metrics.jsonl") if run_dir is not None else RunLog([])
    was_training = model.training
    model.eval()
    try:
        probe = Probe(model, val_tokens, tokenizer=tokenizer, run_log=run_log, options=options, reload=reload)
        with contextlib.ExitStack() as stack:
            shown = None
            if progress:  # counted in the tokens the model reads, so the ETA covers every kind of pass
                shown = stack.enter_context(Progress(planned_tokens(probe), "diagnose", unit="tok"))
                stack.enter_context(count_model_tokens(model, shown))
            results = run_with_progress(probe, SUITES if suites is None else suites, shown)
            results += run_with_progress(probe, ANALYSES if analyses is None else analyses, shown)
            metrics = balance_metrics(probe)
    finally:
        model.train(was_training)
    config = model.config
    info = {
        "model": {"layers": "".join(config.layer_kinds()), "fusion": config.fusion if probe.hybrid else None,
                  "gate_init": config.gate_init, "hidden_size": config.hidden_size, "n_layers": config.n_layers,
                  "vocab_size": config.vocab_size, "params": sum(p.numel() for p in model.parameters())},
        "step": step, "run_dir": None if run_dir is None else str(run_dir),
        "data": {"tokens": int(probe.tokens.numel()), "random": probe.random_data, "seq_len": probe.seq_len,
                 "batch_size": options.batch_size, "long_len": probe.long_len},
        "device": str(probe.device), "options": vars(options),
    }
    diagnosis = Diagnosis(results, metrics, info)
    if out_dir is not None:
        if progress:
            announce(f"diagnose: writing report.md, diagnosis.json and plots to {out_dir}")
        write_outputs(diagnosis, probe, Path(out_dir))
    return diagnosis


def write_outputs(diagnosis: Diagnosis, probe: Probe, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {r.id: r.data for r in diagnosis.results}
    drawn = [
        ("Gate share per layer", plots.gate_share(diagnosis.metrics, out_dir / "gate_share.png")),
        ("Activation variance and state norm per layer", plots.branch_statistics(diagnosis.metrics, out_dir / "branch_statistics.png")),
        ("Component ablation", plots.ablation(data.get("ABL", {}), out_dir / "ablation.png")),
        ("Loss by position", plots.loss_by_position(data.get("LC", {}), data.get("EVO"), out_dir / "loss_by_position.png")),
        ("Per-token-type contribution", plots.token_types(data.get("TOK", {}), out_dir / "token_types.png")),
        ("Gradient coupling", plots.gradient_coupling(data.get("GC", {}), out_dir / "gradient_coupling.png")),
        ("Balance over training", plots.training_balance(probe.run_log, out_dir / "training_balance.png")),
    ]
    figures = [(title, path) for title, path in drawn if path is not None]
    report = out_dir / "report.md"
    report.write_text(render_markdown(diagnosis, figures), encoding="utf-8")
    summary = out_dir / "diagnosis.json"
    summary.write_text(json.dumps(diagnosis.to_dict(), indent=1), encoding="utf-8")
    diagnosis.files = [report, summary] + [path for _, path in figures]


def render_markdown(diagnosis: Diagnosis, figures: list[tuple[str, Path]]) -> str:
    info, model, data = diagnosis.info, diagnosis.info["model"], diagnosis.info["data"]
    lines = ["# GroundThink diagnosis", ""]
    lines.append(f"- model: layers `{model['layers']}`, fusion `{model['fusion']}`, gate_init {model['gate_init']}, "
                 f"hidden {model['hidden_size']}, vocab {model['vocab_size']}, {model['params']:,} parameters")
    if info["run_dir"]:
        lines.append(f"- run: `{info['run_dir']}`" + (f", step {info['step']}" if info["step"] is not None else ""))
    source = "uniform random tokens (no data given)" if data["random"] else f"{data['tokens']:,} validation tokens"
    lines.append(f"- data: {source}; windows of {data['seq_len']} tokens (the training length), batch "
                 f"{data['batch_size']}; long context to {data['long_len']} tokens")
    lines.append(f"- device: {info['device']}; counts: " +
                 ", ".join(f"{s} {n}" for s, n in diagnosis.counts().items() if n))
    lines.append("- thresholds: `groundthink/diagnostics/thresholds.py` (each with its source)")
    suite_ids = {f.suite_id for f in SUITES}
    for title, rows in (("Graduation suites (docs/design.md#diagnostics)", [r for r in diagnosis.results if r.id in suite_ids]),
                        ("Further checks and analyses", [r for r in diagnosis.results if r.id not in suite_ids])):
        lines += ["", f"## {title}", "", "| id | check | status | value | threshold | detail |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r.id} | {r.name} | **{r.status}** | {_cell(r.value_text)} | {_cell(r.threshold)} | "
                  f"{_cell(r.detail)} |" for r in rows]
    lines += ["", "## Balance metrics (docs/design.md#balance-metrics)", "", "| metric | overall | per layer |", "| --- | --- | --- |"]
    names = [n for n in BALANCE_NAMES if n in diagnosis.metrics]
    for name in names:
        per_layer = diagnosis.metrics.get(f"{name}_per_layer")
        shown = ", ".join(fmt(v) for v in per_layer) if per_layer else "-"
        lines.append(f"| `{name}` | {fmt(diagnosis.metrics[name])} | {shown} |")
    if not names:
        lines.append("| (none: this model has no RWKV-6 / Mamba-2 branch) | - | - |")
    if figures:
        lines += ["", "## Plots", ""]
        for title, path in figures:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return (text or "-").replace("|", "\\|").replace("\n", " ")


def _plain(value):
    """JSON-safe: non-finite floats become None, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value

