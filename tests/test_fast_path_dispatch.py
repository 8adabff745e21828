"""The CUDA fast-path dispatchers on CPU: same results as before (the PyTorch versions), carried state kept.

The kernels themselves are checked against these on the GPU (tests/test_gpu_fast_paths.py).
"""
import pytest
import torch

from groundthink.ops.backend import fused_ops_wanted, pick_configs
from groundthink.ops.norms import RMSNorm
from groundthink.ops.shortconv import causal_conv1d_silu, token_shift_delta


def test_dispatch_stays_on_pytorch_on_cpu():
    assert fused_ops_wanted(torch.zeros(1)) is False


def test_rms_norm_is_nn_rmsnorm_on_cpu():
    norm = RMSNorm(24, eps=1e-5)
    ref = torch.nn.RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    ref.load_state_dict(norm.state_dict())  # same parameter names: checkpoints load either way
    x = torch.randn(3, 5, 24)
    assert torch.equal(norm(x), ref(x))


def test_conv_in_pieces_equals_conv_whole():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 11, 6, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), \
        torch.randn(6, dtype=torch.float64)
    whole, last = causal_conv1d_silu(x, weight, bias)
    outs, history = [], None
    for start, end in [(0, 2), (2, 3), (3, 11)]:  # pieces shorter than the window splice the history
        out, history = causal_conv1d_silu(x[:, start:end], weight, bias, history)
        outs.append(out)
    assert torch.allclose(torch.cat(outs, dim=1), whole, rtol=0, atol=1e-12)
    assert torch.equal(history, last) and torch.equal(last, x[:, -3:].transpose(1, 2))


def test_token_shift_with_previous_token():
    x = torch.randn(2, 5, 3)
    delta = token_shift_delta(x)
    assert torch.equal(delta[:, 0], -x[:, 0]) and torch.equal(delta[:, 1:], x[:, :-1] - x[:, 1:])
    previous = torch.randn(2, 3)
    assert torch.equal(token_shift_delta(x, previous)[:, 0], previous - x[:, 0])


@pytest.mark.extra("fla")
def test_quick_autotune_keeps_smallest_and_largest_block_with_few_stages():
    import triton

    configs = [triton.Config({"BK": bk, "BV": bv}, num_warps=w, num_stages=s)
               for bk in (32, 64) for bv in (32, 64) for w in (1, 2, 4, 8) for s in (2, 3, 4)]
    kept = pick_configs(configs)
    assert [(c.kwargs, c.num_warps, c.num_stages) for c in kept] == [
        ({"BK": 32, "BV": 32}, 4, 2), ({"BK": 64, "BV": 64}, 4, 2)]
    only_warps = [triton.Config({}, num_warps=w, num_stages=s) for w in (2, 8, 16) for s in (1, 2)]
    assert [(c.num_warps, c.num_stages) for c in pick_configs(only_warps)] == [(2, 1)]


@pytest.mark.extra("fla")
def test_quick_autotune_cuts_after_the_kernels_own_pruning():
    import triton

    from groundthink.ops.backend import quicken_autotuner

    @triton.jit
    def kernel(x, BK: triton.language.constexpr):
        pass

    configs = [triton.Config({"BK": bk}, num_warps=w, num_stages=s) for bk in (16, 32, 64) for w in (2, 4)
               for s in (2, 3)]
    # A kernel-specific rule (as FLA's): only BK < 64, and never BK=32 with 4 warps.
    rule = lambda cs, nargs, **kw: [c for c in cs if c.kwargs["BK"] < 64 and (c.kwargs["BK"], c.num_warps) != (32, 4)]
    tuner = triton.autotune(configs=configs, key=[], prune_configs_by={"early_config_prune": rule})(kernel)
    tuner.nargs = {}
    assert quicken_autotuner(tuner) == 1 and quicken_autotuner(tuner) == 0
    kept = tuner.prune_configs({})
    assert [(c.kwargs["BK"], c.num_warps, c.num_stages) for c in kept] == [(16, 4, 2), (32, 2, 2)]
    assert len(tuner.configs) == len(configs)  # FLA's own rule still sees every config


def test_fused_recurrent_switch_reads_the_environment(monkeypatch):
    from groundthink.ops.backend import fused_recurrent_max_len

    for value, expected in ((None, 0), ("0", 0), ("128", 128)):
        fused_recurrent_max_len.cache_clear()
        if value is None:
            monkeypatch.delenv("GROUNDTHINK_FUSED_RECURRENT_MAX_LEN", raising=False)
        else:
            monkeypatch.setenv("GROUNDTHINK_FUSED_RECURRENT_MAX_LEN", value)
        assert fused_recurrent_max_len() == expected
    fused_recurrent_max_len.cache_clear()
    monkeypatch.setenv("GROUNDTHINK_FUSED_RECURRENT_MAX_LEN", "short")
    with pytest.raises(ValueError, match="GROUNDTHINK_FUSED_RECURRENT_MAX_LEN='short' is not an integer"):
        fused_recurrent_max_len()
    fused_recurrent_max_len.cache_clear()


