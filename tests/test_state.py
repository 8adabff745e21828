"""Recurrent state: running a sequence in pieces with the state carried over == running it whole.

Float64 so that the only admissible difference is round-off (relative 1e-10). Split points are chosen
inside chunks (not multiples of the scans' chunk sizes), and include single-token pieces (decoding).
"""
import pytest
import torch

from groundthink.layers import RWKV6, Mamba2, Mamba2State, RWKV6State
from groundthink.models import REGISTRY, get_model

TOL = 1e-10
PIECES = [(0, 11), (11, 12), (12, 13), (13, 40)]  # 40 tokens: a prefix, two decode steps, the rest


def rel_err(actual, expected):
    return (torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)).item()


def run_in_pieces(step, x, pieces=PIECES):
    """``step(piece, state) -> (out, state)`` over the pieces; returns the concatenated output and last state."""
    outs, state = [], None
    for start, end in pieces:
        out, state = step(x[:, start:end], state)
        outs.append(out)
    return torch.cat(outs, dim=1), state


def test_rwkv6_layer_state_carry():
    torch.manual_seed(0)
    layer = RWKV6(hidden_size=32, num_heads=2, proj_low_rank_dim=8, gate_low_rank_dim=16).double()
    with torch.no_grad():
        layer.bonus.normal_()  # FLA's init leaves it at zero; a nonzero bonus must not break carrying
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    with torch.no_grad():
        whole, final = layer(x)
        pieces, carried = run_in_pieces(layer, x)
    assert isinstance(carried, RWKV6State)
    assert carried.wkv.shape == (2, 2, 8, 16) and carried.shift.shape == (2, 32)
    assert rel_err(pieces, whole) < TOL
    assert rel_err(carried.wkv, final.wkv) < TOL
    assert torch.equal(carried.shift, x[:, -1])


def test_mamba2_layer_state_carry():
    torch.manual_seed(0)
    layer = Mamba2(hidden_size=32, head_dim=16, expand=2, state_size=16).double()
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    with torch.no_grad():
        whole, final = layer(x)
        pieces, carried = run_in_pieces(layer, x)
    assert isinstance(carried, Mamba2State)
    assert carried.ssm.shape == (2, 4, 16, 16) and carried.conv.shape == (2, layer.conv_dim, 3)
    assert rel_err(pieces, whole) < TOL
    assert rel_err(carried.ssm, final.ssm) < TOL
    assert rel_err(carried.conv, final.conv) < TOL  # in_proj of the last inputs: equal up to round-off


def test_mamba2_state_carry_across_short_pieces():
    # Pieces shorter than the convolution window: the conv state must splice history across several calls.
    torch.manual_seed(1)
    layer = Mamba2(hidden_size=32, head_dim=16, expand=2, state_size=16, conv_kernel=4).double()
    x = torch.randn(1, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        whole, _ = layer(x)
        pieces, _ = run_in_pieces(layer, x, [(0, 1), (1, 2), (2, 4), (4, 5), (5, 9)])
    assert rel_err(pieces, whole) < TOL


def test_initial_state_helpers_are_zero_states():
    # layer.initial_state(...) is the same as passing no state.
    torch.manual_seed(2)
    rwkv = RWKV6(hidden_size=32, num_heads=2, proj_low_rank_dim=8, gate_low_rank_dim=16)
    mamba = Mamba2(hidden_size=32, head_dim=16, expand=2, state_size=16)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        for layer in (rwkv, mamba):
            assert torch.allclose(layer(x)[0], layer(x, layer.initial_state(2))[0], atol=1e-6, rtol=1e-5)


def test_state_depends_on_input():
    # S2 of the seed design: different inputs give different states (the state is not frozen).
    torch.manual_seed(3)
    model = get_model("GF-MH", vocab_size=17, hidden_size=32, n_layers=2, rwkv_heads=2, mamba_head_dim=16,
                      mamba_state_size=16)
    with torch.no_grad():
        a = model(torch.randint(0, 17, (1, 12)), return_states=True).states
        b = model(torch.randint(0, 17, (1, 12)), return_states=True).states
    for layer_a, layer_b in zip(a, b):
        assert not torch.allclose(layer_a["rwkv6"].wkv, layer_b["rwkv6"].wkv)
        assert not torch.allclose(layer_a["mamba2"].ssm, layer_b["mamba2"].ssm)


def tiny_model(key):
    torch.manual_seed(0)
    model = get_model(key, vocab_size=23, hidden_size=32, n_layers=3, rwkv_heads=2, mamba_head_dim=16,
                      mamba_state_size=16, attn_heads=2)
    # Registry inits start gates / gains at fixed values; perturb every parameter so the fused paths
    # (both branches, the gate's weight) all matter to the output.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.double().eval()


@pytest.mark.parametrize("key", list(REGISTRY))
def test_model_state_carry(key):
    model = tiny_model(key)
    ids = torch.randint(0, 23, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(ids, return_states=True)
        logits, states, offset = [], None, 0
        for start, end in PIECES:
            out = model(ids[:, start:end], states=states, return_states=True, position_offset=offset)
            logits.append(out.logits)
            states, offset = out.states, end
    assert rel_err(torch.cat(logits, dim=1), whole.logits) < TOL
    assert len(states) == len(whole.states) == 3
    for carried, final in zip(states, whole.states):
        assert carried.keys() == final.keys()
        for branch in carried:
            for a, b in zip(carried[branch], final[branch]):
                assert a.shape == b.shape and rel_err(a, b) < TOL, branch


def test_gpt2_without_position_offset_differs():
    # The check above is not vacuous for GPT2: continuing without position_offset reuses positions 0.. and
    # changes the logits, so the KV cache and the offset are both needed.
    model = tiny_model("GPT2")
    ids = torch.randint(0, 23, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :10], return_states=True)
        wrong = model(ids[:, 10:], states=first.states).logits
    assert rel_err(wrong, whole[:, 10:]) > 1e-3
