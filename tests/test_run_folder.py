"""The run folder under faults: every damaged checkpoint file, a second writer, a folder that is not a run,
a full disk. Each is one line or a correct fallback, and nothing already saved is lost."""
from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from groundthink.cli.main import main
from groundthink.training import checkpoint as ckpt
from training_utils import TINY_FLAGS

FAST = ["--steps", "6", "--batch-size", "4", "--seq-len", "16", *TINY_FLAGS, "--set", "train.eval_every=3",
        "--set", "train.progress=false"]
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def run(capsys, *args):
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *args, match: str) -> str:
    code, out, err = run(capsys, *args)
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], (out, err)
    return lines[0]


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 6-step run: checkpoints at steps 3 and 6 (``latest`` and ``best`` at 6)."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROUNDTHINK_CACHE", str(folder / "cache"))
        assert main(["train", *FAST, "--out", str(folder / "run")]) == 0
    return folder / "run"


def copy_of(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


# ---- damaged checkpoints -------------------------------------------------------------------------------

def damage(path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00not a file we wrote\xff" * 40)
    elif how == "nan":
        tensors = load_file(str(path))
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        save_file(tensors, str(path))


CASES = [(ckpt.WEIGHTS, how) for how in ("truncated", "empty", "garbage", "nan")] + \
        [(ckpt.STATE, how) for how in ("truncated", "empty", "garbage")] + [(ckpt.META, "garbage")]


@pytest.mark.parametrize("name,how", CASES)
def test_every_command_uses_the_newest_intact_checkpoint_and_deletes_nothing(trained, tmp_path, capsys, name, how):
    folder = copy_of(trained, tmp_path)
    newest = folder / "checkpoints" / "step_0000006"
    damage(newest / name, how)
    before = snapshot(newest)
    reads_state = name == ckpt.STATE  # eval / generate / export / diagnose need the weights only
    fallback = not reads_state
    code, out, err = run(capsys, "eval", folder, "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == (3 if fallback else 6)
    assert ("step_0000006 is damaged" in err) == fallback
    code, out, err = run(capsys, "generate", folder, "--max-new-tokens", "4", "--device", "cpu")
    assert code == 0, err
    if HAS_TRANSFORMERS:
        code, out, err = run(capsys, "export", folder, tmp_path / "hf")
        assert code == 0, err
    code, out, err = run(capsys, "train", "--resume", folder, "--steps", "8")
    assert code == 0, err
    assert "step_0000006 is damaged" in err and err.count("warning:") == 1
    assert "resumed at step 3" in out
    assert ckpt.read_pointer(folder, "latest").name == "step_0000008"
    # The damaged checkpoint was never deleted: the resumed run's step 6 moved it aside, whole.
    kept = [p for p in (folder / "checkpoints").glob("damaged-step_0000006-*")]
    assert len(kept) == 1 and snapshot(kept[0]) == {kept[0] / p.name: data for p, data in before.items()}


def test_diagnose_falls_back_too(trained, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    damage(folder / "checkpoints" / "step_0000006" / ckpt.WEIGHTS, "truncated")
    code, out, err = run(capsys, "diagnose", folder, "--train-steps", "2", "--out", tmp_path / "diag")
    assert code == 0, err
    assert "step_0000003" in out and "step_0000006 is damaged" in err


def test_with_no_intact_checkpoint_left_every_command_is_one_line(trained, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    for step in ("step_0000003", "step_0000006"):
        damage(folder / "checkpoints" / step / ckpt.WEIGHTS, "empty")
    before = snapshot(folder)
    one_line_error(capsys, "eval", folder, match="has no intact checkpoint")
    one_line_error(capsys, "generate", folder, match="has no intact checkpoint")
    one_line_error(capsys, "train", "--resume", folder, match="no intact checkpoint to resume from")
    one_line_error(capsys, "eval", folder / "checkpoints" / "step_0000006", match="is damaged")
    assert snapshot(folder) == before


# ---- what a run folder may be -------------------------------------------------------------------------

def test_a_new_run_never_writes_into_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "config.yaml.bak").write_text("keep me")
    before = snapshot(folder)
    one_line_error(capsys, "train", *FAST, "--out", folder, match="is not a run folder")
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == ["config.yaml.bak", "notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(capsys, "train", *FAST, "--out", afile, match="is a file, not a folder")
    assert afile.read_text() == "x"


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(trained, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    with open(folder / ".lock", "a+") as held:  # a live writer (this process) holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("process 4242\n")
        held.flush()
        before = {p: d for p, d in snapshot(folder).items() if p.name != ".lock"}
        message = one_line_error(capsys, "train", "--resume", folder, "--steps", "8", match="is in use by")
        assert "process 4242" in message
        assert {p: d for p, d in snapshot(folder).items() if p.name != ".lock"} == before
    # The writer is gone (its lock released with its file), its lock file left behind: taken over.
    assert (folder / ".lock").exists()
    code, out, err = run(capsys, "train", "--resume", folder, "--steps", "8")
    assert code == 0, err
    assert not (folder / ".lock").exists()  # nothing temporary left behind
    assert not list(folder.rglob(".tmp*")) and not list(folder.rglob(".*.tmp*"))


# ---- failed writes and divergence ---------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_the_last_good_checkpoint_is_kept(trained, tmp_path, capsys, monkeypatch):
    folder = copy_of(trained, tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_model", full)
    message = one_line_error(capsys, "train", "--resume", folder, "--steps", "9", match="the disk is full")
    assert "step_0000006 is kept" in message and f"--resume {folder}" in message
    assert ckpt.read_pointer(folder, "latest").name == "step_0000006"
    assert not list((folder / "checkpoints").glob(".tmp-*"))


def test_a_resume_that_diverges_leaves_the_config_as_it_was(trained, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    config = (folder / "config.yaml").read_bytes()
    one_line_error(capsys, "train", "--resume", folder, "--steps", "12", "--set", "train.lr=1e30",
                   "--set", "train.min_lr=0", match="diverged")
    assert (folder / "config.yaml").read_bytes() == config


def test_a_divergence_before_the_first_checkpoint_advises_a_command_that_works(tmp_path, capsys):
    folder = tmp_path / "run"
    message = one_line_error(capsys, "train", *FAST, "--set", "train.lr=1e30", "--set", "train.min_lr=0",
                             "--out", folder, match="no checkpoint had been written yet")
    assert f"--out {folder} --set train.lr=" in message and "--resume" not in message
    code, out, err = run(capsys, "train", *FAST, "--out", folder)
    assert code == 0 and "completed" in out, err


def test_output_paths_that_name_the_wrong_thing_are_one_line_before_any_work(trained, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(capsys, "diagnose", trained, "--out", afile, match="is a file, not a folder")
    one_line_error(capsys, "bench", "--device", "cpu", "--models", "GPT2", "--json", tmp_path,
                   match="is a folder")
    one_line_error(capsys, "bench", "--device", "cpu", "--models", "GPT2", "--json", tmp_path / "no" / "x.json",
                   match="does not exist")
    assert afile.read_text() == "x"
