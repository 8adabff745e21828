"""Every registry key: builds, runs forward/backward, is causal, trains; fusion inits and parameter counts
match docs/design.md#fusion."""
import math

import pytest
import torch

from groundthink.layers import build_fusion
from groundthink.models import REGISTRY, count_parameters, get_config, get_model, list_models

# docs/design.md#fusion, written out here independently of the registry so the two are checked against each other.
SPEC_KEYS = ["HY", "GF", "GF-MH", "GF-RH", "GF-XM", "GF-XR", "HGF", "HGF-MH", "HGF-RH", "CP", "WS", "RF"]
SPEC_GATE_INIT = {"HY": 0.7, "GF": 0.5, "GF-MH": 0.3, "GF-RH": 0.7, "GF-XM": 0.03, "GF-XR": 0.97,
                  "HGF": 0.5, "HGF-MH": 0.3, "HGF-RH": 0.7, "WS": 0.5, "RF": 0.3}
SPEC_FUSION_PARAMS_D128 = {"HY": 256, "GF": 257, "GF-MH": 257, "GF-RH": 257, "GF-XM": 257, "GF-XR": 257,
                           "HGF": 32_896, "HGF-MH": 32_896, "HGF-RH": 32_896, "CP": 32_768, "WS": 1, "RF": 1}
BASELINES = ["GPT2", "RWKV6", "MAMBA2"]

ALL_KEYS = list(REGISTRY)
# Tiny dims (3 layers so the sequential patterns "R M M R" / "R R M" contain both branch kinds).
TINY = dict(vocab_size=29, hidden_size=32, n_layers=3, rwkv_heads=2, mamba_head_dim=16, mamba_state_size=16,
            attn_heads=2)


def tiny(key, **overrides):
    return get_model(key, **{**TINY, **overrides})


def branches_of(model):
    return {name for layer in model.layers for name in layer.branches}


def test_registry_has_spec_keys_and_baselines():
    assert set(SPEC_KEYS + BASELINES) <= set(ALL_KEYS)
    # The seed design's sequential stacks and the 2:1 RWKV:Mamba variant are registered too.
    patterns = {key: tiny(key).config.layer_kinds() for key in ALL_KEYS}
    assert any(kinds[:3] == ["R", "M", "M"] for kinds in patterns.values())
    assert any(kinds == ["R", "R", "M"] for kinds in patterns.values())


@pytest.mark.parametrize("key", ALL_KEYS)
def test_forward_backward_finite(key):
    torch.manual_seed(0)
    model = tiny(key)
    ids = torch.randint(0, 29, (2, 19))
    out = model(ids, targets=ids)
    assert out.logits.shape == (2, 19, 29)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    # At init the output distribution is near uniform (G2 of the seed design): loss close to ln(vocab).
    assert abs(out.loss.item() - math.log(29)) < 0.5
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("key", ALL_KEYS)
def test_causal(key):
    """Changing token t+1 leaves logits 0..t unchanged (float64, so any leak above round-off shows)."""
    torch.manual_seed(0)
    model = tiny(key).double().eval()
    ids = torch.randint(0, 29, (2, 37))
    changed = ids.clone()
    t = 20  # inside a chunk of the CPU scans (RWKV-6 chunks of 16), so masking within a chunk is tested
    changed[:, t + 1] = (ids[:, t + 1] + 1) % 29
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:], atol=1e-6)  # and the change does propagate


@pytest.mark.parametrize("key", ALL_KEYS)
def test_gradients_reach_every_branch(key):
    """S3 of the seed design: every mixer in every layer receives a nonzero gradient."""
    torch.manual_seed(0)
    model = tiny(key)
    ids = torch.randint(0, 29, (2, 19))
    model(ids, targets=ids).loss.backward()
    for i, layer in enumerate(model.layers):
        for branch in layer.branches:
            grads = [p.grad for p in getattr(layer, branch).parameters()]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            assert norm > 0, f"layer {i} {branch}"
    if "rwkv6" in branches_of(model) and "mamba2" in branches_of(model):
        # The accessor the diagnostics use (grad_ratio) sees both branches' gradients too.
        for branch in ("rwkv6", "mamba2"):
            params = model.branch_parameters(branch)
            assert params and sum(p.grad.abs().sum() for p in params) > 0


def test_hybrid_keys_have_both_branches():
    for key in SPEC_KEYS:
        model = tiny(key)
        assert all(layer.branches == ("rwkv6", "mamba2") for layer in model.layers), key
        assert len(model.branch_parameters("rwkv6")) > 0 and len(model.branch_parameters("mamba2")) > 0
    assert branches_of(tiny("GPT2")) == {"attention"}
    assert branches_of(tiny("RWKV6")) == {"rwkv6"}
    assert branches_of(tiny("MAMBA2")) == {"mamba2"}


