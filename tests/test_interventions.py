"""Balance interventions: each changes exactly what it should, switched on through the config.

The balance loss has the value and gradient direction its definition says; frozen fusion parameters stay
bit-identical for N steps (also across a resume) and then train; Mamba gradient scaling multiplies exactly
the mamba2.* gradients; RWKV branch dropout zeroes whole sequences at its rate, in training only.
"""
import math

import pytest
import torch

from groundthink.errors import UserError
from groundthink.models.registry import get_model
from groundthink.training.config import apply_override
from groundthink.training.interventions import BalanceLoss, GateFreeze, MambaGradScale, intervention_hooks
from groundthink.training.trainer import Trainer
from training_utils import TINY_MODEL, tiny_config


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def config_with(*overrides, model="GF-MH", **train):
    config = tiny_config(model, **train)
    for item in overrides:
        apply_override(config, item)
    return config.validate()


def trainer_with(tmp_path, *overrides, model="GF-MH", **train) -> Trainer:
    return Trainer(config_with(*overrides, model=model, **train), tmp_path / "run", device="cpu")


def hook(trainer, kind):
    return next(h for h in trainer.hooks if isinstance(h, kind))


def one_batch(trainer):
    inputs, targets = trainer.sampler.next_batch()
    return inputs, targets


# ---- balance loss -----------------------------------------------------------------------------------

def test_balance_loss_on_the_gate_has_its_defined_value_and_pushes_the_gate_into_the_band(tmp_path):
    # GF-MH starts with every gate exactly 0.3 (zero weight, bias logit(0.3)); the band [0.5, 0.7] is 0.2 away.
    trainer = trainer_with(tmp_path, "interventions.balance_weight=2", "interventions.balance_low=0.5")
    balance = hook(trainer, BalanceLoss)
    balance.on_fit_start(trainer)
    inputs, targets = one_batch(trainer)
    output = trainer.model(inputs, targets=targets)
    extra = balance.extra_loss(trainer, output)
    assert math.isclose(float(extra.detach()), 2 * 0.2 ** 2, rel_tol=1e-5)
    trainer.model.zero_grad(set_to_none=True)
    extra.backward()
    biases = [fusion.gate_proj.bias for fusion in trainer.model.fusions()]
    assert all(float(b.grad) < 0 for b in biases)  # descending the penalty raises every gate
    with torch.no_grad():
        for bias in biases:
            bias -= 1.0 * bias.grad
        with trainer.model.recording() as stats:
            trainer.model(inputs)
    gates = [float(layer["gate_rwkv"]) for layer in stats]
    assert all(0.3 < g <= 0.7 for g in gates)
    # Inside the band the penalty is zero.
    inside = trainer_with(tmp_path / "b", "interventions.balance_weight=2", "interventions.balance_low=0.2")
    inside_hook = hook(inside, BalanceLoss)
    inside_hook.on_fit_start(inside)
    assert float(inside_hook.extra_loss(inside, inside.model(inputs, targets=targets)).detach()) == 0.0


@pytest.mark.parametrize("key", ["HY", "GF-MH", "HGF", "CP", "WS", "RF"])
def test_fusion_parts_add_up_to_the_fused_output(key):
    torch.manual_seed(0)
    model = get_model(key, vocab_size=37, **TINY_MODEL)
    fusion = model.fusions()[0]
    for param in fusion.parameters():  # move off the symmetric start
        torch.nn.init.normal_(param, std=0.3)
    r, m = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    fused, gate = fusion(r, m)
    part_r, part_m = fusion.parts(r, m, gate)
    torch.testing.assert_close(part_r + part_m, fused, rtol=1e-5, atol=1e-6)


def test_balance_loss_on_the_contribution_share_moves_the_share_toward_the_band(tmp_path):
    trainer = trainer_with(tmp_path, "interventions.balance_weight=1", "interventions.balance_target=share",
                           "interventions.balance_low=0.6", "interventions.balance_high=0.8")
    balance = hook(trainer, BalanceLoss)
    balance.on_fit_start(trainer)
    inputs, targets = one_batch(trainer)

    def penalty():
        return balance.extra_loss(trainer, trainer.model(inputs, targets=targets))

    before = penalty()
    share_before = float(balance.last_share)
    assert share_before < 0.6 and float(before.detach()) > 0
    trainer.model.zero_grad(set_to_none=True)
    before.backward()
    with torch.no_grad():
        for param in trainer.model.parameters():
            if param.grad is not None:
                param -= 0.05 * param.grad
    after = penalty()
    assert float(balance.last_share) > share_before and float(after.detach()) < float(before.detach())
    # Evaluation passes record nothing: no penalty from no-grad forwards.
    with torch.no_grad():
        trainer.model(inputs)
    assert balance.shares == []


