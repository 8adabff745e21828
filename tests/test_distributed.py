"""Multi-process training on CPU with gloo, launched by torchrun as a user would (training/launch.py,
training/parallel.py).

One reference run (1 process x batch 8) and one 2-rank DDP run (2 x batch 4) are shared by the tests:
the same loss curve and weights; a checkpoint of either resumes with the other number of ranks (FSDP
included) and ends on the reference's weights; a crashed or silent rank ends the job with an error line.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from groundthink.cli.main import build_parser
from groundthink.cli.train import relaunch_argv
from groundthink.data import RandomWindowSampler
from groundthink.errors import UserError
from groundthink.training import launch
from groundthink.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
STEPS, GLOBAL_BATCH = 6, 8
TINY_MODEL = ["--set", "model.hidden_size=32", "--set", "model.n_layers=2", "--set", "model.rwkv_heads=2",
              "--set", "model.mamba_head_dim=16", "--set", "model.mamba_state_size=16"]
# Two micro-batches per step; evals at 3 and 6; checkpoints at 3 (better val loss: a decision rank 0 takes
# alone, then broadcast), 4 (periodic) and 6.
TRAIN = ["--seq-len", "16", "--set", "train.grad_accum=2", "--set", "train.log_every=1", "--set", "train.eval_every=3",
         "--set", "train.save_every=4", "--set", "train.keep_last=5", "--set", "train.eval_windows=8",
         "--set", "train.progress=false", "--set", "train.tensorboard=false"]
# Measured: 2 ranks vs 1 process differ by <= 2.4e-7 in the loss and 3.2e-7 in the weights after these 6 steps
# (summation order of the gradient all-reduce); a one-row shift of the batch changes the first loss by 7e-3.
LOSS_TOL, WEIGHT_TOL = 2e-6, 2e-5


def env(cache: Path, **extra) -> dict:
    environment = dict(os.environ, GROUNDTHINK_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    environment["PYTHONPATH"] = str(REPO) + os.pathsep + environment.get("PYTHONPATH", "")
    return environment


def train(*args, cache: Path, nproc: int = 1, timeout: float = 240, fault: str | None = None,
          **extra_env) -> subprocess.CompletedProcess:
    """``groundthink train ARGS`` in one process, or under torchrun with ``nproc`` processes (``fault``: one of
    them fails as tests/fault_rank.py describes)."""
    launcher = launch.torchrun_command(nproc, []) if nproc > 1 else [sys.executable, "-m", "groundthink"]
    if fault is not None:
        launcher = [*launcher[:-2], str(REPO / "tests" / "fault_rank.py"), fault]
    flags = [*map(str, args), *TRAIN] + ([] if "--resume" in args else TINY_MODEL)
    return subprocess.run([*launcher, "train", *flags], cwd=REPO, env=env(cache, **extra_env),
                          capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def curve(run_dir: Path) -> list[tuple]:
    lines = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(r["kind"], r["step"], r["loss"] if r["kind"] == "train" else r["val_loss"])
            for r in lines if r["kind"] in ("train", "eval")]


def weights(run_dir: Path, step: int = STEPS) -> dict:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))


def assert_same_training(run_dir: Path, reference: Path) -> None:
    got, want = curve(run_dir), curve(reference)
    assert [r[:2] for r in got] == [r[:2] for r in want]
    assert max(abs(a[2] - b[2]) for a, b in zip(got, want)) < LOSS_TOL
    w, ref = weights(run_dir), weights(reference)
    assert w.keys() == ref.keys()
    assert max((w[k] - ref[k]).abs().max().item() for k in ref) < WEIGHT_TOL


def rewind_to(run_dir: Path, step: int, copy_to: Path) -> Path:
    """A copy of a finished run as if it had stopped right after the checkpoint of ``step``."""
    shutil.copytree(run_dir, copy_to)
    for later in (copy_to / "checkpoints").glob("step_*"):
        if int(later.name.split("_")[1]) > step:
            shutil.rmtree(later)
    for pointer in ("latest", "best"):
        (copy_to / "checkpoints" / pointer).write_text(f"step_{step:07d}\n")
    return copy_to


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home", "to", "its"]
    (root / "text.txt").write_text(" ".join(rng.choice(words, size=6000)) + "\n")
    return root


@pytest.fixture(scope="module")
def reference(workdir):
    """1 process x batch 8."""
    run_dir = workdir / "one"
    check(train("--data", workdir / "text.txt", "--steps", STEPS, "--batch-size", GLOBAL_BATCH, "--out", run_dir,
                cache=workdir / "cache"))
    return run_dir


@pytest.fixture(scope="module")
def two_ranks(workdir, reference):
    """2 processes (torchrun, DDP on gloo) x batch 4."""
    run_dir = workdir / "two"
    result = train("--data", workdir / "text.txt", "--steps", STEPS, "--batch-size", GLOBAL_BATCH // 2,
                   "--out", run_dir, cache=workdir / "cache", nproc=2)
    check(result)
    assert "world_size" in (run_dir / "summary.json").read_text()
    return run_dir


# ---- equivalence and resume ------------------------------------------------------------------------

def test_two_ranks_train_like_one_process_with_the_double_batch(reference, two_ranks):
    assert_same_training(two_ranks, reference)
    assert json.loads((two_ranks / "summary.json").read_text())["world_size"] == 2
    assert json.loads((two_ranks / "summary.json").read_text())["tokens_seen"] == STEPS * GLOBAL_BATCH * 2 * 16
    assert sorted(p.name for p in (two_ranks / "checkpoints").glob("step_*")) == \
        ["step_0000003", "step_0000004", "step_0000006"]


ACCUMULATION_PROBE = """
import json, sys
import torch.distributed.algorithms.ddp_comm_hooks.default_hooks as default_hooks
from groundthink.training import launch
from groundthink.training.config import load_config