# ---------------------------------------------------------------------------------------------------------
# Fusion initialization: gate_init

def initial_gates(model):
    with torch.no_grad(), model.recording() as stats:
        model(torch.randint(0, 29, (2, 11), generator=torch.Generator().manual_seed(0)))
    return [float(layer["gate_rwkv"]) for layer in stats]


def test_gf_mh_initial_gate_is_0_3():
    gates = initial_gates(tiny("GF-MH"))
    assert len(gates) == 3 and all(abs(g - 0.3) < 1e-6 for g in gates)


# HY (free gains) and RF (a correction scale) have no interpolation gate: docs/design.md#balance-metrics reports gate_rwkv for gated
# variants only, so for them gate_init is checked on the parameters it sets.
UNGATED_INIT = {"HY": lambda f: (f.gain_rwkv, f.gain_mamba), "RF": lambda f: (f.scale_mamba,)}


def check_init(key, expected_init, **overrides):
    """The fusion of every layer starts at ``expected_init``."""
    model = tiny(key, n_layers=2, **overrides)
    if key in UNGATED_INIT:
        expected = (expected_init, 1 - expected_init) if key == "HY" else (expected_init,)
        for layer in model.layers:
            for param, value in zip(UNGATED_INIT[key](layer.fusion), expected):
                assert torch.allclose(param, torch.full_like(param, value))
        with torch.no_grad(), model.recording() as stats:
            model(torch.randint(0, 29, (1, 5)))
        assert all("gate_rwkv" not in layer for layer in stats)
    else:
        assert all(abs(g - expected_init) < 1e-6 for g in initial_gates(model))


@pytest.mark.parametrize("key", sorted(SPEC_GATE_INIT))
def test_default_gate_init_follows_spec(key):
    assert REGISTRY[key][1].get("gate_init") == SPEC_GATE_INIT[key]
    check_init(key, SPEC_GATE_INIT[key])


@pytest.mark.parametrize("key", sorted(SPEC_GATE_INIT))
def test_gate_init_override_is_honoured(key):
    check_init(key, 0.2, gate_init=0.2)


@pytest.mark.parametrize("kind", ["gain", "gate", "gate_channel", "weighted_sum", "residual"])
@pytest.mark.parametrize("gate_init", [0.03, 0.3, 0.97])
def test_fusion_modules_honour_gate_init(kind, gate_init):
    fusion = build_fusion(kind, 8, gate_init)
    r, m = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    fused, gate = fusion(r, m)
    if kind == "residual":
        # r + a*m with a = gate_init.
        torch.testing.assert_close(fused, r + gate_init * m)
    else:
        # At init every variant is exactly the interpolation gate_init * r + (1 - gate_init) * m.
        torch.testing.assert_close(fused, gate_init * r + (1 - gate_init) * m)
    if kind in ("gain", "residual"):
        assert gate is None  # no interpolation gate: nothing is reported as gate_rwkv
    else:
        torch.testing.assert_close(gate.expand(2, 5, 8), torch.full((2, 5, 8), gate_init))
    if kind.startswith("gate"):
        # Weight zeroed, bias = logit(gate_init).
        assert not fusion.gate_proj.weight.any()
        torch.testing.assert_close(fusion.gate_proj.bias, torch.full_like(fusion.gate_proj.bias,
                                                                         math.log(gate_init / (1 - gate_init))))


def test_concat_project_has_no_gate():
    fused, gate = build_fusion("concat_project", 8)(torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    assert gate is None and fused.shape == (1, 3, 8)
    model = tiny("CP")
    with torch.no_grad(), model.recording() as stats:
        model(torch.randint(0, 29, (1, 5)))
    assert all("act_var_rwkv" in layer for layer in stats)  # it did record, just no gate
    assert all("gate_rwkv" not in layer for layer in stats)


# ---------------------------------------------------------------------------------------------------------
# Registry entry points and parameter accounting

def test_unknown_key_lists_valid_keys():
    with pytest.raises(KeyError) as excinfo:
        get_model("nope")
    message = str(excinfo.value)
    assert "nope" in message
    assert all(key in message for key in ALL_KEYS)


def test_list_models(capsys):
    assert list_models() == ALL_KEYS
    assert capsys.readouterr().out == ""  # show=False prints nothing
    assert list_models(show=True, **TINY) == ALL_KEYS
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("counted at ") and "hidden_size=" in table[0]  # the shape, then the table
    start = table.index("") + 1
    assert ["key", "description", "fusion/block", "total", "params"] == table[start].split()
    rows = {line.split()[0]: line for line in table[start + 2:]}
    assert list(rows) == ALL_KEYS
    for key in ALL_KEYS:
        assert rows[key].split()[-1] == f"{count_parameters(tiny(key))['total']:,}"


def test_overrides_reach_the_config():
    model = get_model("GF-MH", vocab_size=65, hidden_size=64, n_layers=2, gate_init=0.4, mamba_head_dim=32)
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.n_layers, cfg.gate_init) == (65, 64, 2, 0.4)
    assert model.layers[0].mamba2.num_heads == 4  # 2 * 64 / 32
    assert get_model("GF-MH", gate_init=None, **TINY).config.gate_init == 0.3  # None = the key's default
    with pytest.raises(ValueError, match="gate_init"):
        get_model("GF", gate_init=1.5, **TINY)


