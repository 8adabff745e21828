"""The trainer: parameter groups, schedule, exact resume, accumulation, hooks, divergence, learning."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from groundthink.errors import UserError
from groundthink.models import get_model
from groundthink.training import Trainer, TrainerHook, TrainingDiverged
from groundthink.training import checkpoint as ckpt
from groundthink.training.config import load_config
from groundthink.training.logging import read_metrics
from groundthink.training.optim import parameter_groups
from groundthink.training.schedule import PlateauProtocol, lr_at
from training_utils import REPO, SHAKESPEARE, TINY_MODEL, tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def final_weights(run_dir):
    return load_file(str(ckpt.read_pointer(run_dir, "latest") / ckpt.WEIGHTS))


# ---- optimizer groups and schedule ----------------------------------------------------------------

def test_parameter_groups_split_branches_and_exempt_norms_biases_gains_gates():
    model = get_model("GF-MH", vocab_size=40, **TINY_MODEL)
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-3, weight_decay=0.1, mamba_lr_mult=2.0)}
    assert set(groups) == {"rwkv", "rwkv_no_decay", "mamba", "mamba_no_decay", "other", "other_no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    params = dict(model.named_parameters())

    def group(name):
        return next(g for g, members in ids.items() if id(params[name]) in members)

    assert group("layers.0.ffn.up.weight") == "other" and group("embed.weight") == "other"
    assert group("layers.0.rwkv6.k_proj.linear.weight") == "rwkv"
    assert group("layers.0.mamba2.in_proj.weight") == "mamba"
    for name in ("layers.0.norm.weight", "norm_out.weight", "layers.0.fusion.gate_proj.weight",
                 "layers.0.fusion.gate_proj.bias"):
        assert group(name) == "other_no_decay", name
    for name in ("layers.0.mamba2.A_log", "layers.0.mamba2.D", "layers.0.mamba2.dt_bias",
                 "layers.0.mamba2.conv1d.bias"):
        assert group(name) == "mamba_no_decay", name
    assert group("layers.0.rwkv6.x_bias") == "rwkv_no_decay" and group("layers.0.rwkv6.bonus") == "rwkv_no_decay"
    assert groups["mamba"]["lr"] == pytest.approx(2e-3) and groups["rwkv"]["lr"] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("no_decay"))
    assert sum(len(g["params"]) for g in groups.values()) == len(params)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    lrs = [lr_at(s, 1.0, 0.1, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55, abs=0.01)
    assert lrs[99] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_plateau_protocol_reduces_then_stops():
    plateau = PlateauProtocol(steps=100, patience=0.2, factor=0.5, max_reductions=2)
    assert plateau.update(10, 2.0) is None
    assert plateau.update(20, 2.0) is None and plateau.update(30, 2.0) == "reduce" and plateau.scale == 0.5
    assert plateau.update(40, 1.5) is None and plateau.reductions == 0  # an improvement resets the count
    assert plateau.update(60, 1.5) == "reduce" and plateau.update(80, 1.5) == "reduce"
    assert plateau.update(100, 1.5) == "stop"


# ---- exact resume, accumulation, hooks --------------------------------------------------------------

def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    config = tiny_config(steps=20, eval_every=5)
    Trainer(config, tmp_path / "straight").fit()
    first = Trainer(config, tmp_path / "split").fit(until_step=10)
    assert first["status"] == "paused" and ckpt.read_pointer(tmp_path / "split", "latest").name == "step_0000010"
    resumed = Trainer(config, tmp_path / "split", resume=True)
    assert resumed.step == 10
    assert resumed.fit()["status"] == "completed"
    straight, split = train_losses(tmp_path / "straight"), train_losses(tmp_path / "split")
    assert list(straight) == list(range(1, 21)) and straight == split  # exact floats, no duplicated steps
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_after_its_last_step_resumes_to_the_same_summary(tmp_path):
    """SIGTERM can land after the last step's checkpoint: the resume trains nothing and must still report
    the final evaluation (a sweep reads it from summary.json)."""
    config = tiny_config(steps=6, eval_every=3)
    done = Trainer(config, tmp_path / "run").fit()
    again = Trainer(config, tmp_path / "run", resume=True).fit()
    assert again["status"] == "completed" and again["final"] == done["final"]
    assert again["final"]["step"] == 6 and "train_eval_loss" in again["final"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    big = Trainer(tiny_config(steps=2, batch_size=8, eval_every=100), tmp_path / "big")
    small = Trainer(tiny_config(steps=2, batch_size=4, grad_accum=2, eval_every=100), tmp_path / "small")
    big.fit(), small.fit()
    a = [r for r in read_metrics(tmp_path / "big") if r["kind"] == "train"]
    b = [r for r in read_metrics(tmp_path / "small") if r["kind"] == "train"]
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-5)
    assert a[0]["grad_norm"] == pytest.approx(b[0]["grad_norm"], rel=1e-4)
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], rel=1e-4)
    assert a[0]["tokens"] == b[0]["tokens"] == 8 * 16


class CountingHook(TrainerHook):
    """Counts steps (state that must survive a resume) and reports the count at every eval."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer):
        self.steps += 1

    def on_eval(self, trainer, record):
        record["hook_steps"] = self.steps

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class ShrinkGates(TrainerHook):
    """An extra loss term on the fusion gates' bias: pushes every gate towards 0 (all Mamba)."""

    def extra_loss(self, trainer, output):
        return 5.0 * sum(layer.fusion.gate_proj.bias.sum() for layer in trainer.model.layers)


