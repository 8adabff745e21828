"""PNG plots of a diagnosis (matplotlib's Agg canvas through ``Figure``: no pyplot, no global backend).

Each function draws one figure from plain numbers and returns the path it wrote, or None when there is
nothing to draw (e.g. no gate on a CP or baseline model, no training log without a run folder).
"""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from groundthink.diagnostics import curves
from groundthink.diagnostics import thresholds as T

COLORS = {"rwkv": "#1f77b4", "mamba": "#ff7f0e"}


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _save(figure: Figure, path: Path, top: float = 1.0) -> Path:
    figure.tight_layout(rect=(0, 0, 1, top))  # top < 1: room for a suptitle
    figure.savefig(path, dpi=100)
    return path


def _grouped_bars(axes, groups: list[str], series: dict[str, list[float | None]], log: bool = False):
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        heights = [0.0 if v is None or not math.isfinite(v) else v for v in values]
        axes.bar(xs, heights, width=width, label=name, color=COLORS.get(name))
    axes.set_xticks(range(len(groups)), groups)
    if log and any(v > 0 for values in series.values() for v in _finite(values)):
        axes.set_yscale("log")
    axes.legend()


def gate_share(metrics: dict, path: Path) -> Path | None:
    """``gate_rwkv`` per layer (the share the fusion gives RWKV)."""
    gates = metrics.get("gate_rwkv_per_layer")
    if not gates or not _finite(gates):
        return None
    figure = Figure(figsize=(6, 3.5))
    axes = figure.add_subplot()
    layers = [str(i) for i in range(len(gates))]
    axes.bar(layers, [0.0 if g is None else g for g in gates], color=COLORS["rwkv"], label="RWKV share")
    axes.bar(layers, [0.0 if g is None else 1.0 - g for g in gates],
             bottom=[0.0 if g is None else g for g in gates], color=COLORS["mamba"], label="Mamba share")
    axes.axhline(0.5, color="grey", lw=0.8, ls="--")
    axes.set(ylim=(0, 1), xlabel="layer", ylabel="gate_rwkv", title=f"Gate share per layer (mean {metrics['gate_rwkv']:.2f})")
    axes.legend(loc="upper right")
    return _save(figure, path)


def branch_statistics(metrics: dict, path: Path) -> Path | None:
    """Raw activation variance and final state norm per layer, for each branch (log scale)."""
    panels = [(name, label) for name, label in (("act_var", "activation variance (before RMSNorm)"),
                                                 ("state_norm", "state norm at sequence end"))
              if any(f"{name}_{b}_per_layer" in metrics for b in ("rwkv", "mamba"))]
    if not panels:
        return None
    figure = Figure(figsize=(6, 3.2 * len(panels)))
    for row, (name, label) in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, row + 1)
        series = {b: metrics[f"{name}_{b}_per_layer"] for b in ("rwkv", "mamba") if f"{name}_{b}_per_layer" in metrics}
        count = len(next(iter(series.values())))
        _grouped_bars(axes, [str(i) for i in range(count)], series, log=True)
        axes.set(xlabel="layer", title=label)
    return _save(figure, path)


def ablation(data: dict, path: Path) -> Path | None:
    """Loss increase when one branch is zeroed: in each layer alone, and in all layers."""
    per_layer, overall = data.get("per_layer"), data.get("overall")
    if not per_layer or not overall:
        return None
    groups = [str(i) for i in range(len(per_layer))] + ["all"]
    series = {short: [layer.get(branch) for layer in per_layer] + [overall[branch]]
              for branch, short in (("rwkv6", "rwkv"), ("mamba2", "mamba"))}
    figure = Figure(figsize=(6.5, 3.5))
    axes = figure.add_subplot()
    _grouped_bars(axes, groups, series)
    axes.axhline(0, color="black", lw=0.8)
    axes.set(xlabel="layer zeroed", ylabel="loss increase (nats)", title="Component ablation")
    return _save(figure, path)


