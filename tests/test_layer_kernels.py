"""The layers' fused kernels on CPU, under Triton's interpreter: Mamba-2's input side (``ops/mamba2_inputs*.py``)
and output side (``ops/skip_gated_norm*.py``), RWKV-6's output side (``ops/gated_group_norm*.py``). Outputs and
every gradient against the PyTorch references, and each layer's fused path against its CPU path; and every
kernel compiled for Hopper (sm_90). The same helpers run on the GPU in tests/test_gpu_fast_paths.py (float32
and bf16).
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from extras import require_extra

require_extra("fla")  # Triton (its interpreter runs the kernels on CPU)
pytestmark = pytest.mark.extra("fla")
import triton  # noqa: E402

# Shapes chosen so that no tile is full: odd head sizes and state sizes, sequences not a multiple of the
# kernels' token blocks (and one shorter than the convolution window), one and two groups.
SCAN_INPUT_CASES = {
    "groups2_bias": dict(batch=2, seq_len=45, heads=4, head_dim=12, groups=2, state=10, bias=True, limit=None),
    "groups1_nobias_clamp": dict(batch=1, seq_len=70, heads=3, head_dim=20, groups=1, state=16, bias=False,
                                 limit=(0.05, 0.5)),
    "short": dict(batch=3, seq_len=2, heads=2, head_dim=8, groups=1, state=4, bias=True, limit=None),
}
NORM_CASES = {
    "one_group": dict(batch=2, seq_len=7, heads=3, head_dim=20, groups=1),
    "two_groups_many_rows": dict(batch=3, seq_len=50, heads=4, head_dim=6, groups=2),
}
GROUP_NORM_CASES = {
    "heads4": dict(batch=2, seq_len=7, heads=4, head_dim=20),
    "heads3_many_rows": dict(batch=3, seq_len=50, heads=3, head_dim=8),
}
SCAN_INPUT_RESULTS = ["x", "k", "q", "g", "grad_xBC_and_dt", "grad_conv_weight", "grad_conv_bias", "grad_dt_bias",
                      "grad_A_log"]
NORM_RESULTS = ["out", "grad_y", "grad_x", "grad_D", "grad_gate", "grad_weight"]
GROUP_NORM_RESULTS = ["out", "grad_o", "grad_gate", "grad_weight", "grad_bias"]


def _leaves(generator, device, *shapes_and_scales):
    return [(scale * torch.randn(*shape, generator=generator) + shift).to(device).requires_grad_(True)
            for shape, scale, shift in shapes_and_scales]


def _backward_of_weighted_sum(outs, generator, device):
    weights = [torch.randn(out.shape, generator=generator).to(device) for out in outs]
    sum((out.float() * w).sum() for out, w in zip(outs, weights)).backward()


def scan_input_leaves(case: str, device: str) -> list[torch.Tensor]:
    """Fixed random leaves for ``SCAN_INPUT_CASES[case]``: ``wide`` (the in-projection's output: ``xBC`` and ``dt``
    are column slices of it), the conv weight and bias, ``dt_bias``, ``A_log``."""
    c = SCAN_INPUT_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    channels = c["heads"] * c["head_dim"] + 2 * c["groups"] * c["state"]
    return _leaves(g, device, ((c["batch"], c["seq_len"], channels + c["heads"] + 5), 1.0, 0.0),
                   ((channels, 4), 0.5, 0.0), ((channels,), 0.1, 0.0), ((c["heads"],), 1.0, -2.0),
                   ((c["heads"],), 1.0, 0.0))


def split_wide(case: str, wide: torch.Tensor):
    """``(xBC, dt)``: the column slices of ``wide``."""
    c = SCAN_INPUT_CASES[case]
    channels = c["heads"] * c["head_dim"] + 2 * c["groups"] * c["state"]
    return wide[..., 2:2 + channels], wide[..., 2 + channels:2 + channels + c["heads"]]


def scan_input_results(case: str, device: str, dtype: torch.dtype, op) -> list:
    """``op`` (a ``mamba2_scan_inputs``) on ``scan_input_leaves``: its four outputs and the gradients of a random
    weighting of them (``SCAN_INPUT_RESULTS``; the conv bias's is None without one)."""
    c = SCAN_INPUT_CASES[case]
    wide, conv_weight, conv_bias, dt_bias, A_log = leaves = scan_input_leaves(case, device)
    outs = op(*split_wide(case, wide.to(dtype)), conv_weight, conv_bias if c["bias"] else None, dt_bias, A_log,
              c["limit"] or (0.0, float("inf")), c["heads"], c["groups"], c["state"])
    _backward_of_weighted_sum(outs, torch.Generator().manual_seed(99), device)
    return [out.detach() for out in outs] + [t.grad for t in leaves]


def norm_results(case: str, device: str, dtype: torch.dtype, op) -> list:
    """``op`` (a ``skip_gated_rms_norm``) on fixed random inputs of ``NORM_CASES[case]``, the gate a column slice:
    its output and every gradient (``NORM_RESULTS``)."""
    c = NORM_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    channels = c["heads"] * c["head_dim"]
    head_shape = (c["batch"], c["seq_len"], c["heads"], c["head_dim"])
    y, x, D, wide, weight = _leaves(g, device, (head_shape, 1.0, 0.0), (head_shape, 1.0, 0.0),
                                    ((c["heads"],), 1.0, 0.0), ((c["batch"], c["seq_len"], channels + 9), 1.0, 0.0),
                                    ((channels,), 0.1, 1.0))
    out = op(y.to(dtype), x.to(dtype), D, wide.to(dtype)[..., 4:4 + channels], weight, 1e-5, channels // c["groups"])
    _backward_of_weighted_sum([out], torch.Generator().manual_seed(99), device)
    return [out.detach()] + [t.grad for t in (y, x, D, wide, weight)]


def group_norm_results(case: str, device: str, dtype: torch.dtype, op) -> list:
    """``op`` (a ``gated_group_norm``) on fixed random inputs of ``GROUP_NORM_CASES[case]`` (``o`` off-centre, so the
    mean matters): its output and every gradient (``GROUP_NORM_RESULTS``)."""
    c = GROUP_NORM_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    channels = c["heads"] * c["head_dim"]
    shape = (c["batch"], c["seq_len"], channels)
    o, gate, weight, bias = _leaves(g, device, (shape, 2.0, 0.5), (shape, 1.0, 0.0), ((channels,), 0.1, 1.0),
                                    ((channels,), 0.1, 0.0))
    out = op(o.to(dtype), gate.to(dtype), weight, bias, c["heads"], 1e-5)
    _backward_of_weighted_sum([out], torch.Generator().manual_seed(99), device)
    return [out.detach()] + [t.grad for t in (o, gate, weight, bias)]


def relative_errors(names, results, references) -> dict[str, float]:
    return {name: 0.0 if b is None and a is None else
            (torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(b.double())).item()
            for name, a, b in zip(names, results, references)}


def kernel_errors(device: str, dtype: torch.dtype) -> dict[str, float]:
    """Relative (norm) difference, Triton kernels vs PyTorch references, per case, output and gradient."""
    from groundthink.ops.gated_group_norm import gated_group_norm_torch
    from groundthink.ops.gated_group_norm_triton import gated_group_norm_fused
    from groundthink.ops.mamba2_inputs import mamba2_scan_inputs_torch
    from groundthink.ops.mamba2_inputs_triton import mamba2_scan_inputs_fused
    from groundthink.ops.skip_gated_norm import skip_gated_rms_norm_torch
    from groundthink.ops.skip_gated_norm_triton import skip_gated_rms_norm_fused

    errors = {}
    for case in SCAN_INPUT_CASES:
        found = relative_errors(SCAN_INPUT_RESULTS, scan_input_results(case, device, dtype, mamba2_scan_inputs_fused),
                                scan_input_results(case, device, dtype, mamba2_scan_inputs_torch))
        errors.update({f"inputs.{case}.{name}": err for name, err in found.items()})
    for case in NORM_CASES:
        found = relative_errors(NORM_RESULTS, norm_results(case, device, dtype, skip_gated_rms_norm_fused),
                                norm_results(case, device, dtype, skip_gated_rms_norm_torch))
        errors.update({f"norm.{case}.{name}": err for name, err in found.items()})
    for case in GROUP_NORM_CASES:
        found = relative_errors(GROUP_NORM_RESULTS, group_norm_results(case, device, dtype, gated_group_norm_fused),
                                group_norm_results(case, device, dtype, gated_group_norm_torch))
        errors.update({f"group_norm.{case}.{name}": err for name, err in found.items()})
    return errors


def gla_naive(v, k, q, g):
    """``ssd_from_scan_inputs`` step by step: gated linear attention from a zero state, ``S_t = exp(g_t) S_{t-1} +
    v_t^T k_t``, ``y_t = S_t q_t`` (the CPU stand-in for FLA's scan in the layer test)."""
    batch, seq_len, heads, head_dim = v.shape
    state = v.new_zeros(batch, heads, head_dim, k.shape[-1])
    ys = []
    for t in range(seq_len):
        state = state * g[:, t].exp()[..., None, None] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append((state @ q[:, t, :, :, None]).squeeze(-1))
    return torch.stack(ys, dim=1).to(v.dtype), state


@contextlib.contextmanager
def swapped(module, name: str, value):
    """``module.name`` set to ``value`` for the block."""
    previous = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, previous)


def _perturbed(layer):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return layer


def layer_errors(kind: str) -> dict[str, float]:
    """A layer's fused path (its kernels, dispatched as on CUDA; for Mamba-2 ``gla_naive`` as the scan) vs its
    CPU path, float32: output, input gradient, every parameter's gradient and the carried states."""
    from groundthink.layers import mamba2 as mamba2_module
    from groundthink.layers.rwkv6 import RWKV6
    from groundthink.ops import gated_group_norm, mamba2_inputs, skip_gated_norm

    always = lambda t: True  # noqa: E731
    if kind == "mamba2":
        layer = _perturbed(mamba2_module.Mamba2(hidden_size=24, head_dim=8, expand=2, state_size=12, n_groups=2))
        swaps = ((mamba2_module, "fused_mamba2_wanted", always), (mamba2_module, "ssd_from_scan_inputs", gla_naive),
                 (mamba2_inputs, "fused_layer_kernels_wanted", always),
                 (skip_gated_norm, "fused_layer_kernels_wanted", always))
    else:
        layer = _perturbed(RWKV6(hidden_size=24, num_heads=3))
        swaps = ((gated_group_norm, "fused_layer_kernels_wanted", always),)
    x = torch.randn(2, 37, 24, generator=torch.Generator().manual_seed(2))
    results = {}
    for path in ("fused", "cpu"):
        layer.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_(True)
        with contextlib.ExitStack() as stack:
            for module, name, value in swaps if path == "fused" else ():
                stack.enter_context(swapped(module, name, value))
            out, state = layer(inputs)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        results[path] = {"out": out.detach(), "grad.input": inputs.grad,
                         **{f"state.{i}": s.detach() for i, s in enumerate(state)},
                         **{f"grad.{n}": p.grad for n, p in layer.named_parameters()}}
    return relative_errors(list(results["cpu"]), list(results["fused"].values()), list(results["cpu"].values()))


def run_under_interpreter(expression: str) -> dict:
    """``expression`` (this module as ``t``) evaluated in a fresh process with ``TRITON_INTERPRET=1`` (the
    interpreter is chosen when a kernel is defined); its JSON result."""
    code = f"import json, torch, test_layer_kernels as t; print(json.dumps({expression}))"
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_layer_kernels_under_the_interpreter():
    errors = run_under_interpreter("t.kernel_errors('cpu', torch.float32)")
    expected = (len(SCAN_INPUT_CASES) * len(SCAN_INPUT_RESULTS) + len(NORM_CASES) * len(NORM_RESULTS)
                + len(GROUP_NORM_CASES) * len(GROUP_NORM_RESULTS))
    assert len(errors) == expected and max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("kind, parameters", [("mamba2", 8), ("rwkv6", 15)])
def test_layer_fused_path_under_the_interpreter(kind, parameters):
    errors = run_under_interpreter(f"t.layer_errors({kind!r})")
    assert len(errors) == 4 + parameters and max(errors.values()) < 1e-5, errors


def test_fused_path_stays_off_on_cpu():
    from groundthink.ops.mamba2_inputs import fused_mamba2_wanted

    assert fused_mamba2_wanted(torch.zeros(1)) is False


@pytest.mark.parametrize("case", list(SCAN_INPUT_CASES))
def test_scan_inputs_reference_is_the_layer_computation(case):
    # The reference's x, k = dt B, q = C, g = dt A against the layer's CPU ops, float64.
    from groundthink.ops.mamba2_inputs import mamba2_scan_inputs_torch
    from groundthink.ops.shortconv import causal_conv1d_silu

    c = SCAN_INPUT_CASES[case]
    x, k, q, g = scan_input_results(case, "cpu", torch.float64, mamba2_scan_inputs_torch)[:4]
    wide, weight, bias, dt_bias, A_log = (t.detach() for t in scan_input_leaves(case, "cpu"))
    xBC, dt = split_wide(case, wide)
    act, _ = causal_conv1d_silu(xBC.double(), weight.double(), bias.double() if c["bias"] else None)
    x_ref, B, C = act.split([c["heads"] * c["head_dim"], c["groups"] * c["state"], c["groups"] * c["state"]], dim=-1)
    dt = torch.nn.functional.softplus(dt.double() + dt_bias.double()).clamp(*(c["limit"] or (0.0, float("inf"))))
    B, C = (t.reshape(*t.shape[:2], c["groups"], c["state"]).repeat_interleave(c["heads"] // c["groups"], dim=2)
            for t in (B, C))
    for got, want in ((x.flatten(2), x_ref), (k, B * dt[..., None]), (q, C), (g, -dt * A_log.double().exp())):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Compiled for Hopper on this machine: Triton's compiler runs without a GPU and rejects what its interpreter
# accepts (e.g. a name bound in both branches of an `if` with different tile shapes); cuobjdump reads the
# cubin's register use.

def _hopper_toolchain():
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        return None
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return (GPUTarget, ASTSource, tool) if os.path.exists(tool) else None


POINTER = {torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def recorded_launches(monkeypatch, run):
    """The kernel launches ``run()`` makes, recorded instead of run: ``[(kernel, args, kwargs)]``."""
    from triton.runtime.jit import JITFunction

    launches = []
    monkeypatch.setattr(JITFunction, "run", lambda self, *args, grid, warmup, **kwargs:
                        launches.append((self, args, kwargs)))
    run()
    return launches


def compile_for_hopper(kernel, args, kwargs) -> dict[str, int]:
    """``kernel`` compiled for sm_90 with these launch arguments; its register and local-memory (spill) use."""
    GPUTarget, ASTSource, tool = _hopper_toolchain()
    values = dict(zip(kernel.arg_names, args), **{k: v for k, v in kwargs.items() if k in kernel.arg_names})
    signature, constants = {}, {}
    for param in kernel.params:
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = POINTER[value.dtype]
        else:
            signature[param.name] = "fp32" if isinstance(value, float) else "i32" if abs(value) < 2 ** 31 else "i64"
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": kwargs.get("num_warps", 4)})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([tool, "-res-usage", cubin.name], capture_output=True, text=True).stdout
    line = next(line for line in usage.splitlines() if "REG:" in line)
    return {key: int(line.split(f"{key}:")[1].split()[0]) for key in ("REG", "LOCAL")}


def _seed_size_launches(monkeypatch):
    """Every launch of the three ops' forward and backward at the ~125M bench shape's widths (bf16), on a few
    tokens (the launches are recorded, not run)."""
    from groundthink.ops.gated_group_norm_triton import gated_group_norm_fused
    from groundthink.ops.mamba2_inputs_triton import mamba2_scan_inputs_fused
    from groundthink.ops.skip_gated_norm_triton import skip_gated_rms_norm_fused

    heads, head_dim, state, hidden = 24, 64, 128, 768
    channels = heads * head_dim
    conv = channels + 2 * state

    def leaf(*shape, dtype=torch.float32):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    def run():
        wide = leaf(1, 20, channels + conv + heads, dtype=torch.bfloat16)
        outs = mamba2_scan_inputs_fused(wide[..., channels:channels + conv], wide[..., channels + conv:],
                                        leaf(conv, 4), leaf(conv), leaf(heads), leaf(heads), (0.0, float("inf")),
                                        heads, 1, state)
        y = leaf(1, 20, heads, head_dim, dtype=torch.bfloat16)
        out = skip_gated_rms_norm_fused(y, y, leaf(heads), wide[..., :channels], leaf(channels), 1e-5, channels)
        o = leaf(1, 20, hidden, dtype=torch.bfloat16)
        out2 = gated_group_norm_fused(o, o, leaf(hidden), leaf(hidden), 6, 1e-5)
        sum(t.float().sum() for t in (*outs, out, out2)).backward()

    return recorded_launches(monkeypatch, run)


@pytest.mark.skipif(_hopper_toolchain() is None, reason="Triton without its NVIDIA compiler backend")
def test_layer_kernels_compile_for_hopper_without_spills(monkeypatch):
    launches = _seed_size_launches(monkeypatch)
    assert sorted(k.__name__ for k, _, _ in launches) == sorted(
        ["mamba2_inputs_fwd_kernel", "mamba2_inputs_bwd_act_kernel", "mamba2_inputs_bwd_conv_kernel",
         "skip_gated_norm_fwd_kernel", "skip_gated_norm_bwd_kernel", "gated_group_norm_fwd_kernel",
         "gated_group_norm_bwd_kernel"])
    usage = {kernel.__name__: compile_for_hopper(kernel, args, kwargs) for kernel, args, kwargs in launches}
    assert all(u["LOCAL"] == 0 and u["REG"] < 255 for u in usage.values()), usage