def test_hooks_add_losses_metrics_and_checkpointed_state(tmp_path):
    config = tiny_config(steps=10, eval_every=5)
    Trainer(config, tmp_path / "hooked", hooks=[CountingHook()]).fit(until_step=5)
    hook = CountingHook()
    Trainer(config, tmp_path / "hooked", resume=True, hooks=[hook]).fit()
    evals = [r for r in read_metrics(tmp_path / "hooked") if r["kind"] == "eval"]
    assert [e["hook_steps"] for e in evals] == [5, 10] and hook.steps == 10
    config = tiny_config(steps=10, eval_every=10, lr=3e-2)
    plain = Trainer(config, tmp_path / "plain")
    shrunk = Trainer(config, tmp_path / "shrunk", hooks=[ShrinkGates()])
    plain.fit(), shrunk.fit()
    assert shrunk.last_eval["gate_rwkv"] < plain.last_eval["gate_rwkv"] - 0.03
    assert train_losses(tmp_path / "shrunk")[1] == train_losses(tmp_path / "plain")[1]  # logged: the LM loss


class PoisonAt(TrainerHook):
    def __init__(self, step):
        self.step = step

    def on_step_start(self, trainer):
        if trainer.step == self.step:
            with torch.no_grad():
                trainer.model.norm_out.weight[0] = float("nan")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(steps=20, eval_every=5, log_every=4), run, hooks=[PoisonAt(12)])
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as err:
        trainer.fit()
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)
    assert ckpt.read_pointer(run, "latest").name == "step_0000010"
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_0000005", "step_0000010"]
    weights = final_weights(run)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"


# ---- what gets logged ------------------------------------------------------------------------------

def test_metrics_and_summary(tmp_path):
    run = tmp_path / "run"
    summary = Trainer(tiny_config(steps=10, eval_every=5, log_every=5), run).fit()
    records = read_metrics(run)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [5, 10] and [r["step"] for r in evals] == [5, 10]
    assert {"loss", "lr", "grad_norm", "tok_per_s", "tokens"} <= set(train[0])
    assert {"val_loss", "val_ppl", "grad_ratio", "gate_rwkv", "gate_rwkv_per_layer", "act_var_rwkv",
            "act_var_mamba", "recall_acc"} <= set(evals[0])
    assert len(evals[0]["gate_rwkv_per_layer"]) == 2
    assert evals[0]["val_ppl"] == pytest.approx(math.exp(evals[0]["val_loss"]))
    assert records[-1]["kind"] == "summary" and summary["status"] == "completed"
    saved = json.loads((run / "summary.json").read_text())
    assert saved["best_val_loss"] == min(e["val_loss"] for e in evals) and saved["params"] > 0
    assert saved["tok_per_s"] > 0 and saved["tokens_seen"] == 10 * 4 * 16


def test_a_new_run_never_overwrites_a_run_with_checkpoints(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(steps=5, eval_every=5), run).fit()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="--resume"):
        Trainer(tiny_config(steps=5, eval_every=5), run).fit()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_thirty_steps_on_tiny_shakespeare_lower_the_val_loss(tmp_path):
    if not SHAKESPEARE.is_file():
        pytest.skip("Tiny Shakespeare not found beside the repository")
    config = load_config(REPO / "configs" / "shakespeare-char.yaml", [
        f"data.source={SHAKESPEARE}", "train.steps=30", "train.eval_every=30", "train.eval_windows=64",
        "train.progress=false", "train.tensorboard=false", "model.hidden_size=64", "model.n_layers=4",
        "model.mamba_state_size=16", "train.lr=2e-3", "train.batch_size=16"])
    trainer = Trainer(config, tmp_path / "run")
    initial = trainer.evaluate()["val_loss"]
    assert initial == pytest.approx(math.log(65), abs=0.3)
    trainer.fit()
    assert trainer.last_eval["val_loss"] < initial - 0.8, (initial, trainer.last_eval["val_loss"])


class FlatValLoss(TrainerHook):
    """Reports the same val loss at every eval: a plateau from the second eval on."""

    def on_eval(self, trainer, record):
        record["val_loss"] = 1.0


def test_plateau_protocol_cuts_the_learning_rate_then_stops_the_run(tmp_path):
    # lr == min_lr and no warmup: the schedule is flat, so every change of lr is the protocol's.
    config = tiny_config(steps=40, eval_every=2, plateau=True, plateau_patience=0.1, plateau_factor=0.5,
                         warmup_ratio=0.0, lr=3e-4, min_lr=3e-4)
    summary = Trainer(config, tmp_path / "run", hooks=[FlatValLoss()]).fit()
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"}
    assert lrs[6] == pytest.approx(3e-4) and lrs[7] == pytest.approx(1.5e-4)  # cut after the eval at step 6
    assert lrs[11] == pytest.approx(7.5e-5)                                   # and after the eval at step 10
    assert summary["status"] == "plateau" and summary["step"] == 14           # no gain after two cuts: stop
    assert ckpt.read_pointer(tmp_path / "run", "latest").name == "step_0000014"


@pytest.mark.parametrize("key", ["GPT2", "MAMBA2", "CP", "SEQ-RMMR"])
def test_baselines_and_ungated_variants_train_and_evaluate(tmp_path, key):
    summary = Trainer(tiny_config(key, steps=2, eval_every=2), tmp_path / "run").fit()
    final = summary["final"]
    assert summary["status"] == "completed" and math.isfinite(final["val_loss"])
    assert ("grad_ratio" in final) == (key in ("CP", "SEQ-RMMR"))  # needs both branches
    assert "gate_rwkv" not in final  # no interpolation gate
