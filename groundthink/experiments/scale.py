"""The scale study's report: the same models in several sweeps of growing size (configs/sweeps/scale-*.yaml),
side by side. Per sweep and model: parameters, val loss, Mamba's ablation share, the gate and the val-loss
ratio to the sweep's GPT-2 (paired by seed); ``scale.csv``, ``scale.md`` and ``scale.png`` (those three
against parameters). Everything is read from the sweep folders, as ``groundthink sweep --report`` does.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from groundthink.experiments.results import SweepTable, collect, mean_std, write_csv
from groundthink.experiments.spec import SweepSpec

COLUMNS = ["sweep", "model", "n", "params", "best_val_loss", "best_val_loss_std", "final_val_loss",
           "ablation_share_mamba", "gate_rwkv", "grad_ratio", "ratio_to_reference", "ratio_to_reference_std"]


def paired_ratio(table: SweepTable, label: str, reference: str, metric: str = "best_val_loss"):
    """Mean and std over seeds of ``metric(label) / metric(reference)``, runs paired by seed."""
    others = {r["seed"]: r for r in table.runs_of(reference)}
    ratios = [run[metric] / others[run["seed"]][metric] for run in table.runs_of(label)
              if run["seed"] in others and run[metric] is not None and others[run["seed"]][metric]]
    return mean_std(ratios)


def scale_rows(sweeps: list[tuple[SweepSpec, Path]], reference: str = "GPT2") -> list[dict]:
    """One row per (sweep, model) with finished runs, in the order the sweeps and their models are given."""
    rows = []
    for spec, out in sweeps:
        table = collect(spec, Path(out))
        for row in table.rows:
            if row["n"] == 0:
                continue
            ratio, ratio_std = (None, None) if row["label"] == reference or reference not in spec.labels \
                else paired_ratio(table, row["label"], reference)
            rows.append({"sweep": spec.name, "model": row["label"], "n": row["n"], "params": row["params_mean"],
                         "best_val_loss": row["best_val_loss_mean"], "best_val_loss_std": row["best_val_loss_std"],
                         "final_val_loss": row["final_val_loss_mean"],
                         "ablation_share_mamba": row["ablation_share_mamba_mean"], "gate_rwkv": row["gate_rwkv_mean"],
                         "grad_ratio": row["grad_ratio_mean"], "ratio_to_reference": ratio,
                         "ratio_to_reference_std": ratio_std})
    return rows


def fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def markdown(rows: list[dict], reference: str) -> str:
    lines = ["# Scale study", "",
             f"Mean over seeds (n finished runs). *best*: each run's lowest val loss; *Mamba share*: the loss "
             f"increase when Mamba is zeroed, as a share of both branches' increases (end of run); *gate*: the "
             f"RWKV share of gated fusions at the final evaluation; */ {reference}*: best val loss over the same "
             f"sweep's {reference} run of the same seed.", "",
             f"| sweep | model | n | params | best val loss | final val loss | Mamba share | gate_rwkv | grad_ratio "
             f"| / {reference} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = fmt(r["best_val_loss"], "{:.4f}") + (f" ± {r['best_val_loss_std']:.4f}" if r["best_val_loss_std"] else "")
        ratio = fmt(r["ratio_to_reference"], "{:.4f}") + (
            f" ± {r['ratio_to_reference_std']:.4f}" if r["ratio_to_reference_std"] else "")
        lines.append(f"| {r['sweep']} | {r['model']} | {r['n']} | {fmt(r['params'], '{:,.0f}')} | {best} | "
                     f"{fmt(r['final_val_loss'], '{:.4f}')} | {fmt(r['ablation_share_mamba'], '{:.1%}')} | "
                     f"{fmt(r['gate_rwkv'], '{:.3f}')} | {fmt(r['grad_ratio'], '{:.3g}')} | {ratio} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, reference: str) -> None:
    panels = (("ablation_share_mamba", "Mamba ablation share"), ("gate_rwkv", "gate_rwkv (RWKV share)"),
              ("ratio_to_reference", f"best val loss / {reference}'s"))
    figure = Figure(figsize=(13, 4), layout="constrained")
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, (key, title) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), i + 1)
        for model in models:
            points = sorted((r["params"], r[key]) for r in rows if r["model"] == model
                            and r[key] is not None and r["params"] is not None)
            if points:
                axes.plot([p / 1e6 for p, _ in points], [v for _, v in points], marker="o", label=model)
        if key == "ratio_to_reference":
            axes.axhline(1.0, color="grey", lw=0.8, ls="--")
        axes.set_xscale("log")
        axes.set_xlabel("parameters (M)")
        axes.set_title(title)
        if axes.lines and i == 0:
            axes.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def write_scale_report(sweeps: list[tuple[SweepSpec, Path]], results_dir: Path, reference: str = "GPT2") -> list[Path]:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    rows = scale_rows(sweeps, reference)
    paths = [results_dir / "scale.csv", results_dir / "scale.md", results_dir / "scale.png"]
    write_csv(paths[0], rows, COLUMNS)
    paths[1].write_text(markdown(rows, reference), encoding="utf-8")
    plot(rows, paths[2], reference)
    return paths