def loss_by_position(long_context: dict, evolution: dict | None, path: Path) -> Path | None:
    """Loss per position bucket up to the longest context, and the state norm along the way."""
    if not long_context or "bucket_loss" not in long_context:
        return None
    rows = 2 if evolution and evolution.get("norm_trajectory") else 1
    figure = Figure(figsize=(6.5, 3.2 * rows))
    axes = figure.add_subplot(rows, 1, 1)
    width = long_context["bucket_width"]
    centers = [s + width / 2 for s in long_context["bucket_start"]]
    axes.plot(centers, long_context["bucket_loss"], marker="o")
    axes.axvline(long_context["train_length"], color="grey", ls="--", label="training length")
    axes.set(xlabel="position", ylabel="mean loss (nats)", title="Loss by position (state carried over)")
    axes.legend()
    if rows == 2:
        axes = figure.add_subplot(2, 1, 2)
        for branch, values in evolution["norm_trajectory"].items():
            short = "rwkv" if branch == "rwkv6" else "mamba"
            axes.plot(evolution["positions"], values, marker="o", label=short, color=COLORS[short])
        if any(v > 0 for vs in evolution["norm_trajectory"].values() for v in _finite(vs)):
            axes.set_yscale("log")
        axes.set(xlabel="position", ylabel="state norm (mean over layers)", title="State norm over the sequence")
        axes.legend()
    return _save(figure, path)


# Balance over training: the step log's lines (train loss, grad norm) with the evaluations' points.
BALANCE_PANELS = (
    curves.Panel("loss", (curves.Line("train", "loss", "train (step log)"), curves.Line("eval", "val_loss", "val"))),
    curves.Panel("grad norm (step log, before clipping)", (curves.Line("train", "grad_norm", "grad norm"),),
                 log_scale=True),
    curves.Panel("grad_ratio", (curves.Line("eval", "grad_ratio", "grad_ratio"),), log_scale=True,
                 band=(T.G4_GRAD_RATIO.pass_lo, T.G4_GRAD_RATIO.pass_hi)),
    curves.Panel("gate_rwkv", (curves.Line("eval", "gate_rwkv", "gate_rwkv"),)),
    curves.Panel("activation variance", (curves.Line("eval", "act_var_rwkv", "rwkv"),
                                         curves.Line("eval", "act_var_mamba", "mamba")), log_scale=True),
)


def training_balance(run_log, path: Path) -> Path | None:
    """From the run's metrics.jsonl: train loss and grad norm at every logged step, with the val loss,
    grad_ratio (with G4's band), gate_rwkv and the branches' activation variances at each evaluation."""
    panels = [panel for panel in BALANCE_PANELS if panel.drawn([run_log])]
    if not panels:
        return None
    figure = Figure(figsize=(6.5, 2.6 * len(panels)))
    last_step = max((r["step"] for r in run_log.records), default=1)
    for row, panel in enumerate(panels):
        axes = figure.add_subplot(len(panels), 1, row + 1)
        curves.draw_panel(axes, panel, [("run", run_log)], [None])
        axes.set_xlim(0, last_step * 1.02)
    figure.suptitle("Balance over training")
    return _save(figure, path, top=1 - 0.3 / figure.get_figheight())


def token_types(data: dict, path: Path) -> Path | None:
    """Loss increase per token class when each branch is zeroed."""
    classes = data.get("classes")
    if not classes:
        return None
    names = list(classes)
    figure = Figure(figsize=(7, 3.5))
    axes = figure.add_subplot()
    _grouped_bars(axes, [f"{n}\n(n={classes[n]['count']})" for n in names],
                  {b: [classes[n][f"increase_{b}"] for n in names] for b in ("rwkv", "mamba")})
    axes.axhline(0, color="black", lw=0.8)
    axes.set(ylabel="loss increase (nats)", title="Per-token-type contribution (branch zeroed)")
    return _save(figure, path)


def gradient_coupling(data: dict, path: Path) -> Path | None:
    """Per training step: both branches' gradient norms and the cosine of their output gradients."""
    if not data or not data.get("grad_norm_rwkv"):
        return None
    figure = Figure(figsize=(6.5, 5.5))
    axes = figure.add_subplot(2, 1, 1)
    steps = list(range(len(data["grad_norm_rwkv"])))
    axes.plot(steps, data["grad_norm_rwkv"], label="||grad rwkv6.*||", color=COLORS["rwkv"])
    axes.plot(steps, data["grad_norm_mamba"], label="||grad mamba2.*||", color=COLORS["mamba"])
    axes.set(xlabel="step", ylabel="gradient norm", title="Gradient coupling (short AdamW loop)")
    axes.legend()
    axes = figure.add_subplot(2, 1, 2)
    cosines = data["output_grad_cosine"]
    layers = max((len(c) for c in cosines), default=0)
    for layer in range(layers):
        axes.plot(steps, [c[layer] if layer < len(c) else float("nan") for c in cosines], label=f"layer {layer}")
    axes.set(xlabel="step", ylabel="cos(dL/dr, dL/dm)", ylim=(-1.05, 1.05))
    if layers:
        axes.legend(fontsize="small", ncol=min(4, layers))
    return _save(figure, path)
