"""Training curves from ``metrics.jsonl``: train and val loss, learning rate, grad norm and every balance
metric the run logged, over steps; one run (``RUN_DIR/curves.png`` after ``groundthink train``) or several
overlaid (``groundthink plot``). Drawn on matplotlib's Agg canvas through ``Figure`` (no pyplot, no global
backend).

Panels appear only for what at least one run logged: train records (``kind: train``) give the step-by-step
lines, eval records (``kind: eval``) the points every ``eval_every`` steps (drawn with markers, so a short
run's single evaluation still shows).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from groundthink.data.files import read_json
from groundthink.diagnostics import thresholds as T
from groundthink.diagnostics.runlog import RunLog

CURVES = "curves.png"


@dataclass(frozen=True)
class Line:
    kind: str                 # train | eval
    key: str                  # a logged key; "act_var_ratio" is act_var_rwkv / act_var_mamba
    label: str

    def series(self, log: RunLog) -> tuple[list[float], list[float]]:
        if self.key == "act_var_ratio":
            return log.ratio_series("act_var_rwkv", "act_var_mamba", kind=self.kind)
        return log.series(self.key, kind=self.kind)


@dataclass(frozen=True)
class Panel:
    title: str
    lines: tuple[Line, ...]
    log_scale: bool = False
    band: tuple[float, float] | None = None   # a PASS band drawn behind the lines

    def drawn(self, logs: list[RunLog]) -> bool:
        return any(line.series(log)[0] for line in self.lines for log in logs)


# The panels in order; any other number a run logged gets a panel of its own after them.
PANELS = (
    Panel("loss", (Line("train", "loss", "train"), Line("eval", "val_loss", "val"),
                   Line("eval", "train_eval_loss", "train split (eval)"))),
    Panel("learning rate", (Line("train", "lr", "lr"),)),
    Panel("grad norm (before clipping)", (Line("train", "grad_norm", "grad norm"),), log_scale=True),
    Panel("grad_ratio  ||grad rwkv|| / ||grad mamba||", (Line("eval", "grad_ratio", "grad_ratio"),),
          log_scale=True, band=(T.G4_GRAD_RATIO.pass_lo, T.G4_GRAD_RATIO.pass_hi)),
    Panel("gate_rwkv (RWKV share of the fusion)", (Line("eval", "gate_rwkv", "gate_rwkv"),)),
    Panel("activation variance ratio (RWKV / Mamba)", (Line("eval", "act_var_ratio", "act var R/M"),),
          log_scale=True),
    Panel("recall accuracy", (Line("eval", "recall_acc", "recall_acc"),)),
    Panel("throughput (tok/s)", (Line("train", "tok_per_s", "tok/s"),)),
)
# Logged numbers that are no curve of their own: counters, and what a panel above already shows.
NOT_PLOTTED = {"tokens", "elapsed_s", "val_ppl", "act_var_rwkv", "act_var_mamba"}
STYLES = {"train": {"lw": 1.0}, "eval": {"ls": "--", "marker": "o", "ms": 3.5, "lw": 1.0}}


def panels_for(logs: list[RunLog]) -> list[Panel]:
    """The panels with something to draw, then one per further number any run logged."""
    chosen = [panel for panel in PANELS if panel.drawn(logs)]
    known = NOT_PLOTTED | {line.key for panel in PANELS for line in panel.lines}
    for kind in ("eval", "train"):
        for key in dict.fromkeys(k for log in logs for k in log.numeric_keys(kind)):
            if key not in known:
                known.add(key)
                chosen.append(Panel(f"{key} ({kind})", (Line(kind, key, key),)))
    return chosen


def _colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def draw_panel(axes, panel: Panel, runs: list[tuple[str, RunLog]], colors: list) -> None:
    overlay = len(runs) > 1
    for (label, log), color in zip(runs, colors):
        for index, line in enumerate(panel.lines):
            steps, values = line.series(log)
            if not steps:
                continue
            style = dict(STYLES[line.kind], **({"alpha": 0.85} if overlay else {}))
            if len(steps) == 1:
                style.setdefault("marker", "o")  # one point: no line to see without a marker
            axes.plot(steps, values, color=color if overlay else f"C{index}", label=label if overlay else line.label,
                      **style)
    if panel.band is not None:
        axes.axhspan(*panel.band, color="green", alpha=0.10, label=None if overlay else "G4 PASS")
    finite = [v for line in panel.lines for _, log in runs for v in line.series(log)[1] if math.isfinite(v)]
    span = finite + list(panel.band or ())
    if panel.log_scale and finite and min(span) > 0 and max(span) >= 10 * min(span):  # a decade or more
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        axes.set_yscale("log")
        few_decades = max(span) < 1000 * min(span)
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if few_decades else (1.0,)))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_title(panel.title, fontsize="medium")
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    if not overlay and len(axes.get_legend_handles_labels()[0]) > 1:
        axes.legend(fontsize="small")


def plot_curves(runs: list[tuple[str, RunLog]], path, title: str | None = None) -> Path | None:
    """Draw ``runs`` (label, log) into ``path``; None (nothing written) when no run logged a number."""
    # matplotlib is imported here, not at the top, so that save_run_curves turns even a broken install
    # into a warning (the trainer's command imports this module before it trains).
    from matplotlib.figure import Figure

    logs = [log for _, log in runs]
    chosen = panels_for(logs)
    if not chosen:
        return None
    columns = 2 if len(chosen) > 1 else 1
    rows = math.ceil(len(chosen) / columns)
    legend_rows = math.ceil((len(runs) + 2) / 4) if len(runs) > 1 else 0
    figure = Figure(figsize=(6.2 * columns, 2.9 * rows + 0.3 + 0.17 * legend_rows))
    colors = _colors(len(runs))
    last_step = max((r["step"] for log in logs for r in log.records), default=1)
    for index, panel in enumerate(chosen):
        axes = figure.add_subplot(rows, columns, index + 1)
        draw_panel(axes, panel, runs, colors)
        axes.set_xlim(0, last_step * 1.02)  # the same steps in every panel: eval points line up with the rest
    if len(runs) > 1:  # one legend for all panels: the run colours, then what the line styles mean
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, lw=2) for c in colors]
        handles += [Line2D([], [], color="grey", **STYLES["train"]), Line2D([], [], color="grey", **STYLES["eval"])]
        figure.legend(handles, [label for label, _ in runs] + ["train (every log step)", "eval"],
                      loc="upper center", bbox_to_anchor=(0.5, 1 - 0.3 / figure.get_figheight()),
                      ncol=min(4, len(runs) + 2), fontsize="small", frameon=False)
    figure.suptitle(title or (runs[0][0] if len(runs) == 1 else f"{len(runs)} runs"), y=0.995)
    top = 1 - (0.3 + 0.17 * legend_rows) / figure.get_figheight()  # room for the title and the legend
    figure.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def run_label(run_dir) -> str:
    """A sweep run's row label and seed; else the model key and the run folder's name."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "sweep_run.json")
    if meta and meta.get("label") is not None:
        return f"{meta['label']} seed {meta.get('seed')}"
    key = (read_json(run_dir / "summary.json") or {}).get("model")
    if key is None:
        key = model_key(run_dir)
    name = run_dir.resolve().name
    return name if key is None or key in name else f"{key} ({name})"


def model_key(run_dir: Path) -> str | None:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        return config["model"]["key"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):  # a label is a nicety: none then
        return None


def save_run_curves(run_dir, warn=None) -> Path | None:
    """``RUN_DIR/curves.png`` of a finished (or stopped) run. Never raises: a plot that cannot be drawn is
    a warning (on stderr, or through ``warn``), never a failed training command."""
    try:
        run_dir = Path(run_dir)
        return plot_curves([(run_label(run_dir), RunLog.read(run_dir / "metrics.jsonl"))], run_dir / CURVES)
    except Exception as err:  # noqa: BLE001 - see the docstring
        message = f"warning: no training curves for {run_dir} ({type(err).__name__}: {err})"
        (warn or (lambda text: print(text, file=sys.stderr, flush=True)))(message)
        return None