@pytest.mark.parametrize("key", ALL_KEYS)
def test_parameter_accounting(key):
    model = tiny(key)
    counts = count_parameters(model)
    total = sum(p.numel() for p in model.parameters())  # tied embedding/head counted once
    assert counts["total"] == total == model.num_params
    assert sum(v for k, v in counts.items() if k != "total") == total
    # Component counts from the modules themselves.
    d, layers = model.config.hidden_size, model.layers
    per_module = lambda name: sum(sum(p.numel() for p in getattr(layer, name).parameters())  # noqa: E731
                                  for layer in layers if hasattr(layer, name))
    assert counts["embedding"] == 29 * d + (model.config.max_position_embeddings * d if key == "GPT2" else 0)
    assert counts["ffn"] == len(layers) * 2 * 4 * d * d
    assert counts["rwkv6"] == per_module("rwkv6")
    assert counts["mamba2"] == per_module("mamba2")
    assert counts["attention"] == per_module("attention")
    assert counts["fusion"] == per_module("fusion")


@pytest.mark.parametrize("key", sorted(SPEC_FUSION_PARAMS_D128))
def test_fusion_parameters_match_spec_at_d128(key):
    model = get_model(key, vocab_size=65, hidden_size=128, n_layers=2)
    assert count_parameters(model)["fusion"] == 2 * SPEC_FUSION_PARAMS_D128[key]


# ---------------------------------------------------------------------------------------------------------
# Each variant can fit one small batch

OVERFIT_STEPS = 40
# Bound on the best loss of the run (start: ~ln 16 = 2.77). Measured over 40 steps, four seeds: 0.03-0.13 for
# every key but the RWKV-heavy RWKV6 (0.08-0.28) and SEQ-2R1M (0.18-0.38). Adam at lr 1e-2 makes those two
# oscillate (their *final* loss ranged 0.08-0.50 over eight seeds, and moved that much when a fused
# multiply-add changed the last float32 bit), so the test asks that the loss gets there, not where it ends.
# Token statistics alone cannot go below ~2.3 on random sequences: passing needs the mixers.
OVERFIT_BOUND = 0.5


@pytest.mark.parametrize("key", ALL_KEYS)
def test_overfits_one_batch(key):
    """A tiny model memorizes 4 random sequences of 16 tokens in 40 Adam steps: loss from ~2.77 to < 0.5."""
    torch.manual_seed(0)
    n_layers = 3 if len(get_config(key).pattern) > 1 else 2  # sequential stacks: room for both kinds
    model = get_model(key, vocab_size=16, hidden_size=32, n_layers=n_layers, rwkv_heads=2, mamba_head_dim=16,
                      mamba_state_size=16, attn_heads=2)
    ids = torch.randint(0, 16, (4, 17), generator=torch.Generator().manual_seed(1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(OVERFIT_STEPS):
        loss = model(inputs, targets=targets).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    losses.append(model(inputs, targets=targets).loss.item())
    initial, best = losses[0], min(losses)
    assert abs(initial - math.log(16)) < 0.2
    assert best < OVERFIT_BOUND, f"{key}: {initial:.3f} -> best {best:.3f} (final {losses[-1]:.3f})"


def test_float64_model_computes_in_float64():
    # Half types are upcast to float32 inside; float64 must stay float64 end to end (the exact checks rely on it).
    model = tiny("GF-MH").double()
    ids = torch.randint(0, 29, (1, 9))
    out = model(ids, targets=ids, return_states=True)
    assert out.logits.dtype == out.loss.dtype == torch.float64
    assert out.states[0]["rwkv6"].wkv.dtype == out.states[0]["mamba2"].ssm.dtype == torch.float64


def test_config_round_trip_and_bad_input():
    from groundthink.models import ModelConfig

    cfg = tiny("SEQ-RMMR").config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "hidden": 3})
    with pytest.raises(ValueError, match="layer kinds"):
        get_model("GF", layers="P X", **TINY)
    with pytest.raises(ValueError, match="token ids"):
        tiny("GF")(torch.tensor([[0, 29]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny("GPT2", max_position_embeddings=8)(torch.zeros(1, 9, dtype=torch.long))
