"""Training curves (groundthink/diagnostics/curves.py, ``groundthink plot``), diagnose's balance-over-training
plot from the step log, the ETA total of diagnose, and the terminal tables within 100 columns."""
import shutil

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from groundthink.cli.eval import result_text
from groundthink.cli.main import main
from groundthink.diagnostics import plots
from groundthink.diagnostics.analyses import ANALYSES
from groundthink.diagnostics.curves import panels_for, save_run_curves
from groundthink.diagnostics.probe import DiagnoseOptions, Probe
from groundthink.diagnostics.report import balance_metrics, format_table, planned_tokens, run_with_progress
from groundthink.diagnostics.runlog import RunLog
from groundthink.diagnostics.suites import SUITES, SuiteResult
from groundthink.experiments.results import SweepTable, terminal_table
from groundthink.models.registry import get_model
from groundthink.progress import Progress, count_model_tokens
from groundthink.training.trainer import Trainer
from training_utils import TINY_MODEL, tiny_config


def assert_drawn(path, min_colors: int = 3):
    """A PNG matplotlib reads back, with lines on it (not one flat colour)."""
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    pixels = image[..., :3].reshape(-1, 3)
    assert pixels.std() > 0.05 and len(np.unique(np.round(pixels, 2), axis=0)) >= min_colors


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short trainer runs (different seeds) in one folder, as a sweep lays them out."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in (0, 1):
        Trainer(tiny_config(steps=8, eval_every=4, log_every=2, seed=seed), root / "GF-MH" / f"seed{seed}").fit()
    return root


def test_curves_of_a_run_show_every_logged_quantity(runs, tmp_path):
    run = runs / "GF-MH" / "seed0"
    path = save_run_curves(run)
    assert path == run / "curves.png"
    assert_drawn(path)
    titles = [panel.title for panel in panels_for([RunLog.read(run / "metrics.jsonl")])]
    for expected in ("loss", "learning rate", "grad norm", "grad_ratio", "gate_rwkv", "activation variance",
                     "recall accuracy"):
        assert any(t.startswith(expected) for t in titles), (expected, titles)


def test_plot_overlays_runs_and_expands_a_sweep_folder(runs, tmp_path, capsys):
    out = tmp_path / "two.png"
    assert main(["plot", str(runs / "GF-MH" / "seed0"), str(runs / "GF-MH" / "seed1"), "--out", str(out)]) == 0
    assert_drawn(out, min_colors=4)
    assert "(2 runs)" in capsys.readouterr().out
    assert main(["plot", str(runs)]) == 0                       # the sweep folder: both runs under it
    assert "(2 runs)" in capsys.readouterr().out
    assert_drawn(runs / "curves.png")
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert main(["plot", str(tmp_path)]) == 2                    # a folder without runs
    assert "holds no run" in capsys.readouterr().err


def test_a_plot_that_cannot_be_written_is_a_warning(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "GF-MH" / "seed0", run)
    (run / "curves.png").unlink(missing_ok=True)
    (run / "curves.png").mkdir()                                 # the PNG cannot be saved there
    warnings = []
    assert save_run_curves(run, warn=warnings.append) is None
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: no training curves for {run}")
    assert save_run_curves(tmp_path / "empty") is None           # nothing logged: nothing drawn, no error


def test_balance_over_training_uses_the_step_log(tmp_path):
    records = [{"kind": "train", "step": s, "loss": 4.0 - 0.1 * s, "grad_norm": 1.0 + 0.01 * s, "lr": 1e-3}
               for s in range(1, 21)]
    records.append({"kind": "eval", "step": 20, "val_loss": 2.5, "grad_ratio": 1.2, "gate_rwkv": 0.4})
    path = plots.training_balance(RunLog(records), tmp_path / "balance.png")
    assert_drawn(path)
    only_steps = plots.training_balance(RunLog(records[:-1]), tmp_path / "steps.png")  # no evaluation yet
    assert only_steps is not None
    assert_drawn(only_steps)


def test_diagnose_progress_total_is_the_work_done():
    """The ETA's total: planned_tokens matches the tokens the suites feed the model (the overfit check,
    which may stop early, is taken off as it does)."""
    torch.manual_seed(0)
    model = get_model("GF-MH", vocab_size=24, **TINY_MODEL).eval()
    tokens = torch.randint(0, 24, (3000,))
    options = DiagnoseOptions(seq_len=16, batch_size=4, train_steps=3, overfit_steps=60, overfit_seq_len=16)
    probe = Probe(model, tokens, options=options)
    progress = Progress(planned_tokens(probe), "d", unit="tok", quiet=True)
    with count_model_tokens(model, progress):
        run_with_progress(probe, SUITES + ANALYSES, progress)
        balance_metrics(probe)
    assert progress.n == pytest.approx(progress.total)


# ---- tables within 100 columns -------------------------------------------------------------------------

def test_diagnose_table_wraps_to_100_columns():
    results = [SuiteResult("S4", "state persistence", "WARN", 1.0, "err 1.98e-06, var ratio 283, " * 3,
                           "err PASS [0, 0.001]; WARN (0.001, 0.01]; R/M state var PASS [0.01, 100], else WARN"),
               SuiteResult("G1", "forward", "PASS", 1.0, "loss 3.62", "finite loss")]
    lines = format_table(results).splitlines()
    assert max(len(line) for line in lines) <= 100
    value, threshold = lines[0].index("value"), lines[0].index("threshold")
    s4 = lines[2:-1]                                             # S4 and its continuation lines
    assert len(s4) > 1 and lines[-1].split() == ["G1", "forward", "PASS", "loss", "3.62", "finite", "loss"]
    assert " ".join(line[value:threshold].strip() for line in s4) == results[0].value_text.strip()
    assert " ".join(line[threshold:].strip() for line in s4 if line[threshold:].strip()) == results[0].threshold


def test_sweep_terminal_table_and_eval_line_fit_100_columns():
    row = {"label": "interventions/" + "very-long-variant-name-" * 3 + "GF-MH", "n": 3, "runs": 3}
    for metric in ("final_val_loss", "grad_ratio", "gate_rwkv", "ablation_share_mamba", "tok_per_s"):
        row[f"{metric}_mean"], row[f"{metric}_std"] = (12345.6, 123.4) if metric == "tok_per_s" else (0.4567, 0.0123)
    table = terminal_table(SweepTable(runs=[], rows=[row, {**row, "label": "GPT2"}]))
    assert max(len(line) for line in table.splitlines()) <= 100
    assert table.splitlines()[2].startswith("interventions/very") and "~" in table.splitlines()[2]
    assert table.splitlines()[3].startswith("GPT2 ")
    result = {"run_dir": "runs/" + "x" * 40, "checkpoint": "step_0001000", "step": 1000, "data": "shakespeare",
              "windows": 1742, "seq_len": 64, "val_loss": 1.5, "val_ppl": 4.48, "recall_acc": 0.5}
    text = result_text(result)
    assert max(len(line) for line in text.splitlines()) <= 100 and "step_0001000: val loss 1.5000" in text
    assert text.count("\n") == 2                                       # a long folder on its own line
    assert result_text({**result, "run_dir": "r"}).count("\n") == 1   # the numbers beside a short one
    without_task = {k: v for k, v in result.items() if k != "recall_acc"}
    assert "\n" not in result_text({**without_task, "run_dir": "r"})  # one line when it fits