config = load_config(None, sys.argv[2:])
rounds = []  # the step of every gradient all-reduce (its last bucket)

def main():
    trainer = launch.make_trainer(config, sys.argv[1], resume=False)
    def count(state, bucket):
        if bucket.is_last():
            rounds.append(trainer.step)
        return default_hooks.allreduce_hook(None, bucket)
    trainer.parallel.module.register_comm_hook(None, count)
    for _ in range(3):
        trainer.train_step()
    print(json.dumps(rounds))
    return 0

launch.run_rank(config.train, main)
"""


def test_accumulation_all_reduces_once_per_step(workdir):
    """DDP's all-reduce runs on the last of the 4 micro-batches of a step only (no_sync on the others)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = ["model.hidden_size=32", "model.n_layers=2", "model.rwkv_heads=2", "model.mamba_head_dim=16",
                 "model.mamba_state_size=16", f"data.source={workdir / 'text.txt'}", "train.seq_len=16",
                 "train.batch_size=2", "train.grad_accum=4", "train.device=cpu"]
    result = subprocess.run([sys.executable, "-c", ACCUMULATION_PROBE, str(workdir / "probe"), *overrides], cwd=REPO,
                            env=env(workdir / "cache", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                            capture_output=True, text=True, timeout=120)
    check(result)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, 1, 2]


def test_two_rank_checkpoint_resumes_on_one_process(workdir, reference, two_ranks):
    run_dir = rewind_to(two_ranks, 3, workdir / "two-then-one")
    check(train("--resume", run_dir, "--batch-size", GLOBAL_BATCH, cache=workdir / "cache"))
    assert_same_training(run_dir, reference)


