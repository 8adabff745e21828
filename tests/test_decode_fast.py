"""The fast decode path: one-token ops == their sequence versions, the capturable sampler == torch.multinomial,
the fixed-buffer step (what a CUDA graph captures, sampling included) == the eager decoder, and the GEMV
compile mode's rewrites == the products they replace."""
import torch

from groundthink.inference.compile import addmm_as_reduction, bmm_as_reduction, mm_as_reduction
from groundthink.inference.cuda_graph import DecodeStep
from groundthink.inference.generate import Decoder, decode_tokens
from groundthink.inference.sampling import Sampler, draw
from groundthink.ops.shortconv import causal_conv1d_silu, causal_conv1d_silu_torch, token_shift_delta, \
    token_shift_delta_torch
from tests.test_generate import TINY, tiny_model


def test_one_token_conv_and_token_shift_equal_the_sequence_versions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    history = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    step, sequence_path = causal_conv1d_silu(x, weight, bias, history), causal_conv1d_silu_torch(x, weight, bias, history)
    for got, want in zip(step, sequence_path):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    y, _ = causal_conv1d_silu(x, weight, None, history)
    torch.testing.assert_close(y, causal_conv1d_silu_torch(x, weight, None, history)[0], rtol=1e-12, atol=1e-12)
    last = torch.randn(2, 6, generator=g, dtype=torch.float64)
    sequence = torch.cat([x, x], dim=1)  # the general path's delta at the first of two tokens
    torch.testing.assert_close(token_shift_delta(x, last), token_shift_delta_torch(sequence, last)[:, :1])


def test_draw_is_multinomial_with_the_same_generator():
    probs = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)).softmax(-1)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(20):
        assert torch.equal(draw(probs, g1), torch.multinomial(probs, 1, generator=g2).squeeze(-1))


def test_fixed_buffer_step_with_sampling_equals_the_eager_decoder():
    model = tiny_model("GF-MH")
    prompt = torch.randint(0, TINY["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(0))
    sampler = Sampler(0.9, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(3))
    reference = Decoder(model, sampler=Sampler(0.9, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(3)))
    first = reference.prefill(prompt).argmax(-1)
    step = DecodeStep(model, reference.states, sampler)
    step.tokens.copy_(first.view(-1, 1))
    token = first
    with torch.no_grad():
        for _ in range(6):
            logits, fed = step()
            want_logits = reference.step(token)
            token = reference.sampler(want_logits)
            torch.testing.assert_close(logits, want_logits, rtol=0, atol=0)
            assert torch.equal(fed, token) and torch.equal(step.tokens.view(-1), token)


def test_decode_tokens_yields_what_generation_samples():
    model = tiny_model("RWKV6")
    prompt = torch.tensor([[1, 2, 3]])
    decoder = Decoder(model, sampler=Sampler(0.0))
    first = decoder.sampler(decoder.prefill(prompt))
    tokens = torch.stack(list(decode_tokens(decoder, first, 5, host=True)), dim=1)
    with torch.no_grad():
        full = model(torch.cat([prompt, tokens[:, :-1]], dim=1)).logits
    assert torch.equal(tokens[0], full[0, 2:].argmax(-1))


def test_gemv_rewrites_equal_the_products():
    g = torch.Generator().manual_seed(0)
    a, b, bias = torch.randn(1, 8, generator=g), torch.randn(8, 5, generator=g), torch.randn(5, generator=g)
    torch.testing.assert_close(mm_as_reduction(a, b), a @ b)
    torch.testing.assert_close(addmm_as_reduction(bias, a, b), torch.addmm(bias, a, b))
    torch.testing.assert_close(addmm_as_reduction(bias, a, b, beta=0.5, alpha=2.0),
                               torch.addmm(bias, a, b, beta=0.5, alpha=2.0))
    x, y = torch.randn(3, 1, 8, generator=g), torch.randn(3, 8, 4, generator=g)
    torch.testing.assert_close(bmm_as_reduction(x, y), x @ y)
    yt, xt = y.transpose(1, 2), x.transpose(1, 2)  # one column on the right
    torch.testing.assert_close(bmm_as_reduction(yt, xt), yt @ xt)
    assert mm_as_reduction(torch.randn(2, 8), b) is NotImplemented


def test_gemv_compiled_step_matches_the_eager_step():
    model = tiny_model("GF-MH", n_layers=1)
    decoder = Decoder(model)
    decoder.prefill(torch.randint(0, TINY["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(0)))
    eager, compiled = DecodeStep(model, decoder.states), DecodeStep(model, decoder.states, compile_mode="gemv")
    with torch.no_grad():
        for token in (3, 17, 4):
            eager.tokens.fill_(token), compiled.tokens.fill_(token)
            torch.testing.assert_close(compiled()[0], eager()[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(compiled.states[0]["rwkv6"] + compiled.states[0]["mamba2"],
                         eager.states[0]["rwkv6"] + eager.states[0]["mamba2"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
