"""Checkpoints: atomic layout, pointers, pruning, safe loading, load_run, and SIGKILL at random moments."""
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from groundthink.errors import UserError
from groundthink.models import get_model
from groundthink.training import Trainer, load_run
from groundthink.training import checkpoint as ckpt
from groundthink.training.logging import read_metrics
from training_utils import TINY_FLAGS, TINY_MODEL, cli, cli_env, tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def tiny_model():
    return get_model("GF-MH", vocab_size=40, **TINY_MODEL)


def test_save_point_prune_keeps_last_k_and_best(tmp_path):
    model = tiny_model()
    for step in range(1, 6):
        path = ckpt.save_checkpoint(tmp_path, step, model, {"step": step}, {"model": "GF-MH"})
        ckpt.set_pointer(tmp_path, "latest", path)
        if step == 2:
            ckpt.set_pointer(tmp_path, "best", path)
        ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000002", "step_0000004", "step_0000005"]
    assert ckpt.read_pointer(tmp_path, "best").name == "step_0000002"
    assert ckpt.read_pointer(tmp_path, "latest").name == "step_0000005"
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary or trash folders left
    weights = load_file(str(tmp_path / "checkpoints" / "step_0000005" / ckpt.WEIGHTS))
    assert "head.weight" not in weights or "embed.weight" not in weights  # the tied matrix is stored once
    fresh = tiny_model()
    ckpt.load_weights(fresh, tmp_path / "checkpoints" / "step_0000005")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_trainer_state_never_unpickles_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = ckpt.save_checkpoint(tmp_path, 1, tiny_model(), {"step": 1}, {})
    torch.save({"step": 1, "payload": Exploit()}, path / ckpt.STATE)
    with pytest.raises(UserError, match="unreadable"):
        ckpt.load_state(path)
    assert not marker.exists()


def test_weights_of_another_model_are_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, tiny_model(), {"step": 1}, {})
    other = get_model("HGF", vocab_size=40, **TINY_MODEL)
    with pytest.raises(UserError, match="another model") as err:
        ckpt.load_weights(other, path)
    assert "\n" not in str(err.value)


def test_load_run_from_a_run_folder_or_a_checkpoint_folder(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(steps=10, eval_every=5), run)
    trainer.fit()
    best = load_run(run)
    last = load_run(run, which="last")
    assert last.step == 10 and best.step == trainer.best_step and best.run_dir == run
    assert not last.model.training and next(last.model.parameters()).device.type == "cpu"
    assert all(torch.equal(a, b.cpu()) for a, b in zip(last.model.state_dict().values(),
                                                       trainer.model.state_dict().values()))
    assert last.tokenizer.decode(last.tokenizer.encode("a1b2|b2a1\n")) == "a1b2|b2a1\n"
    assert last.config.model.key == "GF-MH" and last.config.model.settings["vocab_size"] == last.tokenizer.vocab_size
    direct = load_run(run / "checkpoints" / "step_0000005")
    assert direct.step == 5 and direct.run_dir == run
    for bad in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(UserError, match="neither a run folder"):
            load_run(bad)
    with pytest.raises(UserError, match="best' or 'last"):
        load_run(run, which="newest")


def assert_every_checkpoint_readable(run: Path):
    folder = run / "checkpoints"
    for path in folder.glob("step_*"):
        assert ckpt.is_complete(path), path
        load_file(str(path / ckpt.WEIGHTS))
        assert ckpt.load_state(path)["step"] == int(path.name.split("_")[1])
    for which in ckpt.POINTERS:
        if (folder / which).exists():
            assert ckpt.read_pointer(run, which) is not None, which


def count_train_lines(run: Path) -> int:
    return sum(1 for r in read_metrics(run) if r.get("kind") == "train")


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path):
    flags = ["--steps", "60", "--batch-size", "4", "--seq-len", "16", *TINY_FLAGS, "--set", "train.eval_every=6",
             "--set", "train.log_every=1", "--set", "train.keep_last=2"]
    cache = tmp_path / "cache"
    reference = cli("train", *flags, "--out", tmp_path / "reference", cache=cache)
    assert reference.returncode == 0, reference.stderr
    run, rng, kills = tmp_path / "killed", random.Random(1234), 0
    while True:
        resume = bool(ckpt.list_checkpoints(run))
        args = ["--resume", run] if resume else ["--out", run]
        proc = subprocess.Popen([sys.executable, "-m", "groundthink", "train", *map(str, flags), *map(str, args)],
                                env=cli_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 4:
            # Kill a random moment into the training: after 1-15 more logged steps, plus a fraction of a step.
            target = (count_train_lines(run) if resume else 0) + rng.randint(1, 15)
            deadline = time.time() + 120
            while proc.poll() is None and count_train_lines(run) < target and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.kill()
                kills += 1
        _, stderr = proc.communicate(timeout=120)
        assert_every_checkpoint_readable(run)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, stderr
    assert kills == 4
    steps = [r["step"] for r in read_metrics(run) if r["kind"] == "train"]
    assert steps == list(range(1, 61))  # the log has no gaps and no duplicates
    a = load_file(str(ckpt.read_pointer(tmp_path / "reference", "latest") / ckpt.WEIGHTS))
    b = load_file(str(ckpt.read_pointer(run, "latest") / ckpt.WEIGHTS))
    assert ckpt.read_pointer(run, "latest").name == "step_0000060"
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_bpe_run_reloads_with_its_tokenizer(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The cat sat on the mat. The dog sat on the log. " * 200)
    config = tiny_config(steps=2, eval_every=2, data={"source": str(text), "tokenizer": "bpe", "vocab_size": 300})
    Trainer(config, tmp_path / "run").fit()
    run = load_run(tmp_path / "run")
    assert run.tokenizer.kind == "bpe" and run.tokenizer.vocab_size == run.model.config.vocab_size <= 300
    ids = run.tokenizer.encode("The dog sat on the mat.")
    assert run.tokenizer.decode(ids) == "The dog sat on the mat." and len(ids) < 23
    logits = run.model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), run.tokenizer.vocab_size)