def test_balance_loss_is_logged_and_refused_where_it_cannot_apply(tmp_path):
    trainer = trainer_with(tmp_path, "interventions.balance_weight=1", steps=4, eval_every=4)
    trainer.fit()
    final = trainer.last_eval
    assert final["balance_penalty"] >= 0 and 0 < final["balance_gate_rwkv"] < 1
    for model, message in (("CP", "'concat_project' has none"), ("HY", "'gain' has none"),
                           ("RF", "'residual' has none"), ("GPT2", "parallel hybrid blocks")):
        with pytest.raises(UserError, match=message):
            config = config_with("interventions.balance_weight=1", model=model)
            intervention_hooks(config.interventions, config.model_config())
    with pytest.raises(UserError, match="needs Mamba-2 layers"):
        config = config_with("interventions.mamba_grad_scale=2", model="RWKV6")
        intervention_hooks(config.interventions, config.model_config())
    with pytest.raises(UserError, match="balance_target 'both' is unknown"):
        config_with("interventions.balance_target=both")


# ---- gate freezing ----------------------------------------------------------------------------------

def fusion_state(trainer):
    return [p.detach().clone() for p in GateFreeze.parameters(trainer.model)]


def test_gate_freeze_keeps_the_fusion_fixed_for_n_steps_then_trains_it_also_across_a_resume(tmp_path):
    overrides = ("interventions.gate_freeze_steps=3",)
    trainer = trainer_with(tmp_path, *overrides, steps=6, eval_every=3)
    initial = fusion_state(trainer)
    other = trainer.model.embed.weight.detach().clone()
    trainer.fit(until_step=3)
    assert all(torch.equal(a, b) for a, b in zip(initial, fusion_state(trainer)))
    assert not torch.equal(other, trainer.model.embed.weight)  # everything else trained
    assert trainer.last_eval["gate_frozen"] is False  # logged after step 3: step 4 on is free
    resumed = Trainer(config_with(*overrides, steps=6, eval_every=3), tmp_path / "run", resume=True, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(initial, fusion_state(resumed)))
    resumed.fit()
    assert all(not torch.equal(a, b) for a, b in zip(initial, fusion_state(resumed)))
    assert all(p.requires_grad for p in GateFreeze.parameters(resumed.model))


# ---- Mamba gradient scaling -------------------------------------------------------------------------

def test_mamba_grad_scale_multiplies_exactly_the_mamba_gradients(tmp_path):
    trainer = trainer_with(tmp_path, "interventions.mamba_grad_scale=10")
    scale = hook(trainer, MambaGradScale)
    inputs, targets = one_batch(trainer)
    loss, _ = trainer.loss_fn(trainer.model, inputs, targets)
    loss.backward()
    before = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    held_ratio = None
    scale.on_after_backward(trainer)
    for name, param in trainer.model.named_parameters():
        if name not in before:
            continue
        expected = before[name] * 10 if ".mamba2." in name else before[name]
        assert torch.equal(param.grad, expected), name
    assert any(".mamba2." in n for n in before) and any(".rwkv6." in n for n in before)
    # The logged grad_ratio stays the loss's own; the optimizer's is kept beside it.
    from groundthink.diagnostics.metrics import grad_ratio

    held_ratio = float(grad_ratio(trainer.model))
    record = {"grad_ratio": held_ratio}
    scale.on_eval(trainer, record)
    assert math.isclose(record["grad_ratio_scaled"], held_ratio)
    assert math.isclose(record["grad_ratio"], 10 * held_ratio)


# ---- RWKV branch dropout (a model setting) ------------------------------------------------------------

def test_rwkv_dropout_zeroes_whole_sequences_at_its_rate_in_training_only(tmp_path):
    rate = 0.25
    trainer = trainer_with(tmp_path, f"model.rwkv_dropout={rate}")
    model = trainer.model
    seen = []
    handles = [fusion.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].detach()))
               for fusion in model.fusions()]
    inputs = torch.randint(0, model.config.vocab_size, (200, 8))
    torch.manual_seed(1)
    with torch.no_grad():
        model.train()
        model(inputs)
        zeroed = torch.cat([(r.abs().amax(dim=(1, 2)) == 0) for r in seen])
        seen.clear()
        model.eval()
        model(inputs)
    for handle in handles:
        handle.remove()
    n = zeroed.numel()  # 200 sequences x 2 layers, each an independent Bernoulli(rate)
    assert abs(float(zeroed.float().mean()) - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    assert all(float(r.abs().amax(dim=(1, 2)).min()) > 0 for r in seen)  # evaluation drops nothing
