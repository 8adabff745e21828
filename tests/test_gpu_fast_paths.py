"""The CUDA kernels compute what the CPU path computes (run on the device machine: ``pytest -m gpu``).

Each fused kernel (FLA's norms, short conv, token shift, the RWKV-6 and SSD scans; GroundThink's RWKV-6 mixes
and fused layer kernels) is compared with the PyTorch version of the same op, forward and gradients. Whole
models and training steps: tests/test_gpu_models.py. Inputs are fresh random draws, never zeros. Float32
everywhere except where bf16 autocast is the claim. FLA's float32 dots run in TF32 (about 1e-3 relative),
hence the tolerances. Every measured error is appended to $GROUNDTHINK_PARITY_LOG (JSON lines) when set.
"""
import json
import os

import pytest
import torch

pytestmark = pytest.mark.gpu

from gpu_checks import check, check_all, cuda, grads_of, rel_err


# ---------------------------------------------------------------------------------------------------------
# Fused small ops == their PyTorch versions (same device, float32)

def test_group_norm_kernel():
    from groundthink.ops.norms import group_norm, group_norm_torch

    x, w, b = cuda(torch.randn(3, 50, 64), 1 + 0.1 * torch.randn(64), 0.1 * torch.randn(64))
    out, grads = grads_of(lambda *t: group_norm(*t, 4, 1e-5), x, w, b)
    ref, ref_grads = grads_of(lambda *t: group_norm_torch(*t, 4, 1e-5), x, w, b)
    check("group_norm.out", out, ref, 1e-5)
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        check(f"group_norm.grad_{name}", g, r, 1e-4)


