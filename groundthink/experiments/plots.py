"""A sweep's plots (PNG, matplotlib's Agg canvas through ``Figure``): val loss vs step per row, ``gate_rwkv``
and ``grad_ratio`` over training, the loss–balance Pareto plot, and loss by position when measured.

Rows whose runs saw different data (e.g. char vs BPE variants) get separate panels: their losses do not
compare. Curves are the mean over seeds with a ±1 std band, on the steps every seed evaluated.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from groundthink.data.files import read_json
from groundthink.diagnostics import thresholds as T
from groundthink.diagnostics.runlog import RunLog
from groundthink.experiments.measure import FINAL_METRICS
from groundthink.experiments.results import SweepTable
from groundthink.experiments.spec import SweepSpec


def colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def panels(table: SweepTable) -> dict[str, list[str]]:
    """Data group -> its row labels, in table order."""
    groups: dict[str, list[str]] = {}
    for row in table.rows:
        groups.setdefault(table.groups.get(row["label"], ""), []).append(row["label"])
    return groups


def mean_curve(table: SweepTable, label: str, key: str):
    """(steps, mean, std) of an eval metric over the row's finished runs, on the steps all of them logged."""
    curves = []
    for run in table.runs_of(label):
        steps, values = RunLog.read(Path(run["run_dir"]) / "metrics.jsonl").eval_series(key)
        if steps:
            curves.append(dict(zip(steps, values)))
    if not curves:
        return [], [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    means = [statistics.fmean(c[s] for c in curves) for s in steps]
    stds = [statistics.stdev([c[s] for c in curves]) if len(curves) > 1 else 0.0 for s in steps]
    return steps, means, stds


def draw_curves(axes, table: SweepTable, labels: list[str], key: str) -> bool:
    drawn = False
    for label, color in zip(labels, colors(len(labels))):
        steps, means, stds = mean_curve(table, label, key)
        if not steps:
            continue
        axes.plot(steps, means, color=color, label=label, lw=1.3)
        axes.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                          color=color, alpha=0.15, lw=0)
        drawn = True
    return drawn


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def loss_curves(spec: SweepSpec, table: SweepTable, path: Path) -> Path | None:
    groups = panels(table)
    figure = Figure(figsize=(6.5 * len(groups), 4.5))
    drawn = False
    for index, (group, labels) in enumerate(groups.items()):
        axes = figure.add_subplot(1, len(groups), index + 1)
        if draw_curves(axes, table, labels, "val_loss"):
            drawn = True
            axes.set(xlabel="step", ylabel="val loss", title=f"{spec.name}" + (f" ({group})" if group else ""))
            axes.legend(fontsize=7, ncol=2)
            axes.grid(alpha=0.3)
    return _save(figure, path) if drawn else None


def balance_curves(spec: SweepSpec, table: SweepTable, path: Path) -> Path | None:
    groups = panels(table)
    figure = Figure(figsize=(6.5 * len(groups), 7.5))
    drawn = False
    for index, (group, labels) in enumerate(groups.items()):
        gate = figure.add_subplot(2, len(groups), index + 1)
        ratio = figure.add_subplot(2, len(groups), len(groups) + index + 1)
        suffix = f" ({group})" if group else ""
        if draw_curves(gate, table, labels, "gate_rwkv"):
            drawn = True
            gate.axhline(0.5, color="grey", lw=0.8, ls="--")
            gate.set(xlabel="step", ylabel="gate_rwkv (RWKV share of the gate)", ylim=(0, 1), title=f"gate{suffix}")
            gate.legend(fontsize=7, ncol=2)
        else:
            gate.set_axis_off()
        if draw_curves(ratio, table, labels, "grad_ratio"):
            drawn = True
            ratio.set_yscale("log")
            ratio.axhspan(T.G4_GRAD_RATIO.pass_lo, T.G4_GRAD_RATIO.pass_hi, color="green", alpha=0.08,
                          label="G4 PASS band")
            ratio.set(xlabel="step", ylabel="grad_ratio = |grad rwkv6| / |grad mamba2|", title=f"grad_ratio{suffix}")
            ratio.legend(fontsize=7, ncol=2)
        else:
            ratio.set_axis_off()
    return _save(figure, path) if drawn else None


