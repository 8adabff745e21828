"""A sweep's results: one row per run (``runs.csv``), mean ± std over seeds per row of the matrix
(``results.csv``), and ``results.md`` with the tables, the ratios and the goal the spec names.

Everything is read back from the run folders (``summary.json``, ``final_metrics.json``), so the report can
be rebuilt anywhere the folders are (``groundthink sweep SPEC --report``), checkpoints or not.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from groundthink.data.files import read_json
from groundthink.diagnostics import thresholds as T
from groundthink.experiments.measure import FINAL_METRICS
from groundthink.experiments.spec import SweepSpec
from groundthink.experiments.worker import run_state

# Per-run numbers that are averaged over seeds, with how results.md prints them.
METRICS = {
    "final_val_loss": "{:.4f}", "best_val_loss": "{:.4f}", "final_val_ppl": "{:.3f}", "best_val_ppl": "{:.3f}",
    "train_eval_loss": "{:.4f}", "grad_ratio": "{:.3g}", "gate_rwkv": "{:.3f}", "act_var_ratio": "{:.3g}",
    "ablation_share_mamba": "{:.1%}",
    "long_context_ratio": "{:.3f}", "long_context_delta": "{:+.3f}", "tok_per_s": "{:,.0f}", "params": "{:,.0f}",
}
RUN_COLUMNS = ["label", "model", "key", "variant", "seed", "status", "step", *METRICS, "best_step",
               "act_var_rwkv", "act_var_mamba", "increase_rwkv", "increase_mamba", "train_seconds", "device",
               "parallel", "run_dir"]
USABLE = ("completed", "plateau")   # runs whose numbers enter the means (diverged ones are listed apart)


@dataclass
class SweepTable:
    runs: list[dict]                                # one per run of the spec, finished or not
    rows: list[dict]                                # one per label, the metrics' mean / std / n
    groups: dict[str, str] = field(default_factory=dict)   # label -> data group (losses compare within one)

    def runs_of(self, label: str, usable: bool = True) -> list[dict]:
        return [r for r in self.runs if r["label"] == label and (not usable or r["status"] in USABLE)]


def number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def run_row(run, run_dir: Path) -> dict:
    """The numbers of one run, read from its folder (None where absent)."""
    row = {"label": run.label, "model": run.model, "key": run.key, "variant": run.variant, "seed": run.seed,
           "run_dir": str(run_dir)}
    summary = read_json(run_dir / "summary.json")
    if summary is None or run_state(run_dir) != "done":
        return {**row, "status": "missing" if summary is None else f"unfinished ({summary.get('status')})"}
    final = summary.get("final") or {}
    measured = read_json(run_dir / FINAL_METRICS) or {}
    ablation = measured.get("ablation") or {}
    long_context = measured.get("long_context") or {}
    rwkv, mamba = number(final.get("act_var_rwkv")), number(final.get("act_var_mamba"))
    row.update({
        "status": summary.get("status"), "step": summary.get("step"), "params": summary.get("params"),
        "tok_per_s": number(summary.get("tok_per_s")), "train_seconds": number(summary.get("train_seconds")),
        "final_val_loss": number(final.get("val_loss")), "train_eval_loss": number(final.get("train_eval_loss")),
        "final_val_ppl": number(final.get("val_ppl")),
        "best_val_loss": number(summary.get("best_val_loss")), "best_val_ppl": number(summary.get("best_val_ppl")),
        "best_step": summary.get("best_step"), "grad_ratio": number(final.get("grad_ratio")),
        "gate_rwkv": number(final.get("gate_rwkv")), "act_var_rwkv": rwkv, "act_var_mamba": mamba,
        "act_var_ratio": rwkv / mamba if rwkv is not None and mamba else None,
        "ablation_share_mamba": number(ablation.get("ablation_share_mamba")),
        "increase_rwkv": number(ablation.get("increase_rwkv")), "increase_mamba": number(ablation.get("increase_mamba")),
        "long_context_ratio": number(long_context.get("ppl_ratio")),
        "long_context_delta": loss_past_training_length(long_context),
        "device": measured.get("device", summary.get("device")), "parallel": measured.get("parallel"),
    })
    return row


def loss_past_training_length(long_context: dict) -> float | None:
    """Mean loss of every position bucket past the training length minus the loss of the bucket ending at
    it: one number for "does the loss rise past the training length", steadier than the last bucket alone."""
    starts, losses = long_context.get("bucket_start"), long_context.get("bucket_loss")
    train_length, width = long_context.get("train_length"), long_context.get("bucket_width")
    if not (starts and losses and train_length and width) or train_length - width not in starts:
        return None
    past = [loss for start, loss in zip(starts, losses) if start >= train_length]
    reference = losses[starts.index(train_length - width)]
    return sum(past) / len(past) - reference if past else None


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def data_group(config: dict) -> str:
    return json.dumps(config.get("data", {}), sort_keys=True)


def collect(spec: SweepSpec, out: Path) -> SweepTable:
    runs = [run_row(run, Path(out) / run.folder) for run in spec.runs]
    rows, groups, group_names = [], {}, {}
    for label in spec.labels:
        chosen = [r for r in runs if r["label"] == label]
        if not chosen:
            continue
        usable = [r for r in chosen if r["status"] in USABLE]
        first = next(run for run in spec.runs if run.label == label)
        row = {"label": label, "model": first.model, "variant": first.variant, "n": len(usable),
               "runs": len(chosen), "diverged": sum(r["status"] == "diverged" for r in chosen)}
        for metric in METRICS:
            mean, std = mean_std([r[metric] for r in usable if r.get(metric) is not None])
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        rows.append(row)
        key = data_group(first.config)
        group_names.setdefault(key, first.variant or "")
        groups[label] = group_names[key]
    return SweepTable(runs, rows, groups)


# ---- derived numbers: ratios, goal ------------------------------------------------------------------

def ratio_rows(spec: SweepSpec, table: SweepTable) -> list[dict]:
    """Per variant and pair: val loss of the first over the second, paired by seed (final and best)."""
    result = []
    for variant in spec.variants:
        for first, second in spec.ratios:
            label_a = first if variant is None else f"{variant}/{first}"
            label_b = second if variant is None else f"{variant}/{second}"
            runs_b = {r["seed"]: r for r in table.runs_of(label_b)}
            row = {"variant": variant, "pair": f"{first} / {second}"}
            for which in ("final_val_loss", "best_val_loss"):
                ratios = [a[which] / runs_b[a["seed"]][which] for a in table.runs_of(label_a)
                          if a["seed"] in runs_b and a[which] is not None and runs_b[a["seed"]][which]]
                row[which], row[f"{which}_std"] = mean_std(ratios)
                row["n"] = len(ratios)
            result.append(row)
    return result


def goal_check(spec: SweepSpec, table: SweepTable, row: dict) -> str:
    """``yes`` or ``no (reasons)`` against the spec's goal, on the row's means."""
    goal, reasons = spec.goal, []
    if row["n"] == 0:
        return "-"
    for metric in ("grad_ratio", "ablation_share_mamba"):
        if metric in goal:
            low, high = goal[metric]
            value = row[f"{metric}_mean"]
            if value is None or not low <= value <= high:
                reasons.append(metric)
    within = goal.get("val_loss_within")
    if within:
        reference = next((r for r in table.rows if r["label"] == within["of"]), None)
        value = row["final_val_loss_mean"]
        if reference is None or reference["final_val_loss_mean"] is None or value is None \
                or value > reference["final_val_loss_mean"] + within["delta"]:
            reasons.append("val loss")
    return "yes" if not reasons else f"no ({', '.join(reasons)})"


# ---- writing ----------------------------------------------------------------------------------------

def fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def cell(row: dict, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if mean is None:
        return "-"
    if metric in ("params", "tok_per_s") or std is None:
        return fmt(mean, METRICS[metric])
    if metric == "ablation_share_mamba":
        return f"{mean:.1%} ± {std * 100:.1f}"
    return f"{fmt(mean, METRICS[metric])} ± {fmt(std, METRICS[metric])}"


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def markdown(spec: SweepSpec, table: SweepTable, out: Path) -> str:
    finished = sum(r["status"] in USABLE for r in table.runs)
    lines = [f"# Sweep `{spec.name}`", ""]
    if spec.question:
        lines += [f"> {spec.question}", ""]
    lines += [f"Spec `{spec.path}`; run folders under `{out}`; {finished} of {len(table.runs)} runs finished "
              f"(seeds {', '.join(map(str, spec.seeds))}).", ""]
    record = read_json(Path(out) / "sweep.json") or {}
    if record.get("invocations"):
        lines.append("Commands and machines:")
        for inv in record["invocations"]:
            at_once = f", {inv['parallel']} runs at a time" if inv.get("parallel", 1) > 1 else ""
            lines.append(f"- `{' '.join(inv['argv'])}` on {inv['machine']}{at_once} ({inv['started']})")
        lines.append("")
    lines += ["Mean ± sample standard deviation over the seed design (n = finished runs of the row). *final*: the last "
              "evaluation; *best*: the run's lowest val loss. `grad_ratio`, `gate_rwkv` and the activation-variance "
              "ratio (RWKV / Mamba, raw outputs) come from the final evaluation; *Mamba share* is `ablation_share` "
              "of Mamba, measured once at the end on the validation windows; G4 checks the mean `grad_ratio` "
              f"against [{T.G4_GRAD_RATIO.pass_lo:g}, {T.G4_GRAD_RATIO.pass_hi:g}]. tok/s is each run's training "
              "throughput (lower when several runs shared a GPU).", ""]
    reference = bool(spec.reference)
    goal = bool(spec.goal)
    header = ["row", "n", "final val loss", "best val loss", "final ppl", "train-split loss"]
    header += ["published", "Δ final"] if reference else []
    header += ["grad_ratio", "G4", "gate_rwkv", "act var R/M", "Mamba share"]
    header += ["LC ppl ratio", "LC Δ past train len"] if any(
        r["long_context_ratio_mean"] is not None for r in table.rows) else []
    header += ["goal"] if goal else []
    header += ["tok/s", "params"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [row["label"], f"{row['n']}/{row['runs']}" + (f" ({row['diverged']} diverged)" if row["diverged"] else ""),
                 cell(row, "final_val_loss"), cell(row, "best_val_loss"), cell(row, "final_val_ppl"),
                 cell(row, "train_eval_loss")]
        if reference:
            published = spec.reference.get(row["label"])
            mean = row["final_val_loss_mean"]
            cells += [fmt(published, "{:.3f}"),
                      "-" if published is None or mean is None else f"{mean - published:+.3f}"]
        g4 = row["grad_ratio_mean"]
        cells += [cell(row, "grad_ratio"), "-" if g4 is None else T.G4_GRAD_RATIO.check(g4),
                  cell(row, "gate_rwkv"), cell(row, "act_var_ratio"), cell(row, "ablation_share_mamba")]
        if "LC ppl ratio" in header:
            cells += [cell(row, "long_context_ratio"), cell(row, "long_context_delta")]
        if goal:
            cells.append(goal_check(spec, table, row))
        cells += [cell(row, "tok_per_s"), cell(row, "params")]
        lines.append("| " + " | ".join(cells) + " |")
    if goal:
        lines += ["", f"Goal: {json.dumps(spec.goal)}"]
    ratios = ratio_rows(spec, table)
    if ratios:
        lines += ["", "Val-loss ratios, paired by seed (mean ± std over seeds):", "",
                  "| data | pair | n | final | best |", "|---|---|---|---|---|"]
        for r in ratios:
            final = "-" if r["final_val_loss"] is None else f"{r['final_val_loss']:.4f}" + (
                f" ± {r['final_val_loss_std']:.4f}" if r["final_val_loss_std"] is not None else "")
            best = "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f}" + (
                f" ± {r['best_val_loss_std']:.4f}" if r["best_val_loss_std"] is not None else "")
            lines.append(f"| {r['variant'] or '-'} | {r['pair']} | {r['n']} | {final} | {best} |")
    missing = [r for r in table.runs if r["status"] not in USABLE]
    if missing:
        lines += ["", "Not in the means:", ""]
        lines += [f"- {r['label']} seed {r['seed']}: {r['status']}" for r in missing]
    return "\n".join(lines) + "\n"


TERMINAL_WIDTH = 100
TERMINAL_COLUMNS = (("final val loss", "final_val_loss"), ("grad_ratio", "grad_ratio"), ("gate_rwkv", "gate_rwkv"),
                    ("Mamba share", "ablation_share_mamba"), ("tok/s", "tok_per_s"))


def terminal_table(table: SweepTable, width: int = TERMINAL_WIDTH) -> str:
    """The rows' headline numbers for the console, at most ``width`` columns (long labels are cut, with
    ``~``); results.md has every column."""
    header = ["row", "n", *(title for title, _ in TERMINAL_COLUMNS)]
    rows = [[row["label"], f"{row['n']}/{row['runs']}", *(cell(row, metric) for _, metric in TERMINAL_COLUMNS)]
            for row in table.rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    widths[0] = max(8, min(widths[0], width - sum(widths[1:]) - 2 * (len(widths) - 1)))
    lines = []
    for cells in [header, *rows]:
        first = cells[0] if len(cells[0]) <= widths[0] else cells[0][:widths[0] - 1] + "~"
        lines.append("  ".join([first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_results(spec: SweepSpec, table: SweepTable, results_dir: Path, out: Path) -> list[Path]:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    aggregate_columns = ["label", "model", "variant", "n", "runs", "diverged"]
    for metric in METRICS:
        aggregate_columns += [f"{metric}_mean", f"{metric}_std"]
    paths = [results_dir / "results.csv", results_dir / "runs.csv", results_dir / "results.md"]
    write_csv(paths[0], table.rows, aggregate_columns)
    write_csv(paths[1], table.runs, RUN_COLUMNS)
    paths[2].write_text(markdown(spec, table, out), encoding="utf-8")
    return paths
