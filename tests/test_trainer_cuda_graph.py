"""``train.cuda_graph``: the trainer's step through ``TrainStep``.

On CPU ``on`` runs TrainStep's eager fallback (with a warning), which must train exactly as the trainer's
own eager step: the same losses and the same weights, bit for bit (accumulation included, where the logged
loss is the mean of the same numbers summed in another order: 1e-6), with hooks, and across a resume.
Where a captured step cannot work, ``on`` is a one-line error and ``auto`` falls back to the eager step.
The CUDA comparison (captured vs eager, 30 steps) is in test_gpu_models.py.
"""
import warnings

import pytest
import torch

from groundthink.errors import UserError
from groundthink.training.config import apply_override, config_from_dict
from groundthink.training.parallel import Collectives
from groundthink.training.logging import read_metrics
from groundthink.training.optim import load_optimizer_state, optimizer_state
from groundthink.training.trainer import Trainer
from training_utils import tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def config_with(*overrides, **train):
    config = tiny_config(**train)
    for item in overrides:
        apply_override(config, item)
    return config.validate()


def graph_trainer(config, run_dir, **kwargs) -> Trainer:
    with pytest.warns(UserWarning, match="runs eagerly"):
        return Trainer(config, run_dir, **kwargs)


def train_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


def weights(trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("case", ["plain", "accum2", "hooks"])
def test_graph_step_trains_as_the_eager_step(tmp_path, case):
    overrides = {"plain": [], "accum2": ["train.grad_accum=2"],
                 "hooks": ["interventions.balance_weight=1.0", "interventions.balance_target=share",
                           "interventions.mamba_grad_scale=2.0"]}[case]
    runs = {}
    for mode in ("off", "on"):
        config = config_with(*overrides, f"train.cuda_graph={mode}", steps=6, eval_every=3)
        make = graph_trainer if mode == "on" else Trainer
        trainer = make(config, tmp_path / mode)
        assert trainer.fit()["status"] == "completed"
        assert trainer.use_graph_step == (mode == "on")
        runs[mode] = trainer
    eager, graph = train_records(tmp_path / "off"), train_records(tmp_path / "on")
    assert [r["step"] for r in eager] == [r["step"] for r in graph] == list(range(1, 7))
    for a, b in zip(eager, graph):
        assert a["lr"] == b["lr"]
        if case == "accum2":  # the mean of two micro-batch losses, summed in another order
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=0)
        else:
            assert b["loss"] == a["loss"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6, abs=0)
    a, b = weights(runs["off"]), weights(runs["on"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    evals = [[r for r in read_metrics(tmp_path / mode) if r["kind"] == "eval"] for mode in ("off", "on")]
    assert [r["val_loss"] for r in evals[0]] == [r["val_loss"] for r in evals[1]]
    if case == "hooks":  # the hooks ran (and reported) in the graph step too
        assert evals[1][-1]["balance_penalty"] == evals[0][-1]["balance_penalty"]
        assert evals[1][-1]["grad_ratio_scaled"] == evals[0][-1]["grad_ratio_scaled"]


def test_graph_step_resumes_bit_identically_and_from_an_eager_checkpoint(tmp_path):
    straight = Trainer(config_with(steps=8, eval_every=4), tmp_path / "straight")
    straight.fit()
    graph_config = config_with("train.cuda_graph=on", steps=8, eval_every=4)
    # A graph run paused and resumed, and an eager run resumed with the graph step: both end on the weights
    # of the uninterrupted eager run.
    graph_trainer(graph_config, tmp_path / "graph").fit(until_step=4)
    Trainer(config_with(steps=8, eval_every=4), tmp_path / "mixed").fit(until_step=4)
    for name in ("graph", "mixed"):
        resumed = graph_trainer(graph_config, tmp_path / name, resume=True)
        assert resumed.step == 4 and resumed.fit()["status"] == "completed"
        assert [r["loss"] for r in train_records(tmp_path / name)] == \
            [r["loss"] for r in train_records(tmp_path / "straight")]
        a, b = weights(straight), weights(resumed)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_tensor_learning_rates_survive_a_checkpoint_round_trip(tmp_path):
    # The capturable CUDA optimizer holds each group's lr as a tensor that the captured step reads: a checkpoint
    # stores plain numbers, and loading fills the same tensors in place and keeps the run's own flags.
    trainer = graph_trainer(config_with("train.cuda_graph=on", steps=4), tmp_path / "run")
    trainer.fit()
    lrs = []
    for group in trainer.optimizer.param_groups:
        group["lr"] = torch.tensor(0.5)  # as build_optimizer(capturable=True) sets them on CUDA
        group["capturable"] = True
        lrs.append(group["lr"])
    saved = optimizer_state(trainer.optimizer)
    assert all(type(group["lr"]) is float for group in saved["param_groups"])
    saved_lrs = [0.001 * (i + 1) for i in range(len(saved["param_groups"]))]
    for group, lr in zip(saved["param_groups"], saved_lrs):
        group["lr"], group["capturable"] = lr, False
    moments = [trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.optimizer.param_groups[0]["params"]]
    load_optimizer_state(trainer.optimizer, saved)
    for group, tensor, lr in zip(trainer.optimizer.param_groups, lrs, saved_lrs):
        assert group["lr"] is tensor and tensor.item() == pytest.approx(lr) and group["capturable"] is True
    for p, m in zip(trainer.optimizer.param_groups[0]["params"], moments):
        assert torch.equal(trainer.optimizer.state[p]["exp_avg"], m)


def test_on_refuses_what_a_captured_step_cannot_do(tmp_path):
    with pytest.raises(UserError, match="gate_freeze_steps") as err:
        Trainer(config_with("train.cuda_graph=on", "interventions.gate_freeze_steps=3"), tmp_path / "a")
    assert "\n" not in str(err.value) and "train.cuda_graph=auto" in str(err.value)
    with pytest.raises(UserError, match="distributed"):
        Trainer(config_with("train.cuda_graph=on"), tmp_path / "b", collectives=Collectives(world_size=2))
    # auto falls back to the eager step (here on CPU, and with the unsafe hook), silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for overrides in (["train.cuda_graph=auto"], ["train.cuda_graph=auto", "interventions.gate_freeze_steps=3"]):
            trainer = Trainer(config_with(*overrides), tmp_path / "c")
            assert trainer.use_graph_step is False
            assert not isinstance(trainer.optimizer.param_groups[0]["lr"], torch.Tensor)


def test_cuda_graph_setting_is_validated():
    assert tiny_config().train.cuda_graph == "auto"  # captured on CUDA where it can be, eager elsewhere
    config = config_with("train.cuda_graph=auto")
    assert config.train.cuda_graph == "auto"
    # YAML reads a bare `on` / `off` as a boolean.
    assert config_from_dict({"train": {"cuda_graph": True}}).validate().train.cuda_graph == "on"
    assert config_from_dict({"train": {"cuda_graph": False}}).validate().train.cuda_graph == "off"
    with pytest.raises(UserError, match=r"train.cuda_graph 'maybe' is unknown; valid: auto, on, off"):
        config_with("train.cuda_graph=maybe")


def test_compile_needs_the_captured_step(tmp_path):
    assert tiny_config().train.compile is False
    with pytest.raises(UserError, match="train.compile must be true or false"):
        config_with("train.compile=sometimes")
    # auto on CPU runs the eager step, which train.compile does not apply to: one line naming the fixes.
    with pytest.raises(UserError, match="train.compile=true compiles the captured step") as err:
        Trainer(config_with("train.compile=true"), tmp_path / "a")
    assert "\n" not in str(err.value) and "train.cuda_graph=auto" in str(err.value)
    with pytest.raises(UserError, match="distributed"):
        Trainer(config_with("train.compile=true", "train.cuda_graph=auto"), tmp_path / "b",
                collectives=Collectives(world_size=2))


@pytest.mark.slow  # Inductor compiles the tiny model's forward and backward: ~35 s on 2 cores
def test_compiled_step_trains_as_the_plain_step(tmp_path):
    runs = {}
    for name, compile in (("plain", "false"), ("compiled", "true")):
        trainer = graph_trainer(config_with("train.cuda_graph=on", f"train.compile={compile}", steps=3,
                                            eval_every=3), tmp_path / name)
        summary = trainer.fit()
        assert summary["status"] == "completed"
        runs[name] = trainer
    assert summary["step_mode"] == "eager+compile"
    plain, compiled = train_records(tmp_path / "plain"), train_records(tmp_path / "compiled")
    for a, b in zip(plain, compiled):  # Inductor reorders float32 sums: equal up to rounding, not bit for bit
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    a, b = weights(runs["plain"]), weights(runs["compiled"])
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