def front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (balance score, loss, label) not beaten on both: higher score and lower loss."""
    best = math.inf
    kept = []
    for point in sorted(points, key=lambda p: (-p[0], p[1])):
        if point[1] < best:
            kept.append(point)
            best = point[1]
    return kept


BALANCE_AXES = [
    ("grad_ratio", "grad_ratio (log; G4 band shaded)", lambda v: -abs(math.log10(v)) if v > 0 else -math.inf),
    ("ablation_share_mamba", "Mamba ablation share", lambda v: min(v, 1.0 - v)),
]


def pareto(spec: SweepSpec, table: SweepTable, path: Path) -> Path | None:
    """Final val loss against each balance measure, per row (mean ± std over seeds), with the Pareto front."""
    groups = panels(table)
    figure = Figure(figsize=(12, 4.8 * len(groups)))
    drawn = False
    for g, (group, labels) in enumerate(groups.items()):
        rows = [r for r in table.rows if r["label"] in labels and r["final_val_loss_mean"] is not None]
        for a, (metric, title, score) in enumerate(BALANCE_AXES):
            axes = figure.add_subplot(len(groups), 2, 2 * g + a + 1)
            points = [r for r in rows if r[f"{metric}_mean"] is not None]
            if not points:
                axes.set_axis_off()
                continue
            drawn = True
            for row, color in zip(points, colors(len(points))):
                x, y = row[f"{metric}_mean"], row["final_val_loss_mean"]
                axes.errorbar(x, y, xerr=row[f"{metric}_std"] or 0.0, yerr=row["final_val_loss_std"] or 0.0,
                              fmt="o", color=color, ms=5, capsize=2)
                axes.annotate(row["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            best = front([(score(r[f"{metric}_mean"]), r["final_val_loss_mean"], r["label"]) for r in points])
            by_label = {r["label"]: r for r in points}
            line = sorted((by_label[p[2]][f"{metric}_mean"], p[1]) for p in best)
            axes.plot([p[0] for p in line], [p[1] for p in line], "k--", lw=0.8, label="Pareto front")
            if metric == "grad_ratio":
                axes.set_xscale("log")
                axes.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
                axes.axvspan(T.G4_GRAD_RATIO.pass_lo, T.G4_GRAD_RATIO.pass_hi, color="green", alpha=0.08)
            else:
                axes.axvline(0.2, color="green", lw=0.8, ls=":", label="20% (the issue's bar)")
            axes.set(xlabel=title, ylabel="final val loss", title="loss vs balance" + (f" ({group})" if group else ""))
            axes.legend(fontsize=7)
            axes.grid(alpha=0.3)
    return _save(figure, path) if drawn else None


def long_context(spec: SweepSpec, table: SweepTable, path: Path) -> Path | None:
    """Validation loss by position (state carried across training windows), mean over seeds per row."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    drawn, train_length = False, None
    for row, color in zip(table.rows, colors(len(table.rows))):
        curves = []
        for run in table.runs_of(row["label"]):
            measured = (read_json(Path(run["run_dir"]) / FINAL_METRICS) or {}).get("long_context")
            if measured and measured.get("bucket_loss"):
                curves.append(measured)
        if not curves:
            continue
        first = curves[0]
        width, starts = first["bucket_width"], first["bucket_start"]
        centers = [s + width / 2 for s in starts]
        losses = [statistics.fmean(c["bucket_loss"][i] for c in curves) for i in range(len(starts))]
        axes.plot(centers, losses, "o-", color=color, ms=3, label=f"{row['label']} (n={len(curves)})")
        train_length = first.get("train_length")
        drawn = True
    if not drawn:
        return None
    if train_length:
        axes.axvline(train_length, color="grey", ls="--", lw=0.8, label=f"training length {train_length}")
    axes.set(xlabel="position (tokens, state carried)", ylabel="val loss", title=f"{spec.name}: loss by position")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_all(spec: SweepSpec, table: SweepTable, results_dir: Path) -> list[Path]:
    folder = Path(results_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    made = [loss_curves(spec, table, folder / "val_loss.png"),
            balance_curves(spec, table, folder / "balance.png"),
            pareto(spec, table, folder / "pareto.png"),
            long_context(spec, table, folder / "long_context.png")]
    return [p for p in made if p is not None]
