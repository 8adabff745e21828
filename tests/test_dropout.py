"""model.dropout (training only, checkpointed randomness) and model.init (GPT-2's initialization)."""
import math

import pytest
import torch
from safetensors.torch import load_file

from groundthink.layers.attention import CausalSelfAttention
from groundthink.models import get_model
from groundthink.training import Trainer
from groundthink.training import checkpoint as ckpt
from training_utils import TINY_MODEL, tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def tiny(key: str, **overrides):
    torch.manual_seed(0)
    return get_model(key, vocab_size=50, **{**TINY_MODEL, **overrides})


def tokens(batch=3, length=12):
    return torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("key", ["GF-MH", "GPT2"])
def test_no_dropout_draws_no_random_numbers_and_trains_as_it_evaluates(key):
    model = tiny(key)
    ids = tokens()
    before = torch.get_rng_state()
    trained = model.train()(ids).logits
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(trained, model.eval()(ids).logits)


@pytest.mark.parametrize("key", ["GF-MH", "MAMBA2", "GPT2"])
def test_dropout_acts_in_training_only(key):
    model, plain = tiny(key, dropout=0.2), tiny(key)
    plain.load_state_dict(model.state_dict())
    ids = tokens()
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, plain.eval()(ids).logits)


def test_attention_drops_probabilities_in_training_only():
    torch.manual_seed(0)
    attention = CausalSelfAttention(16, 2, dropout=0.5)
    with torch.no_grad():
        attention.o_proj.weight.copy_(torch.eye(16))  # the heads' outputs as they are
    x = torch.randn(8, 6, 16)
    undropped = attention.eval()(x)[0]
    dropped = attention.train()(x)[0]
    assert not torch.allclose(dropped, undropped)
    # The first position attends to itself alone: its probability 1 is dropped (0) or kept as 1 / (1 - 0.5).
    value = attention.qkv_proj(x).chunk(3, dim=-1)[2][:, 0]
    assert torch.allclose(undropped[:, 0], value, atol=1e-6)
    kept = []
    for head in (slice(0, 8), slice(8, 16)):
        out = dropped[:, 0, head]
        is_kept = torch.isclose(out, 2 * value[:, head], atol=1e-5).all(-1)
        assert (is_kept | (out == 0).all(-1)).all()
        kept += is_kept.tolist()
    assert 0 < sum(kept) < len(kept)


def test_resume_with_dropout_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Dropout draws from torch's generator, which the checkpoint saves: a resumed run drops the same units."""
    config = tiny_config(steps=12, eval_every=4)
    config.model.settings["dropout"] = 0.2
    Trainer(config, tmp_path / "straight").fit()
    generator_after = torch.get_rng_state()
    Trainer(config, tmp_path / "split").fit(until_step=6)
    Trainer(config, tmp_path / "split", resume=True).fit()
    assert torch.equal(torch.get_rng_state(), generator_after)
    without = tiny_config(steps=12, eval_every=4)
    Trainer(without, tmp_path / "without").fit()
    a, b, c = (load_file(str(ckpt.read_pointer(tmp_path / run, "latest") / ckpt.WEIGHTS))
               for run in ("straight", "split", "without"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the dropout did act


def test_gpt2_init_draws_gpt2s_scales():
    model = get_model("GPT2", vocab_size=512, hidden_size=256, n_layers=8, attn_heads=4, init="gpt2")
    residual = 0.02 / math.sqrt(2 * 8)
    for name, param in model.named_parameters():
        if name.endswith(("attention.o_proj.weight", "ffn.down.weight")):
            assert param.std().item() == pytest.approx(residual, rel=0.05), name
        elif param.ndim == 2:  # embeddings (the head is tied), qkv, FFN up
            assert param.std().item() == pytest.approx(0.02, rel=0.05), name
        assert abs(param.mean().item()) < 2e-3 or param.ndim == 1, name


def test_gpt2_init_changes_only_the_gpt2_parts_of_a_hybrid():
    torch_init, gpt2_init = tiny("GF-MH"), tiny("GF-MH", init="gpt2")
    for (name, a), (_, b) in zip(torch_init.named_parameters(), gpt2_init.named_parameters()):
        changed = ".ffn." in name
        assert torch.equal(a, b) != changed, name


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["GF-MH", "GPT2"])
def test_captured_step_with_dropout_resumes_with_the_same_generator_state(tmp_path, key):
    """Dropout inside the captured CUDA graph: a run paused and resumed ends with the CUDA generator exactly
    where the uninterrupted run's is (same seed and offset, so the same masks), and trains as closely."""
    from groundthink.training.logging import read_metrics

    config = tiny_config(model=key, steps=12, eval_every=4, device="cuda", precision="fp32", cuda_graph="on")
    config.model.settings["dropout"] = 0.2
    Trainer(config, tmp_path / "straight").fit()
    generator_after = torch.cuda.get_rng_state()
    Trainer(config, tmp_path / "split").fit(until_step=6)
    Trainer(config, tmp_path / "split", resume=True).fit()
    assert torch.equal(torch.cuda.get_rng_state(), generator_after)
    losses = [[r["loss"] for r in read_metrics(tmp_path / run) if r["kind"] == "train"] for run in ("straight", "split")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