def test_hopper_chunk_kernel_is_used_only_where_its_self_check_passed(monkeypatch, tmp_path):
    from groundthink.ops import fla_hopper

    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path))
    monkeypatch.setattr(fla_hopper, "HOPPER_CHECKS", {})
    monkeypatch.setattr(fla_hopper, "PENDING_CHECKS", {})
    agree = {"out": 1e-4, "dq": 8e-4, "dk": 7e-4, "dv": 1.3e-3, "dg": 9e-4, "dh0": 1e-8}   # as measured on an H100
    miscompiled = dict(agree, dk=0.5)                                                  # FLA #640's signature
    fla_hopper.HOPPER_CHECKS[(128, 64, torch.float32, "cuda:0")] = agree
    fla_hopper.HOPPER_CHECKS[(64, 64, torch.float32, "cuda:0")] = miscompiled
    fla_hopper.HOPPER_CHECKS[(128, 64, torch.bfloat16, "cuda:0")] = dict(agree, dk=3e-2)  # bf16: looser
    assert fla_hopper.hopper_chunk_verified(128, 64, torch.float32, "cuda:0")
    assert not fla_hopper.hopper_chunk_verified(64, 64, torch.float32, "cuda:0")
    assert fla_hopper.hopper_chunk_verified(128, 64, torch.bfloat16, "cuda:0")
    # An unchecked configuration met during a CUDA graph capture (no checks possible there) is not trusted.
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not fla_hopper.hopper_chunk_verified(32, 64, torch.float32, "cuda:0")
    assert (32, 64, torch.float32, "cuda:0") not in fla_hopper.HOPPER_CHECKS


def test_hopper_self_check_that_faults_means_not_verified(monkeypatch, tmp_path):
    # The self-check runs in a child process, so a kernel that faults cannot take this process down. Here
    # the child really fails (this machine has no CUDA); the configuration is then not verified, with a
    # warning that names the child's error (not the warnings it printed before, e.g. FLA's CPU fallback).
    from groundthink.ops import fla_hopper

    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path))
    monkeypatch.setattr(fla_hopper, "HOPPER_CHECKS", {})
    monkeypatch.setattr(fla_hopper, "PENDING_CHECKS", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"failed its self-check .*state size 16, head dim 32.*: the Hopper "
                                            r"self-check needs FLA's kernels on a CUDA device.*\(exit status 1\).*chunk_gla"):
        assert not fla_hopper.hopper_chunk_verified(16, 32, torch.bfloat16, "cuda:0")
    assert fla_hopper.HOPPER_CHECKS[(16, 32, torch.bfloat16, "cuda:0")] == {"fault": float("inf")}
    assert not list(tmp_path.iterdir())  # no GPU to name: nothing stored


DDLERP_RESULTS = ["r", "w", "k", "v", "g", "grad_x", "grad_delta", "grad_mix_low", "grad_mix_proj", "grad_bias"]


def ddlerp_results(device: str, dtype: torch.dtype, op) -> list[torch.Tensor]:
    """``op`` (a ``ddlerp``) on fixed random inputs: its five outputs and the gradients (``DDLERP_RESULTS``).

    The mix comes from the layer's einsum (mix index outermost in memory, as in ``RWKV6.forward``); 7 tokens
    x 2 sequences and 40 channels, so neither rows nor channels fill whole blocks.
    """
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*shape, generator=g).to(device)
              for shape in ((2, 7, 40), (2, 7, 40), (2, 7, 5, 3), (40, 5, 3), (5, 40))]
    weights = [torch.randn(2, 7, 40, generator=g).to(device) for _ in range(5)]
    x, delta, low, proj, bias = [t.requires_grad_(True) for t in inputs]
    mix = torch.einsum("btnr,hnr->btnh", low.to(dtype), proj.to(dtype))
    outs = op(x.to(dtype), delta.to(dtype), mix, bias)
    sum((out.float() * w).sum() for out, w in zip(outs, weights)).backward()
    return [out.detach() for out in outs] + [x.grad, delta.grad, low.grad, proj.grad, bias.grad]


def ddlerp_errors(device: str, dtype: torch.dtype) -> dict[str, float]:
    """Relative (norm) difference, Triton ``ddlerp`` vs the PyTorch one, per output and gradient."""
    from groundthink.ops.ddlerp import ddlerp_torch
    from groundthink.ops.ddlerp_triton import ddlerp_fused

    return {name: (torch.linalg.vector_norm((a.double() - b.double())) / torch.linalg.vector_norm(b.double())).item()
            for name, a, b in zip(DDLERP_RESULTS, ddlerp_results(device, dtype, ddlerp_fused),
                                  ddlerp_results(device, dtype, ddlerp_torch))}


@pytest.mark.extra("fla")
def test_ddlerp_triton_kernel_under_the_interpreter():
    # Triton's interpreter runs the kernels on CPU (float32 only: numpy has no bf16); the GPU test covers bf16.
    # A fresh process: the interpreter is chosen when a kernel is defined.
    import json
    import os
    import subprocess
    import sys

    code = ("import json, torch, test_fast_path_dispatch as t; "
            "print(json.dumps(t.ddlerp_errors('cpu', torch.float32)))")
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 10 and max(errors.values()) < 1e-6, errors
