"""Whole models and training steps on CUDA (run on the device machine: ``pytest -m gpu``): the CUDA model
matches the float64 CPU model, the captured (and the compiled) training step the eager one, and the trainer's
captured step the eager trainer. Every measured error is appended to $GROUNDTHINK_PARITY_LOG when set.
"""
import pytest
import torch

from gpu_checks import MODELS, SMALL, check

pytestmark = pytest.mark.gpu


# ---------------------------------------------------------------------------------------------------------
# Whole models and training steps

def model_pair(key):
    from groundthink.models import get_model

    torch.manual_seed(0)
    cpu = get_model(key, **SMALL).double()
    gpu = get_model(key, **SMALL).cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def tokens(batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, SMALL["vocab_size"], (batch, seq + 1), generator=g)
    return data[:, :-1], data[:, 1:]


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("seq", [48, 160])
def test_model_cuda_matches_cpu(key, seq):
    cpu, gpu = model_pair(key)
    inputs, targets = tokens(3, seq)
    ref = cpu(inputs, targets=targets).loss
    ref.backward()
    loss = gpu(inputs.cuda(), targets=targets.cuda()).loss
    loss.backward()
    check(f"{key}_T{seq}.loss", loss, ref, 1e-3)
    grads = torch.cat([p.grad.flatten() for p in gpu.parameters()])
    ref_grads = torch.cat([p.grad.flatten() for p in cpu.parameters()])
    check(f"{key}_T{seq}.grads", grads, ref_grads, 1e-2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        check(f"{key}_T{seq}.loss_bf16", gpu(inputs.cuda(), targets=targets.cuda()).loss, ref, 2e-2)


# torch.compile takes a minute per model: the compiled step is checked on the hybrid only.
@pytest.mark.parametrize("key,mode", [(key, "graph") for key in MODELS] + [("GF-MH", "compile")])
def test_captured_step_matches_eager_step(key, mode):
    from groundthink.training.optim import make_adamw
    from groundthink.training.step import TrainStep

    _, fast = model_pair(key)
    _, slow = model_pair(key)
    steps = {}
    for name, model, graph in (("fast", fast, True), ("eager", slow, False)):
        optimizer = make_adamw(model.parameters(), lr=1e-3, capturable=graph)
        steps[name] = TrainStep(model, optimizer, 3, 48, accumulation=2, amp_dtype=None, cuda_graph=graph,
                                compile=(mode == "compile" and graph), warmup_steps=2)
    losses = {"fast": [], "eager": []}
    for i in range(6):  # 2 eager warm-up steps, the capture, 3 replays
        inputs, targets = tokens(6, 48, seed=i)
        for name, step in steps.items():
            out = step(inputs.view(2, 3, 48).cuda(), targets.view(2, 3, 48).cuda())
            losses[name].append(out.loss.clone())
    assert steps["fast"].graph is not None
    check(f"{key}_{mode}_step.losses", torch.stack(losses["fast"]), torch.stack(losses["eager"]), 1e-4)
    params = torch.cat([p.detach().flatten() for p in fast.parameters()])
    ref_params = torch.cat([p.detach().flatten() for p in slow.parameters()])
    check(f"{key}_{mode}_step.params", params, ref_params, 1e-4)


def test_learning_rate_change_reaches_the_captured_step():
    from groundthink.training.optim import make_adamw, set_lr
    from groundthink.training.step import TrainStep

    _, model = model_pair("GPT2")
    optimizer = make_adamw(model.parameters(), lr=1e-3, capturable=True)
    step = TrainStep(model, optimizer, 3, 48, warmup_steps=1)
    inputs, targets = (t.cuda() for t in tokens(3, 48))
    for _ in range(3):
        step(inputs, targets)
    before = [p.detach().clone() for p in model.parameters()]
    set_lr(optimizer, 0.0)
    step(inputs, targets)  # lr 0 and weight decay * lr = 0: a replay must leave every parameter unchanged
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_trainer_cuda_graph_trains_as_the_eager_trainer(tmp_path, monkeypatch):
    """train.cuda_graph=on (TrainStep captured after 3 eager steps) vs off: 30 steps, the same losses."""
    from groundthink.training.config import config_from_dict
    from groundthink.training.logging import read_metrics
    from groundthink.training.trainer import Trainer

    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))
    model = {k: v for k, v in SMALL.items() if k not in ("vocab_size", "max_position_embeddings")}
    losses = {}
    for mode in ("off", "on"):
        config = config_from_dict({
            "model": {"key": "GF-MH", **model}, "data": {"source": "recall", "recall_chars": 20000},
            "train": {"steps": 30, "batch_size": 8, "seq_len": 64, "grad_accum": 2, "log_every": 1,
                      "eval_every": 15, "eval_windows": 8, "device": "cuda", "precision": "fp32",
                      "progress": False, "tensorboard": False, "cuda_graph": mode}}).validate()
        trainer = Trainer(config, tmp_path / mode)
        trainer.fit()
        assert (trainer.step_fn.graph is not None) == (mode == "on")
        losses[mode] = torch.tensor([r["loss"] for r in read_metrics(tmp_path / mode) if r["kind"] == "train"])
    assert len(losses["on"]) == 30 and losses["on"][-1] < losses["on"][0]
    check("trainer_cuda_graph.losses", losses["on"], losses["off"], 1e-2)
