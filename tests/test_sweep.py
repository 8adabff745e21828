"""The sweep runner end to end on tiny models (CPU): a 2 x 2 sweep writes results whose means and stds are
those of its run folders; a rerun trains nothing; a sweep stopped by SIGTERM (worker processes) resumes to
exactly the numbers of an uninterrupted one; a trained run without its end-of-run measurements is only
measured; a changed spec or a bad one is refused in one line; the shipped sweeps load and the baselines
have equal parameters.
"""
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from groundthink.cli.main import main
from groundthink.data.synthetic import recall_text
from groundthink.errors import UserError
from groundthink.experiments import load_spec, run_sweep
from groundthink.experiments.spec import build_config
from groundthink.models.model import GroundThinkLM
from training_utils import REPO, cli_env

SPEC = """
name: tiny
question: does a 2 x 2 sweep run?
data_root: {root}
base:
  model: {{hidden_size: 32, n_layers: 2, rwkv_heads: 2, mamba_head_dim: 16, mamba_state_size: 16}}
  data: {{source: "{{data_root}}/text.txt"}}
  train: {{steps: 16, batch_size: 4, seq_len: 16, lr: 0.01, log_every: 4, eval_every: 4, eval_windows: 8,
          progress: false, tensorboard: false, device: cpu}}
models: [GF-MH, {{name: GPT2-2L, key: GPT2, set: {{model.n_layers: 2}}}}]
seeds: [0, 1]
measure: {{ablation: true, long_context: 64, long_sequences: 2}}
reference: {{GF-MH: 4.0}}
ratios: [[GF-MH, GPT2-2L]]
"""


