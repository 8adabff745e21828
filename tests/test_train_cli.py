"""`groundthink train` / `groundthink eval`: flags, presets, bad input (one line, nothing lost), signals."""
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from groundthink.cli.main import main
from groundthink.errors import UserError
from groundthink.training import checkpoint as ckpt
from groundthink.training.config import load_config
from groundthink.training.logging import read_metrics
from training_utils import REPO, TINY_FLAGS, cli_env

FAST = ["--steps", "6", "--batch-size", "4", "--seq-len", "16", *TINY_FLAGS, "--set", "train.eval_every=3",
        "--set", "train.progress=false"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def run_cli(capsys, *args):
    code = main(["train" if args[0] not in ("eval",) else args[0], *map(str, args[1 if args[0] == "eval" else 0:])])
    out, err = capsys.readouterr()
    return code, out, err


def expect_error(capsys, *args, match):
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    return lines[0]


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *FAST, "--out", run)
    assert code == 0, err
    assert "completed: step 6" in out
    return run


# ---- flags and presets ------------------------------------------------------------------------------

def test_flags_both_spellings_and_set_overrides(tmp_path, capsys, trained_run):
    config = load_config(trained_run / "config.yaml")
    assert (config.train.steps, config.train.batch_size, config.train.seq_len) == (6, 4, 16)
    assert config.model.settings["hidden_size"] == 32 and config.model.settings["vocab_size"] > 0
    run = tmp_path / "seed-spelling"
    code, _, err = run_cli(capsys, "--model", "HY", "--steps", "2", "--batch_size", "3", "--seq_len", "8",
                           *TINY_FLAGS, "--set", "train.lr=1e-3", "--set", "train.eval_every=2", "--out", run)
    assert code == 0, err
    config = load_config(run / "config.yaml")
    assert (config.model.key, config.train.batch_size, config.train.seq_len, config.train.lr) == ("HY", 3, 8, 1e-3)
    assert (run / "tokenizer.json").is_file() and (run / "summary.json").is_file()


@pytest.mark.parametrize("preset", ["shakespeare-char.yaml", "wikitext-bpe.yaml", "smoke.yaml"])
def test_presets_load_and_keep_the_seed_conditions(preset):
    config = load_config(REPO / "configs" / preset)
    if preset == "shakespeare-char.yaml":
        assert (config.train.batch_size, config.train.seq_len, config.train.steps) == (32, 64, 1000)
        assert (config.model.settings["hidden_size"], config.model.settings["n_layers"]) == (128, 8)
    if preset == "wikitext-bpe.yaml":
        assert config.data.tokenizer == "bpe" and config.data.vocab_size == 16000
    assert config.train.lr == 3e-4 or preset == "smoke.yaml"


def test_smoke_preset_trains_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--config", REPO / "configs" / "smoke.yaml", "--out", tmp_path / "smoke")
    assert code == 0, err
    assert "completed: step 20" in out


def test_eval_prints_val_loss_and_perplexity(tmp_path, capsys, trained_run):
    code, out, err = run_cli(capsys, "eval", trained_run, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] in (3, 6) and result["val_ppl"] > 1 and 0 <= result["recall_acc"] <= 1
    code, out, _ = run_cli(capsys, "eval", trained_run, "--which", "last")
    assert code == 0 and "step_0000006: val loss" in out and "perplexity" in out
    other = tmp_path / "other.txt"
    other.write_text("a1b2|b2a1\n" * 50)
    code, out, _ = run_cli(capsys, "eval", trained_run, "--data", other, "--json")
    assert code == 0 and json.loads(out)["windows"] == (500 - 1) // 16
    other.write_text("ZZZ unknown characters ZZZ " * 20)
    expect_error(capsys, "eval", trained_run, "--data", other, match="characters")
    expect_error(capsys, "eval", tmp_path / "nowhere", match="neither a run folder")


# ---- bad input: one line, exit 2, nothing saved lost ------------------------------------------------

@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"", "empty"),
    (b"\xff\xfe bad bytes " * 20, "not UTF-8"),
    (b"too short", "fewer than one window"),
])
def test_bad_data(tmp_path, capsys, content, match):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    expect_error(capsys, *FAST, "--data", path, "--out", tmp_path / "run", match=match)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("args, match", [
    (["--model", "GF-XX"], "unknown model 'GF-XX'; valid keys: HY, GF, GF-MH"),
    (["--steps", "0"], "train.steps must be a positive integer"),
    (["--steps", "-5"], "train.steps must be a positive integer"),
    (["--steps", "abc"], "train.steps must be an integer"),
    (["--batch-size", "0"], "train.batch_size must be a positive integer"),
    (["--seq-len", "-1"], "train.seq_len must be a positive integer"),
    (["--set", "train.stepz=5"], "unknown config key train.stepz"),
    (["--set", "train.precision=fp8"], "valid: auto, fp32, bf16"),
    (["--set", "data.tokenizer=words"], "valid: char, bpe"),
    (["--set", "model.fusion=magic"], "model.fusion 'magic' is unknown"),
    (["--set", "nonsense"], "section.key=value"),
    (["--set", "optim.lr=1"], "section one of model, data, train"),
])
def test_bad_flags_and_values(tmp_path, capsys, args, match):
    message = expect_error(capsys, *FAST, *args, "--out", tmp_path / "run", match=match)
    assert "did you mean 'steps'" in message or "stepz" not in message