def test_gated_rms_norm_kernel():
    from groundthink.ops.norms import gated_rms_norm, gated_rms_norm_torch

    x, z, w = cuda(torch.randn(3, 50, 128), torch.randn(3, 50, 128), 1 + 0.1 * torch.randn(128))
    out, grads = grads_of(lambda *t: gated_rms_norm(*t, 1e-5, 64), x, z, w)
    ref, ref_grads = grads_of(lambda *t: gated_rms_norm_torch(*t, 1e-5, 64), x, z, w)
    check("gated_rms_norm.out", out, ref, 1e-5)
    for name, g, r in zip(("x", "gate", "weight"), grads, ref_grads):
        check(f"gated_rms_norm.grad_{name}", g, r, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_kernel(dtype):
    from groundthink.ops.norms import RMSNorm

    (x, w) = cuda(torch.randn(4, 40, 96).to(dtype), 1 + 0.1 * torch.randn(96))

    def fused(t, weight):
        norm = RMSNorm(96, eps=1e-5).cuda()
        del norm.weight
        norm.weight = weight  # the differentiable leaf, so its gradient can be compared
        return norm(t)

    out, grads = grads_of(fused, x, w)
    ref, ref_grads = grads_of(lambda t, weight: torch.nn.functional.rms_norm(t.float(), (96,), weight, 1e-5), x, w)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the kernel's output is rounded to bf16
    check(f"rms_norm_{str(dtype)[6:]}.out", out, ref, tol)
    for name, g, r in zip(("x", "weight"), grads, ref_grads):
        check(f"rms_norm_{str(dtype)[6:]}.grad_{name}", g, r, 10 * tol)


def test_causal_conv_kernel_on_a_strided_slice():
    from groundthink.ops.shortconv import causal_conv1d_silu, causal_conv1d_silu_torch

    # As in Mamba-2: the conv input is a column slice of the in_proj output (rows not contiguous).
    wide, w, b = cuda(torch.randn(2, 70, 200), 0.3 * torch.randn(96, 4), 0.1 * torch.randn(96))

    def run(op):
        return lambda full, weight, bias: op(full[..., 40:136], weight, bias)

    out, hist = causal_conv1d_silu(wide[..., 40:136], w, b)
    ref_out, ref_hist = causal_conv1d_silu_torch(wide[..., 40:136], w, b)
    check("causal_conv.out", out, ref_out, 1e-5)
    assert torch.equal(hist, ref_hist)
    _, grads = grads_of(run(causal_conv1d_silu), wide, w, b)
    _, ref_grads = grads_of(run(causal_conv1d_silu_torch), wide, w, b)
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        check(f"causal_conv.grad_{name}", g, r, 1e-4)


def test_token_shift_kernel():
    from groundthink.ops.shortconv import token_shift_delta, token_shift_delta_torch

    (x,) = cuda(torch.randn(4, 33, 64))
    out, (grad,) = grads_of(token_shift_delta, x)
    ref, (ref_grad,) = grads_of(token_shift_delta_torch, x)
    check("token_shift.out", out, ref, 1e-6)
    check("token_shift.grad", grad, ref_grad, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ddlerp_kernel(dtype):
    # RWKV-6's five mixes: the Triton kernels vs the PyTorch op, same device, same input dtype. In bf16 the
    # kernel rounds each result once from float32, PyTorch also rounds mix + bias first (~2 bf16 ulps).
    from test_fast_path_dispatch import DDLERP_RESULTS, ddlerp_results

    from groundthink.ops.ddlerp import ddlerp_torch
    from groundthink.ops.ddlerp_triton import ddlerp_fused

    tol = 1e-6 if dtype == torch.float32 else 2e-2
    results = zip(DDLERP_RESULTS, ddlerp_results("cuda", dtype, ddlerp_fused),
                  ddlerp_results("cuda", dtype, ddlerp_torch))
    check_all((f"ddlerp_{str(dtype)[6:]}.{name}", fused, ref, tol) for name, fused, ref in results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_kernels(dtype, monkeypatch):
    # The layers' fused kernels (Mamba-2's input and output sides, RWKV-6's group norm + gate) vs their PyTorch
    # references, same device and input dtype, every case of the interpreter test (tests/test_layer_kernels.py).
    # Both round each result once from float32 (bf16: within ~2 ulps).
    import test_layer_kernels as cases

    from groundthink.ops.gated_group_norm import gated_group_norm_torch
    from groundthink.ops.gated_group_norm_triton import gated_group_norm_fused
    from groundthink.ops.mamba2_inputs import mamba2_scan_inputs_torch
    from groundthink.ops.mamba2_inputs_triton import mamba2_scan_inputs_fused
    from groundthink.ops.skip_gated_norm import skip_gated_rms_norm_torch
    from groundthink.ops.skip_gated_norm_triton import skip_gated_rms_norm_fused

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the reference's depthwise conv in float32
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    groups = (("inputs", cases.SCAN_INPUT_CASES, cases.SCAN_INPUT_RESULTS, cases.scan_input_results,
               mamba2_scan_inputs_fused, mamba2_scan_inputs_torch),
              ("norm", cases.NORM_CASES, cases.NORM_RESULTS, cases.norm_results, skip_gated_rms_norm_fused,
               skip_gated_rms_norm_torch),
              ("group_norm", cases.GROUP_NORM_CASES, cases.GROUP_NORM_RESULTS, cases.group_norm_results,
               gated_group_norm_fused, gated_group_norm_torch))
    items = []
    for group, case_list, names, results, fused_op, torch_op in groups:
        for case in case_list:
            for name, fused, ref in zip(names, results(case, "cuda", dtype, fused_op),
                                        results(case, "cuda", dtype, torch_op)):
                if ref is not None:  # the conv bias's gradient, in the case without one
                    items.append((f"layer_kernels_{str(dtype)[6:]}.{group}.{case}.{name}", fused, ref, tol))
    check_all(items)


@pytest.mark.parametrize("kind", ["mamba2", "rwkv6"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_layer_fused_path(kind, precision, monkeypatch):
    # A layer on CUDA with its fused kernels (the default) and without them (GROUNDTHINK_FUSED_LAYERS=0: FLA's
    # kernels and PyTorch's small ops), against the same layer in float64 on CPU: output, input gradient, every
    # parameter's gradient, the carried states. Each must be within tolerance (a gradient's scaled by its sum's
    # cancellation on the reference, benchmarks/grad_sums.py) or no worse than twice the path the kernels replace.
    import copy

    from training_utils import load_benchmark

    from groundthink.layers import RWKV6, Mamba2

    torch.manual_seed(0)
    layer = (Mamba2(hidden_size=64, head_dim=32, expand=2, state_size=32) if kind == "mamba2"
             else RWKV6(hidden_size=64, num_heads=4))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    x = torch.randn(3, 150, 64, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(3, 150, 64, generator=torch.Generator().manual_seed(2))

    def run(module, inputs):
        inputs = inputs.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16" and inputs.is_cuda):
            out, state = module(inputs)
        return (out, state, inputs), (out.double() * weight.to(out.device, torch.float64)).sum()

    def collect(module, out, state, inputs):
        return {"out": out.detach(), "grad_input": inputs.grad,
                **{f"state_{i}": s.detach() for i, s in enumerate(state)},
                **{f"grad_{n}": p.grad for n, p in module.named_parameters()}}

    reference = copy.deepcopy(layer).double()
    outputs, cancellations, _ = load_benchmark("grad_sums").gradient_cancellations(
        reference, lambda: run(reference, x.double()))
    results = {"reference": collect(reference, *outputs)}
    layer = layer.cuda()
    for path, switch in (("fused", "1"), ("unfused", "0")):
        monkeypatch.setenv("GROUNDTHINK_FUSED_LAYERS", switch)
        layer.zero_grad(set_to_none=True)
        outputs, loss = run(layer, x.cuda())
        loss.backward()
        results[path] = collect(layer, *outputs)
    out_tol, grad_tol = (2e-3, 1e-2) if precision == "fp32" else (3e-2, 5e-2)
    items = []
    for name, ref in results["reference"].items():
        tol = grad_tol * cancellations.get(name[len("grad_"):], 1.0) if name.startswith("grad") else out_tol
        items.append((f"{kind}_layer_fused_{precision}.{name}", results["fused"][name], ref,
                      max(tol, 2 * rel_err(results["unfused"][name], ref))))
    check_all(items)


# ---------------------------------------------------------------------------------------------------------
# The scans: FLA on CUDA == the chunked PyTorch scan on CPU (float64 reference)

@pytest.fixture
def scan_switch(monkeypatch):
    """Set GROUNDTHINK_FUSED_RECURRENT_MAX_LEN for one test (64 = FLA's fused recurrent kernels up to 64 tokens)."""
    from groundthink.ops.backend import fused_recurrent_max_len

    def set_switch(max_len: int):
        monkeypatch.setenv("GROUNDTHINK_FUSED_RECURRENT_MAX_LEN", str(max_len))
        fused_recurrent_max_len.cache_clear()
    yield set_switch
    monkeypatch.undo()
    fused_recurrent_max_len.cache_clear()


# (64, 64): FLA's fused recurrent kernel; (64, 0) and (200, 0): its chunked kernels (the default).
@pytest.mark.parametrize("T,switch", [(64, 64), (64, 0), (200, 0)])
def test_rwkv6_scan(T, switch, scan_switch):
    scan_switch(switch)
    from groundthink.ops.rwkv6 import rwkv6, rwkv6_chunk_torch

    g = torch.Generator().manual_seed(T)
    B, H, K, V = 2, 4, 16, 32
    r, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    w = -torch.exp(torch.randn(B, T, H, K, generator=g) - 1)
    u, h0 = torch.randn(H, K, generator=g), torch.randn(B, H, K, V, generator=g)
    out, grads = grads_of(lambda *t: rwkv6(*t), *cuda(r, k, v, w, u, h0))
    ref, ref_grads = grads_of(lambda *t: rwkv6_chunk_torch(*t), *(t.double() for t in (r, k, v, w, u, h0)))
    check(f"rwkv6_T{T}_switch{switch}.out", out, ref, 2e-3)
    for name, a, b in zip("rkvwuh", grads, ref_grads):
        check(f"rwkv6_T{T}_switch{switch}.grad_{name}", a, b, 5e-3)


# switch 64: FLA's fused recurrent kernel; 0: chunked (the default), at state sizes 16, 64 and 128 (on Hopper
# + Triton < 3.7.1 each size takes chunk_simple_gla only if its self-check passes, else chunk_gla: both must
# match the scan). State 16 with head dim 32 is `groundthink train`'s default model, where the self-check's
# kernel faulted on an H100 (it now runs in a child process); the larger states take head dim 64, the seed design's
# (benchmarks/gpu_parity.py's), so the suite runs one self-check (a child process compiling FLA's kernels) per
# state size, not two.
@pytest.mark.parametrize("T,N,switch", [(64, 64, 64), (64, 64, 0), (200, 16, 0), (200, 64, 0), (200, 128, 0)])
def test_ssd_scan(T, N, switch, scan_switch):
    scan_switch(switch)
    from groundthink.ops.ssd import ssd, ssd_chunk_torch

    g = torch.Generator().manual_seed(T)
    B, H, P = 2, 4, 32 if N == 16 else 64
    x = torch.randn(B, T, H, P, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, generator=g) - 1)
    A = -torch.exp(torch.randn(H, generator=g))
    Bm, Cm = 0.3 * torch.randn(B, T, H, N, generator=g), 0.3 * torch.randn(B, T, H, N, generator=g)
    h0 = torch.randn(B, H, P, N, generator=g)
    out, grads = grads_of(lambda *t: ssd(*t), *cuda(x, dt, A, Bm, Cm, h0))
    ref, ref_grads = grads_of(lambda *t: ssd_chunk_torch(*t), *(t.double() for t in (x, dt, A, Bm, Cm, h0)))
    log_hopper_checks()
    names = ("x", "dt", "A", "B", "C", "h0")
    tols = dict.fromkeys(names, 5e-3)
    tols["A"] *= a_gradient_cancellation(x, dt, A, Bm, Cm, h0)
    label = f"ssd_T{T}_N{N}_switch{switch}"
    check_all([(f"{label}.out", out, ref, 2e-3)]
              + [(f"{label}.grad_{name}", a, b, tols[name]) for name, a, b in zip(names, grads, ref_grads)])


def a_gradient_cancellation(x, dt, A, Bm, Cm, h0) -> float:
    """How much summing over tokens amplifies relative error in A's gradient (``gpu_parity``'s measure,
    for the loss ``grads_of`` uses: its fixed random projection of the output)."""
    from training_utils import load_benchmark

    projection = torch.randn(x.shape, generator=torch.Generator(device="cpu").manual_seed(123))
    inputs = {"x": x, "dt": dt, "A": A, "B": Bm, "C": Cm, "initial_state": h0}
    return load_benchmark("gpu_parity").ssd_a_grad_amplification(inputs, projection, state_weight=None)


def log_hopper_checks():
    """Record the SSD's Hopper self-checks (which chunked kernel each state size got) in the parity log."""
    from groundthink.ops.fla_hopper import HOPPER_CHECKS

    path = os.environ.get("GROUNDTHINK_PARITY_LOG")
    if path and HOPPER_CHECKS:
        with open(path, "a") as f:
            for key, errors in HOPPER_CHECKS.items():
                f.write(json.dumps({"hopper_self_check": [str(k) for k in key], "rel_err": errors}) + "\n")
