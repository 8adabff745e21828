"""Generation: one-token steps == the recurrences, step-by-step decoding == the full forward for every
registry model, seeded sampling, constant state size, streaming."""
import pytest
import torch

from groundthink.inference import Decoder, generate, generate_tokens, sample_next_token, state_nbytes, stream_text
from groundthink.models import REGISTRY, get_model
from groundthink.ops import rwkv6_recurrent_naive, rwkv6_step, ssd_recurrent_naive, ssd_step

TINY = dict(vocab_size=50, hidden_size=32, n_layers=2, mamba_head_dim=16, rwkv_heads=2, mamba_state_size=16,
            attn_heads=2)


def tiny_model(key, seed=0, dtype=torch.float32, **overrides):
    """A tiny registry model with every parameter perturbed, so that zero-initialized pieces (token-shift
    mixes, the RWKV bonus, gate weights) take part and a wrong state would show."""
    torch.manual_seed(seed)
    model = get_model(key, **{**TINY, **overrides}).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


class CharTokenizer:
    """encode / decode / vocab_size over a fixed character list (the interface generation needs)."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class ByteTokenizer:
    """Token = one UTF-8 byte: decoding a prefix can end inside a character, as byte-level BPE can."""

    vocab_size = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------------
# The one-token steps of the ops equal their step-by-step references.

def test_rwkv6_step_equals_naive_recurrence():
    g = torch.Generator().manual_seed(0)
    B, T, H, K, V = 2, 6, 3, 8, 5
    r, k = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    w = -torch.exp(torch.randn(B, T, H, K, generator=g, dtype=torch.float64) - 1.0)
    u = torch.randn(H, K, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
    o_ref, s_ref = rwkv6_recurrent_naive(r, k, v, w, u, initial_state=h0)
    state, outs = h0, []
    for t in range(T):
        o, state = rwkv6_step(r[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], w[:, t:t + 1], u, state)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, s_ref, rtol=1e-12, atol=1e-12)


def test_ssd_step_equals_naive_recurrence():
    g = torch.Generator().manual_seed(0)
    B, T, H, P, N = 2, 6, 3, 5, 4
    x = torch.randn(B, T, H, P, generator=g, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, generator=g, dtype=torch.float64))
    A = -torch.exp(torch.randn(H, generator=g, dtype=torch.float64))
    Bm, C = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) for _ in range(2))
    h0 = torch.randn(B, H, P, N, generator=g, dtype=torch.float64)
    y_ref, s_ref = ssd_recurrent_naive(x, dt, A, Bm, C, initial_state=h0)
    state, outs = h0, []
    for t in range(T):
        y, state = ssd_step(x[:, t:t + 1], dt[:, t:t + 1], A, Bm[:, t:t + 1], C[:, t:t + 1], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, s_ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------
# Decoding == full forward, for every registry model.

@pytest.mark.parametrize("key", list(REGISTRY))
def test_step_decoding_matches_full_forward(key):
    model = tiny_model(key, dtype=torch.float64)
    ids = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits                                   # [2, 20, V]
    prompt = 9
    decoder = Decoder(model, prefill_chunk=4)                      # prefill in pieces 4 + 4 + 1
    logits = [decoder.prefill(ids[:, :prompt])]
    for t in range(prompt, ids.shape[1] - 1):
        logits.append(decoder.step(ids[:, t]))
    stepped = torch.stack(logits, dim=1)                           # logits after tokens prompt-1 .. 18
    # float64 everywhere except the decays, which both layers round to float32 the same way in both paths.
    torch.testing.assert_close(stepped, full[:, prompt - 1:-1], rtol=1e-6, atol=1e-6)
    assert decoder.position == ids.shape[1] - 1


def test_greedy_generate_equals_argmax_of_full_forward():
    model = tiny_model("GF-MH")
    out = generate(model, torch.tensor([3, 1, 4, 1, 5]), 8, temperature=0)
    with torch.no_grad():
        logits = model(out[:, :-1]).logits
    # Each generated token is the argmax of the full forward at the position before it.
    assert torch.equal(out[0, 5:], logits[0, 4:].argmax(-1))


# ------------------------------------------------------------------------------------------------------
# Sampling.

def test_same_seed_same_text_and_different_seed_different_text():
    model, tok = tiny_model("GF-MH"), CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.\n!?ABCDEFGHIJKLMNOPQRSTU")
    settings = dict(max_new_tokens=24, temperature=0.8, top_k=20, top_p=0.95)
    first = "".join(stream_text(model, tok, "ab", seed=0, **settings))
    again = "".join(stream_text(model, tok, "ab", seed=0, **settings))
    other = "".join(stream_text(model, tok, "ab", seed=1, **settings))
    assert len(first) == 24 and first == again and first != other


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # The first two tokens hold 0.8 >= 0.7 of the mass: the nucleus is {0, 1}.
    assert set(sample_next_token(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next_token(logits, 1.0, top_p=0.85, generator=g).tolist()) == {0, 1, 2}
    assert set(sample_next_token(logits, 1.0, generator=g).tolist()) == {0, 1, 2, 3}
    assert torch.equal(sample_next_token(logits[:3], 0.0), torch.zeros(3, dtype=torch.long))
    # Frequencies follow the renormalized distribution (0.5 / 0.8 for token 0 within top-k 2).
    share = (sample_next_token(logits, 1.0, top_k=2, generator=g) == 0).float().mean().item()
    assert abs(share - 0.625) < 0.05


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_settings_are_refused(bad):
    settings = {**dict(temperature=1.0, top_k=None, top_p=None), **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        sample_next_token(torch.zeros(1, 4), **settings)


# ------------------------------------------------------------------------------------------------------
# Memory: the recurrent state does not grow with the context; the KV cache does.

@pytest.mark.parametrize("key", ["GF-MH", "RWKV6", "MAMBA2", "SEQ-RMMR"])
def test_recurrent_state_size_is_independent_of_context_length(key):
    model = tiny_model(key)
    sizes = []
    for context in (4, 64, 300):
        decoder = Decoder(model)
        token = decoder.prefill(torch.randint(0, 50, (1, context))).argmax(-1)
        for _ in range(3):
            token = decoder.step(token).argmax(-1)
        sizes.append(decoder.state_nbytes())
    assert sizes[0] == sizes[1] == sizes[2] > 0


def test_kv_cache_grows_with_context():
    model = tiny_model("GPT2")
    short, long = Decoder(model), Decoder(model)
    short.prefill(torch.randint(0, 50, (1, 8)))
    long.prefill(torch.randint(0, 50, (1, 64)))
    assert long.state_nbytes() == 8 * short.state_nbytes()


def test_attention_model_refuses_to_generate_past_its_positions():
    model = tiny_model("GPT2", max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, torch.arange(10), 10)
    assert generate(model, torch.arange(10), 6, temperature=0).shape == (1, 16)


def test_generate_restores_training_mode_and_stops_at_eos():
    model = tiny_model("RWKV6").train()
    greedy = generate(model, torch.tensor([1, 2, 3]), 12, temperature=0)
    assert model.training
    eos = int(greedy[0, 5])  # the third generated token
    stopped = list(generate_tokens(model, torch.tensor([1, 2, 3]), 12, temperature=0, eos_token_id=eos))
    first_eos = greedy[0, 3:].tolist().index(eos)
    assert len(stopped) == first_eos + 1


def test_streamed_pieces_never_end_inside_a_character():
    model = tiny_model("GF-MH", vocab_size=256)
    pieces = list(stream_text(model, ByteTokenizer(), "é", max_new_tokens=60, temperature=1.0, seed=3))
    assert pieces and all(not piece.endswith("\ufffd") for piece in pieces[:-1])


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="empty"):
        list(stream_text(tiny_model("GF-MH"), CharTokenizer("ab"), "", max_new_tokens=3))
    assert state_nbytes([]) == 0


# ------------------------------------------------------------------------------------------------------
# The command line, on a run folder written by the trainer.

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("groundthink.training.checkpoint")
    from groundthink.cli.main import main

    root = tmp_path_factory.mktemp("cli")
    text = root / "text.txt"
    text.write_text("ROMEO: But, soft! what light through yonder window breaks?\n" * 40)
    tiny = ["model.hidden_size=32", "model.n_layers=2", "model.mamba_head_dim=16", "model.rwkv_heads=2",
            "model.mamba_state_size=16", "train.eval_every=3", "train.eval_windows=2", "train.progress=false",
            "train.tensorboard=false", f"data.cache_dir={root / 'cache'}"]
    argv = ["train", "--model", "GF-MH", "--data", str(text), "--steps", "3", "--batch-size", "2", "--seq-len", "16",
            "--device", "cpu", "--out", str(root / "run")]
    assert main(argv + [arg for item in tiny for arg in ("--set", item)]) == 0
    return root / "run"


def cli(capsys, *argv):
    from groundthink.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_generate_streams_seeded_text(run_dir, capsys):
    from groundthink.training.checkpoint import load_run

    settings = ["--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0.8", "--top-k", "50",
                "--top-p", "0.95", "--seed", "0"]
    code, first, err = cli(capsys, "generate", str(run_dir), *settings)
    assert code == 0 and "20 tokens" in err
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 20 + 1  # char level, final newline
    assert cli(capsys, "generate", str(run_dir), *settings)[1] == first
    assert cli(capsys, "generate", str(run_dir), *settings[:-1], "1")[1] != first
    # The same text as the library call on the loaded run.
    loaded = load_run(run_dir)
    expected = "".join(stream_text(loaded.model, loaded.tokenizer, "ROMEO:", 20, temperature=0.8, top_k=50,
                                   top_p=0.95, seed=0))
    assert first == "ROMEO:" + expected + "\n"


@pytest.mark.parametrize("argv, message", [
    (["--top-p", "1.5"], "top_p"),
    (["--max-new-tokens", "0"], "max-new-tokens"),
    (["--prompt", "€"], "vocabulary"),
    (["--compile", "fastest"], "gemv"),
])
def test_cli_generate_bad_input_is_one_line(run_dir, capsys, argv, message):
    code, out, err = cli(capsys, "generate", str(run_dir), *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.extra("hf")
def test_cli_export_writes_a_folder_that_loads_exactly(run_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    import groundthink.hf  # noqa: F401 - registers the Auto classes
    from groundthink.training.checkpoint import load_run

    code, out, _ = cli(capsys, "export", str(run_dir), str(tmp_path / "hf"))
    assert code == 0 and "model.safetensors" in out
    loaded, exported = load_run(run_dir), AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO: But")])
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, loaded.model(ids).logits)
    code, _, err = cli(capsys, "export", str(run_dir), str(tmp_path / "hf"))
    assert code == 2 and "not empty" in err


def test_decode_benchmark_runs_and_reports_flat_recurrent_state(tmp_path):
    from training_utils import load_benchmark

    bench = load_benchmark("decode_bench")
    out = tmp_path / "decode.json"
    assert bench.main(["--small", "--contexts", "8", "32", "--new-tokens", "2", "--warmup", "1", "--hidden-size",
                       "32", "--n-layers", "1", "--threads", str(torch.get_num_threads()), "--json", str(out)]) == 0
    results = {(r["model"], r["context"]): r for r in __import__("json").loads(out.read_text())["results"]}
    assert set(results) == {("GF-MH", 8), ("GF-MH", 32), ("GPT2", 8), ("GPT2", 32)}
    assert all(r["decode_tok_s"] > 0 and r["mode"] == "eager" for r in results.values())
    hybrid = [results["GF-MH", c]["state_bytes_after_prefill"] for c in (8, 32)]
    kv = [results["GPT2", c]["state_bytes_after_prefill"] for c in (8, 32)]
    assert hybrid[0] == hybrid[1] and kv[1] == 4 * kv[0]