def test_bad_config_files(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  steps: [1, 2\n")
    expect_error(capsys, "--config", bad_yaml, match="not valid YAML at line")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  learning_rate: 0.1\n")
    expect_error(capsys, "--config", unknown, match="unknown config key train.learning_rate")
    section = tmp_path / "section.yaml"
    section.write_text("optimizer:\n  lr: 0.1\n")
    expect_error(capsys, "--config", section, match="unknown config section 'optimizer'")
    expect_error(capsys, "--config", tmp_path / "missing.yaml", match="not found")


def test_resume_without_a_complete_checkpoint_loses_nothing(tmp_path, capsys):
    expect_error(capsys, "--resume", tmp_path / "nowhere", match="not a run folder")
    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-step_0000003").mkdir(parents=True)  # a write that a crash cut short
    (run / "config.yaml").write_text(load_config(None, []).to_yaml())
    before = snapshot(run)
    expect_error(capsys, "--resume", run, match="no complete checkpoint")
    assert snapshot(run) == before


def test_resume_refuses_another_model(tmp_path, capsys, trained_run):
    before = snapshot(trained_run)
    expect_error(capsys, "--resume", trained_run, "--model", "GPT2", match="trained model 'GF-MH', not 'GPT2'")
    expect_error(capsys, "--resume", trained_run, "--set", "model.hidden_size=64", match="cannot change")
    assert snapshot(trained_run) == before
    # A config.yaml edited to name another model: the checkpoint itself says which model it holds.
    edited = (trained_run / "config.yaml").read_text().replace("key: GF-MH", "key: GF-RH")
    (trained_run / "config.yaml").write_text(edited)
    before = snapshot(trained_run)
    expect_error(capsys, "--resume", trained_run, match="is of model 'GF-MH', not 'GF-RH'")
    assert snapshot(trained_run) == before


def test_new_run_into_an_existing_run_folder_is_refused(tmp_path, capsys, trained_run):
    before = snapshot(trained_run)
    expect_error(capsys, *FAST, "--out", trained_run, match="--resume")
    assert snapshot(trained_run) == before


def test_diverging_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, trained_run):
    before = snapshot(trained_run / "checkpoints")
    message = expect_error(capsys, "--resume", trained_run, "--steps", "12", "--set", "train.lr=1e30",
                           "--set", "train.min_lr=0", match="diverged")
    assert "last good checkpoint" in message and "step_0000006" in message
    assert snapshot(trained_run / "checkpoints") == before
    assert json.loads((trained_run / "summary.json").read_text())["status"] == "diverged"


# ---- signals ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, sig):
    run = tmp_path / "run"
    flags = [*FAST[2:], "--steps", "100000", "--set", "train.eval_every=1000", "--set", "train.log_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "groundthink", "train", *map(str, flags), "--out", str(run)],
                            env=cli_env(tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len([r for r in read_metrics(run) if r.get("kind") == "train"]) < 3 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "interrupted: checkpoint saved at step" in out + err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == sig.name
    latest = ckpt.read_pointer(run, "latest")
    assert latest is not None and int(latest.name.split("_")[1]) == summary["step"] >= 3


# ---- the README's main command ------------------------------------------------------------------------

@pytest.mark.slow
def test_readme_main_command_learns_recall(tmp_path):
    # How long it takes is measured by benchmarks/time_to_result.py (case readme-main), not asserted here.
    result = subprocess.run([sys.executable, "-m", "groundthink", "train"], cwd=tmp_path,
                            env=cli_env(tmp_path / "cache"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs").iterdir())  # the default run folder: runs/GF-MH-recall-TIME
    assert run.name.startswith("GF-MH-recall-")
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
    vocab = json.loads((run / "tokenizer.json").read_text())["chars"]
    assert [e["step"] for e in evals] == [100, 200, 300]
    assert evals[-1]["val_loss"] < math.log(len(vocab)) - 1.2  # from ~3.6 (uniform) to below ~2.4
    assert evals[0]["recall_acc"] < evals[-1]["recall_acc"] and evals[-1]["recall_acc"] > 0.5  # chance: 0.1


def test_a_run_on_a_local_file_resumes_and_evaluates_from_another_directory(tmp_path, capsys, monkeypatch):
    text = tmp_path / "corpus.txt"
    text.write_text("abcab cabba " * 300)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *FAST, "--data", "corpus.txt", "--out", "run")
    assert code == 0, err
    assert load_config(tmp_path / "run" / "config.yaml").data.source == str(text)  # stored absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(capsys, "--resume", "../run", "--data", "../corpus.txt", "--steps", "8")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", "../run", "--json")
    assert code == 0 and json.loads(out)["step"] in (3, 6, 8), err


def test_a_bad_device_name_is_one_line_naming_the_setting():
    from groundthink.devices import resolve_device

    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError, match=r"--device 'gpu0' is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"use --set train.device=cpu$"):
            resolve_device("cuda", "train.device")
