"""``groundthink diagnose`` end to end: a tiny run from the real trainer on CPU, then its diagnosis."""
import json
import os
from pathlib import Path

import pytest

from groundthink.cli.main import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
TINY_RUN = ["--steps", "20", "--batch-size", "8", "--seq-len", "32", "--device", "cpu",
            "--set", "train.eval_every=10", "--set", "train.log_every=5", "--set", "train.eval_windows=8",
            "--set", "train.progress=false", "--set", "train.tensorboard=false",
            "--set", "model.hidden_size=32", "--set", "model.n_layers=2", "--set", "model.mamba_head_dim=16"]
QUICK = ["--train-steps", "4", "--overfit-steps", "10", "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 20-step GF-MH run of the real trainer on Tiny Shakespeare (its token cache in a temporary folder)."""
    if not DATA.is_file():
        pytest.skip(f"{DATA} not found (the shared data folder sits beside the repository)")
    saved = os.environ.get("GROUNDTHINK_CACHE")
    os.environ["GROUNDTHINK_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    run_dir = tmp_path_factory.mktemp("runs") / "gf-mh"
    assert main(["train", "--data", str(DATA), "--out", str(run_dir), *TINY_RUN]) == 0
    yield run_dir
    if saved is None:
        os.environ.pop("GROUNDTHINK_CACHE", None)
    else:
        os.environ["GROUNDTHINK_CACHE"] = saved


def test_diagnose_a_trainer_run_end_to_end(trained_run, capsys):
    run_dir = trained_run
    capsys.readouterr()
    assert main(["diagnose", str(run_dir), *QUICK]) == 0
    printed = capsys.readouterr().out
    for suite_id in ("S0", "S1", "S2", "S3", "S4", "G1", "G2", "G3", "G4", "D1", "D2", "D3", "D4", "LC", "RLD"):
        assert f"\n{suite_id} " in printed, suite_id
    out = run_dir / "diagnostics" / "step_0000020"
    assert f"report: {out / 'report.md'}" in printed
    result = json.loads((out / "diagnosis.json").read_text())
    status = {r["id"]: r["status"] for r in result["results"]}
    assert status["RLD"] == "PASS"                        # the checkpoint reloads bit-identically
    g3 = next(r for r in result["results"] if r["id"] == "G3")
    assert "run's log" in g3["detail"]                    # G3 judged the trainer's own training
    assert result["info"]["data"]["seq_len"] == 32        # the run's training length
    assert (out / "training_balance.png").stat().st_size > 0  # drawn from the run's metrics.jsonl


def test_diagnose_a_checkpoint_folder_with_other_data(trained_run, tmp_path, capsys):
    run_dir = trained_run
    text = tmp_path / "other.txt"
    text.write_text(DATA.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    out = tmp_path / "report"
    assert main(["diagnose", str(run_dir / "checkpoints" / "step_0000010"), "--data", str(text),
                 "--out", str(out), *QUICK, "--overfit-steps", "0"]) == 0
    assert "(step 10)" in capsys.readouterr().out
    assert (out / "report.md").is_file()


@pytest.mark.parametrize("argv, message", [
    (["diagnose", "/nonexistent/run"], "neither a run folder"),
    (["diagnose", "RUN", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["diagnose", "RUN", "--seq-len", "x"], "--seq-len must be an integer"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, trained_run, capsys):
    argv = [str(trained_run) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