def test_one_process_checkpoint_resumes_on_two_fsdp_ranks_via_nproc(workdir, reference):
    """--nproc relaunches under torchrun; FSDP shards a full checkpoint, trains, gathers a full one."""
    run_dir = rewind_to(reference, 3, workdir / "one-then-fsdp")
    check(train("--resume", run_dir, "--nproc", 2, "--batch-size", GLOBAL_BATCH // 2, "--set", "train.parallel=fsdp",
                cache=workdir / "cache"))
    assert_same_training(run_dir, reference)
    state = torch.load(run_dir / "checkpoints" / f"step_{STEPS:07d}" / "trainer_state.pt", weights_only=True)
    want = torch.load(reference / "checkpoints" / f"step_{STEPS:07d}" / "trainer_state.pt", weights_only=True)
    for index, moments in want["optimizer"]["state"].items():  # full (gathered) AdamW moments, not shards
        for key in ("exp_avg", "exp_avg_sq"):
            assert state["optimizer"]["state"][index][key].shape == moments[key].shape
            scale = moments[key].abs().max().item()
            torch.testing.assert_close(state["optimizer"]["state"][index][key], moments[key], rtol=1e-3,
                                       atol=1e-4 * scale)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ratios = [r["grad_ratio"] for r in evals if r["kind"] == "eval"]
    want_ratios = [json.loads(line).get("grad_ratio") for line in (reference / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["kind"] == "eval"]
    assert ratios == pytest.approx(want_ratios, rel=1e-4)  # from gradient shards, summed over ranks


# ---- failures --------------------------------------------------------------------------------------

def test_a_crashed_rank_ends_the_job_with_its_error(workdir):
    # The collective timeout (an hour) is far past the run's own limit (train's subprocess timeout, which
    # raises): the job can only end through the crash itself.
    result = train("--data", workdir / "text.txt", "--steps", STEPS, "--batch-size", 4, "--out", workdir / "crash",
                   "--set", "train.dist_timeout=3600", cache=workdir / "cache", nproc=2,
                   fault="crash:1:2")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "injected fault: rank 1 crashed at step 2" in output


def test_a_silent_rank_ends_the_job_after_the_timeout(workdir):
    result = train("--data", workdir / "text.txt", "--steps", STEPS, "--batch-size", 4, "--out", workdir / "hang",
                   "--set", "train.dist_timeout=3", cache=workdir / "cache", nproc=2, timeout=150,
                   fault="hang:1:2")
    assert result.returncode != 0
    assert "injected fault: rank 1 hangs at step 2" in result.stderr
    assert "error: rank 0 lost the other ranks at step 2" in result.stderr
    assert "did not answer within train.dist_timeout = 3 s" in result.stderr
    assert "no checkpoint had been written yet" in result.stderr


# ---- pieces, in this process -----------------------------------------------------------------------

def test_ranks_take_interleaved_rows_of_the_single_process_batch():
    tokens = np.arange(1000, dtype=np.uint16)
    single = RandomWindowSampler(tokens, 6, 8, seed=3)
    ranks = [RandomWindowSampler(tokens, 2, 8, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        want = single.next_batch()[0]
        for r, sampler in enumerate(ranks):
            assert torch.equal(sampler.next_batch()[0], want[r::3])
    assert all(torch.equal(s.generator.get_state(), single.generator.get_state()) for s in ranks)


def test_nproc_forwards_every_flag_but_itself():
    args = build_parser().parse_args(["train", "--model", "GF", "--steps", "5", "--batch-size", "4", "--nproc", "2",
                                      "--set", "train.lr=1e-3", "--set", "train.parallel=fsdp", "--data", "x.txt"])
    argv = relaunch_argv(args, Path("runs/x"))
    assert argv == ["train", "--model", "GF", "--steps", "5", "--batch-size", "4", "--data", "x.txt",
                    "--set", "train.lr=1e-3", "--set", "train.parallel=fsdp", "--out", "runs/x"]
    assert build_parser().parse_args(argv).nproc is None


def test_bad_distributed_settings_are_one_line_errors(monkeypatch):
    with pytest.raises(UserError, match="train.parallel 'zero' is unknown; valid: ddp, fsdp"):
        load_config(None, ["train.parallel=zero"])
    with pytest.raises(UserError, match="dist_timeout must be > 0"):
        load_config(None, ["train.dist_timeout=0"])
    with pytest.raises(UserError, match="--nproc must be at least 1"):
        launch.launch(0, ["train"], load_config(None, ["train.device=cpu"]).train)
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="drop --nproc"):
        launch.launch(2, ["train"], load_config(None, ["train.device=cpu"]).train)
    with pytest.raises(UserError, match="cuda:LOCAL_RANK"):
        launch.rank_device("cuda:1", 0)
