"""TrainStep on CPU (its eager fallback), the optimizer helpers and the FLOP count.

The step must be exactly one hand-written AdamW step (same loss, same parameters after), with gradient
accumulation equal to one step on the whole batch, and must refuse what a CUDA graph cannot capture.
"""
import pytest
import torch

from groundthink.models import get_model
from groundthink.training.optim import graph_ready, make_adamw, set_lr
from groundthink.training.step import TrainStep
from groundthink.training.flops import forward_flops_per_token, peak_flops, training_flops_per_step

TINY = dict(vocab_size=37, hidden_size=32, n_layers=2, rwkv_heads=2, mamba_head_dim=16, mamba_state_size=16,
            max_position_embeddings=64)


def batch(seed, shape=(4, 17)):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, TINY["vocab_size"], (shape[0], shape[1] + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def twin_models(key="GF-MH"):
    torch.manual_seed(0)
    a = get_model(key, **TINY)
    b = get_model(key, **TINY)
    b.load_state_dict(a.state_dict())
    return a, b


def test_step_equals_hand_written_adamw_step():
    model, ref = twin_models()
    step = TrainStep(model, make_adamw(model.parameters(), lr=1e-3, device="cpu"), 4, 17, grad_clip=1.0)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert step.use_graph is False and step.amp_dtype is None
    for seed in range(3):
        inputs, targets = batch(seed)
        out = step(inputs, targets, lr=1e-3)
        ref_opt.zero_grad(set_to_none=True)
        loss = ref(inputs, targets=targets).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        assert torch.allclose(out.loss, loss.detach(), rtol=0, atol=1e-6)
        assert torch.allclose(out.grad_norm, norm, rtol=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)


def test_accumulation_equals_one_big_batch():
    model, ref = twin_models("GPT2")
    inputs, targets = batch(5, (4, 9))
    accumulated = TrainStep(model, make_adamw(model.parameters(), lr=1e-3, device="cpu"), 2, 9, accumulation=2)
    whole = TrainStep(ref, make_adamw(ref.parameters(), lr=1e-3, device="cpu"), 4, 9)
    out_a = accumulated(inputs.view(2, 2, 9), targets.view(2, 2, 9))
    out_w = whole(inputs, targets)
    # Mean of two half-batch means == the whole-batch mean (equal halves), so the same gradients and step.
    assert torch.allclose(out_a.loss, out_w.loss, atol=1e-6)
    assert torch.allclose(out_a.grad_norm, out_w.grad_norm, rtol=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_wrong_batch_shape_is_refused():
    model = get_model("GPT2", **TINY)
    step = TrainStep(model, make_adamw(model.parameters(), lr=1e-3), 4, 17)
    inputs, targets = batch(0, (3, 17))
    with pytest.raises(ValueError, match="does not match the step's fixed shape"):
        step(inputs, targets)


def test_cuda_graph_needs_cuda_and_a_capturable_optimizer():
    model = get_model("GPT2", **TINY)
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        TrainStep(model, make_adamw(model.parameters(), lr=1e-3), 4, 17, cuda_graph=True)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert "capturable=True" in graph_ready(plain)


def test_set_lr_keeps_group_multipliers():
    model = get_model("GF-MH", **TINY)
    groups = [{"params": model.branch_parameters("mamba2"), "lr_mult": 2.0},
              {"params": [p for n, p in model.named_parameters() if ".mamba2." not in n]}]
    optimizer = make_adamw(groups, lr=1e-3)
    set_lr(optimizer, 5e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4]


def test_flops_of_gpt_match_the_formula():
    cfg = dict(TINY, ffn_mult=4)
    model = get_model("GPT2", **cfg)
    d, L, V, T = cfg["hidden_size"], cfg["n_layers"], cfg["vocab_size"], 16
    # per layer: qkv 3d^2 + out d^2 + FFN 8d^2 = 12 d^2 weights, 2 FLOPs each; attention 2 T d; head 2 d V.
    expected = L * (2 * 12 * d * d + 2 * T * d) + 2 * d * V
    assert forward_flops_per_token(model, T) == expected
    assert training_flops_per_step(model, 3, T) == 3 * expected * 3 * T
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("cpu") is None


def test_loss_fn_with_extra_term_and_after_backward_hook():
    model, ref = twin_models()
    calls = []

    def loss_fn(m, inputs, targets):
        lm = m(inputs, targets=targets).loss
        return lm + 0.5 * m.embed.weight.square().mean(), lm   # an extra term, as a balance loss would add

    def after_backward():
        calls.append(1)
        for p in model.branch_parameters("mamba2"):
            p.grad.mul_(0.5)                                    # e.g. scaling one branch's gradients

    step = TrainStep(model, make_adamw(model.parameters(), lr=1e-3), 4, 17, loss_fn=loss_fn,
                     after_backward=after_backward)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    inputs, targets = batch(3)
    out = step(inputs, targets)
    lm = ref(inputs, targets=targets).loss
    (lm + 0.5 * ref.embed.weight.square().mean()).backward()
    for p in ref.branch_parameters("mamba2"):
        p.grad.mul_(0.5)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    ref_opt.step()
    assert calls == [1] and torch.allclose(out.loss, lm.detach(), atol=1e-6)  # reports the LM loss only
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