def write_spec(folder: Path, text: str = SPEC, name: str = "tiny.yaml") -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "text.txt").exists():
        (data / "text.txt").write_text(recall_text(20000, 0, 2, 8), encoding="utf-8")
    path = folder / name
    path.write_text(text.format(root=data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The 2 x 2 sweep, run once in this process; tests read (and copy) its folder."""
    folder = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROUNDTHINK_CACHE", str(folder / "cache"))
        spec_path = write_spec(folder)
        lines = []
        status = run_sweep(load_spec(spec_path), folder / "out", log=lines.append)
        assert status == 0, lines
        yield spec_path, folder / "out", lines


def summaries(out: Path, label: str) -> list[dict]:
    return [json.loads((out / label / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)]


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_results_are_the_mean_and_std_of_its_run_folders(baseline):
    _, out, lines = baseline
    assert lines[-1] == "4 of 4 runs finished"
    rows = {row["label"]: row for row in read_csv(out / "results.csv")}
    assert list(rows) == ["GF-MH", "GPT2-2L"]
    for label in rows:
        runs = summaries(out, label)
        for metric, values in (("final_val_loss", [r["final"]["val_loss"] for r in runs]),
                               ("best_val_loss", [r["best_val_loss"] for r in runs]),
                               ("tok_per_s", [r["tok_per_s"] for r in runs])):
            assert math.isclose(float(rows[label][f"{metric}_mean"]), statistics.fmean(values), rel_tol=1e-12)
            assert math.isclose(float(rows[label][f"{metric}_std"]), statistics.stdev(values), rel_tol=1e-12)
        assert rows[label]["n"] == "2" and all(r["step"] == 16 and r["status"] == "completed" for r in runs)
    shares = [json.loads((out / "GF-MH" / f"seed{s}" / "final_metrics.json").read_text())["ablation"]
              ["ablation_share_mamba"] for s in (0, 1)]
    assert math.isclose(float(rows["GF-MH"]["ablation_share_mamba_mean"]), statistics.fmean(shares), rel_tol=1e-12)
    gates = [r["final"]["gate_rwkv"] for r in summaries(out, "GF-MH")]
    assert math.isclose(float(rows["GF-MH"]["gate_rwkv_mean"]), statistics.fmean(gates), rel_tol=1e-12)
    assert rows["GPT2-2L"]["ablation_share_mamba_mean"] == "" and rows["GPT2-2L"]["grad_ratio_mean"] == ""
    assert len(read_csv(out / "runs.csv")) == 4
    report = (out / "results.md").read_text()
    final = [r["final"]["val_loss"] for r in summaries(out, "GF-MH")]
    assert f"{statistics.fmean(final):.4f} ± {statistics.stdev(final):.4f}" in report
    assert f"{statistics.fmean(final) - 4.0:+.3f}" in report          # against the reference
    gpt = [r["final"]["val_loss"] for r in summaries(out, "GPT2-2L")]
    ratio = statistics.fmean(a / b for a, b in zip(final, gpt))
    assert f"| GF-MH / GPT2-2L | 2 | {ratio:.4f}" in report
    for name in ("val_loss", "balance", "pareto", "long_context"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    measured = json.loads((out / "GF-MH" / "seed0" / "final_metrics.json").read_text())["long_context"]
    assert measured["length"] == 64 and len(measured["bucket_loss"]) == 8


def test_rerun_skips_finished_runs(baseline, capsys):
    spec_path, out, _ = baseline
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/*.json")}
    lines = []
    assert run_sweep(load_spec(spec_path), out, log=lines.append) == 0
    assert lines[-1] == "4 of 4 runs finished" and not any("seed 0:" in line for line in lines)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/*.json")} == stamps
    assert "training" not in capsys.readouterr().out
    assert main(["sweep", str(spec_path), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("done") >= 4 and "4 done, 0 to do" in listing


def test_a_sweep_stopped_by_sigterm_resumes_to_the_uninterrupted_numbers(baseline, tmp_path):
    """SIGTERM mid-sweep, resume, and get the uninterrupted numbers. The runs are made long enough (96
    steps, ~20x the time to the first checkpoint) that the signal lands mid-run even on a loaded machine:
    with the baseline's 16 steps both runs sometimes finished before it arrived."""
    spec_path, _, _ = baseline
    longer = ["train.steps=96", "train.eval_every=32"]
    reference = tmp_path / "reference"
    assert run_sweep(load_spec(spec_path, only=["GF-MH"], overrides=longer), reference, log=lambda _: None) == 0
    out = tmp_path / "out"
    env = cli_env(Path(os.environ["GROUNDTHINK_CACHE"]))
    sweep = subprocess.Popen([sys.executable, "-m", "groundthink", "sweep", str(spec_path), "--out", str(out),
                              "--only", "GF-MH", "--parallel", "2", *[w for o in longer for w in ("--set", o)]],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    latest = [out / "GF-MH" / f"seed{s}" / "checkpoints" / "latest" for s in (0, 1)]
    deadline = time.time() + 120
    while not any(p.exists() for p in latest) and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    sweep.send_signal(signal.SIGTERM)  # the workers' runs checkpoint and stop; the sweep writes its report
    output = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 128 + signal.SIGTERM, output
    states = [json.loads((out / "GF-MH" / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert any(s["status"] == "interrupted" and s["step"] < 96 for s in states), output
    lines = []
    assert run_sweep(load_spec(spec_path, only=["GF-MH"], overrides=longer), out, log=lines.append) == 0
    assert any("resume from step" in line for line in lines)
    for seed in (0, 1):
        run = out / "GF-MH" / f"seed{seed}"
        done = json.loads((run / "summary.json").read_text())
        expected = json.loads((reference / "GF-MH" / f"seed{seed}" / "summary.json").read_text())
        assert done["status"] == "completed" and done["final"]["val_loss"] == expected["final"]["val_loss"]
        evals = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "eval"]
        assert evals == [32, 64, 96]


def training_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its clock readings (tok/s, elapsed), which no two runs share."""
    timing = ("tok_per_s", "elapsed_s", "eval_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] in ("train", "eval")]


def test_runs_trained_one_after_another_in_one_process_equal_runs_in_their_own_processes(baseline, tmp_path):
    """The baseline trained its four runs in one process (each keeping the kernels and caches the one before
    built); two of them trained again, each in a fresh process, give the same losses and weights, bit for bit."""
    from safetensors.torch import load_file

    spec_path, out, _ = baseline
    env = cli_env(Path(os.environ["GROUNDTHINK_CACHE"]))
    for label, seed in (("GF-MH", 1), ("GPT2-2L", 1)):
        alone = tmp_path / f"{label}-{seed}"
        result = subprocess.run([sys.executable, "-m", "groundthink", "sweep", str(spec_path), "--out", str(alone),
                                 "--only", label, "--seeds", str(seed)], env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        shared, own = out / label / f"seed{seed}", alone / label / f"seed{seed}"
        assert training_records(own) == training_records(shared)
        a = load_file(str(shared / "checkpoints" / "step_0000016" / "model.safetensors"))
        b = load_file(str(own / "checkpoints" / "step_0000016" / "model.safetensors"))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_trained_run_missing_its_measurements_is_only_measured(baseline, tmp_path):
    spec_path, reference, _ = baseline
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    target = out / "GF-MH" / "seed1" / "final_metrics.json"
    expected = json.loads(target.read_text())
    target.unlink()
    summary = (out / "GF-MH" / "seed1" / "summary.json").read_bytes()
    lines = []
    assert run_sweep(load_spec(spec_path), out, log=lines.append) == 0
    assert "[1/1] GF-MH seed 1: measure" in lines
    assert (out / "GF-MH" / "seed1" / "summary.json").read_bytes() == summary
    measured = json.loads(target.read_text())
    assert measured["ablation"] == pytest.approx(expected["ablation"], rel=1e-5)


def test_a_run_measured_from_a_damaged_checkpoint_falls_back_to_an_intact_one(baseline, tmp_path, capfd):
    spec_path, reference, _ = baseline
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    run = out / "GF-MH" / "seed1"
    (run / "final_metrics.json").unlink()  # trained, not yet measured: the sweep reloads its last checkpoint
    newest = sorted((run / "checkpoints").glob("step_*"))[-1]
    (newest / "model.safetensors").write_bytes(b"")
    lines = []
    assert run_sweep(load_spec(spec_path), out, log=lines.append) == 0
    assert "[1/1] GF-MH seed 1: measure" in lines and (run / "final_metrics.json").is_file()
    assert f"checkpoint {newest} is damaged" in capfd.readouterr().err
    assert (newest / "model.safetensors").exists()  # skipped, not deleted


def test_a_time_budget_starts_nothing_it_cannot_finish(baseline, tmp_path):
    spec_path, _, _ = baseline
    lines = []
    assert run_sweep(load_spec(spec_path), tmp_path / "out", time_budget=0.0, log=lines.append) == 0
    assert lines[-1] == "0 of 4 runs finished; 4 left: run the same command again to continue"
    assert not list((tmp_path / "out").glob("*/seed*"))
    assert "- GF-MH seed 0: missing" in (tmp_path / "out" / "results.md").read_text()


def test_a_packed_sweep_reports_the_same_elsewhere(baseline, tmp_path):
    import tarfile

    spec_path, out, _ = baseline
    archive = tmp_path / "packed.tar.gz"
    assert run_sweep(load_spec(spec_path), out, pack=archive, log=lambda line: None) == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert not any("checkpoints" in name for name in names)
        tar.extractall(tmp_path / "elsewhere", filter="data")
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "elsewhere" / "out"), "--report",
                 "--results", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "results.csv").read_text() == (out / "results.csv").read_text()
    assert (tmp_path / "report" / "plots" / "pareto.png").exists()


def test_without_matplotlib_the_tables_are_still_written(baseline, tmp_path, monkeypatch):
    spec_path, out, _ = baseline  # the GPU machines may lack matplotlib: plots are then made elsewhere
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "groundthink.experiments.plots", raising=False)
    lines = []
    assert run_sweep(load_spec(spec_path), out, report_only=True, results_dir=tmp_path, log=lines.append) == 0
    assert any("matplotlib is not installed" in line for line in lines)
    assert (tmp_path / "results.md").exists() and not (tmp_path / "plots").exists()


def test_a_folder_made_by_another_spec_is_refused(baseline, tmp_path):
    spec_path, out, _ = baseline
    with pytest.raises(UserError, match=r"different sweep spec \(train.steps: 16 there, 20 here\)"):
        run_sweep(load_spec(spec_path, overrides=["train.steps=20"]), out)
    foreign = tmp_path / "foreign"
    (foreign / "GF-MH" / "seed0").mkdir(parents=True)
    (foreign / "GF-MH" / "seed0" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not made by groundthink sweep"):
        run_sweep(load_spec(spec_path), foreign)


BAD_SPECS = [
    ("modles: [GF-MH]", "unknown key 'modles' (did you mean 'models'?)"),
    ("models: [GF-XX]", "unknown model 'GF-XX'"),
    ("models: [GF-MH]\nseeds: three", "seeds must be a list"),
    ("models: [GF-MH]\nseeds: [0, -1]", "seeds must be a list of integers >= 0"),
    ("models: [GF-MH, GF-MH]", "model name 'GF-MH' appears twice"),
    ("models: [GF-MH]\nbase: {train: {stepz: 3}}", "run GF-MH seed 0: unknown config key train.stepz"),
    ("models: [GF-MH]\nbase: {train: {steps: many}}", "train.steps must be an integer"),
    ("models: [GF-MH]\nvariants: [{name: a, set: {trainlr: 1}}]", "'set' of a must map section.key"),
    ("models: [GF-MH]\nvariants: [{name: a b}]", "variant name 'a b' must be letters"),
    ("models: [GF-MH]\nreference: {GF: 1.6}", "reference names 'GF', not a row"),
    ("models: [GF-MH]\nmeasure: {ablation: 1}", "measure.ablation must be true or false"),
    ("models: [GF-MH]\ngoal: {grad_ratio: [3, 0.3]}", "goal.grad_ratio must be [low, high]"),
    ("models: [GF-MH]\nratios: [[GF-MH, GPT2]]", "ratios entries are [MODEL, MODEL]"),
    ("models: [GF-MH\n", "is not valid YAML"),
    ("- GF-MH", "must be a mapping"),
    ("models: [GF-MH]\nbase: {data: {source: '{data_root}/missing.txt'}, train: {device: cpu}}",
     "data.source"),
]


@pytest.mark.parametrize("text, message", BAD_SPECS)
def test_a_bad_spec_is_one_line_error(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [(["--parallel", "0"], "--parallel must be at least 1"),
                                            (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
                                            (["--only", "GPT9"], "--only 'GPT9' is not a model"),
                                            (["--set", "train.steps"], "must look like section.key=value")])
def test_bad_flags_are_one_line_errors(baseline, capsys, flags, message):
    spec_path, _, _ = baseline
    assert main(["sweep", str(spec_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def test_the_shipped_sweeps_load():
    names = {path.stem for path in SWEEPS}
    assert names == {"fusion", "extreme-ratios", "baselines", "sequential", "interventions", "long-context",
                     "baby-gpt", "scale-9m", "scale-30m"}
    for path in SWEEPS:
        spec = load_spec(path)
        assert spec.name == path.stem and spec.runs
    fusion = load_spec(REPO / "configs" / "sweeps" / "fusion.yaml")
    assert len(fusion.models) == 12 and fusion.seeds == [0, 1, 2] and set(fusion.reference) == set(fusion.models)
    config = build_config(fusion.runs[0].config, fusion.data_root)
    assert (config.train.steps, config.train.batch_size, config.train.seq_len) == (1000, 32, 64)
    assert config.data.source == "../shared/data/tinyshakespeare.txt"


@pytest.mark.parametrize("vocab", [65, 16000])
def test_baselines_have_equal_parameters(vocab):
    spec = load_spec(REPO / "configs" / "sweeps" / "baselines.yaml", seeds=[0])
    counts = {}
    for run in spec.runs:
        if run.variant == "char":
            model = GroundThinkLM(build_config(run.config, spec.data_root).model_config(vocab))
            counts[run.model] = model.num_params
    for name, count in counts.items():
        assert abs(count / counts["GF-MH"] - 1) < 0.035, (name, count, counts["GF-MH"])


def test_loss_past_training_length_averages_every_bucket_past_it():
    from groundthink.experiments.results import loss_past_training_length

    lc = {"bucket_start": [0, 32, 64, 96, 128, 160], "bucket_width": 32, "train_length": 64,
          "bucket_loss": [2.0, 1.5, 1.4, 1.8, 1.6, 9.9][:6]}
    assert loss_past_training_length(lc) == pytest.approx((1.4 + 1.8 + 1.6 + 9.9) / 4 - 1.5)
    assert loss_past_training_length({}) is None
    assert loss_past_training_length({**lc, "train_length": 48}) is None  # no bucket ends at it
