#!/usr/bin/env python
"""GPU parity: GroundThink's RWKV6 / Mamba2 against FLA's layers, and GroundThink's CUDA path against its
PyTorch (CPU) path, outputs and gradients, float32 and bf16.

    python benchmarks/gpu_parity.py --out benchmarks/results/gpu_parity.json   # on the GPU machine
    python benchmarks/gpu_parity.py --dry-run                                  # anywhere: builds, compares nothing

Three groups of checks, each entry one tensor (max abs error, relative L2 error, tolerance, pass/fail):

- ``layers``: FLA's ``RWKV6Attention`` / ``Mamba2`` and ours, built with the arguments our blocks use and the
  same weights (FLA's init plus noise, so zero-initialized parameters matter), on CUDA. Output, the input's
  gradient and every weight's gradient. Reference: FLA in float32. In bf16 (``torch.autocast``, float32
  weights, as training runs) ours must be within ``bf16`` tolerance of that reference, or no worse than twice
  FLA's own bf16 error (which is reported beside it).
- ``ops``: the scans as the layers call them on CUDA (FLA's Triton kernels; ``mamba_ssm`` if installed)
  against GroundThink's chunked PyTorch scans in float64 on CPU, with an initial state; output, final state
  and the gradient of every input.
- ``model``: the seed design's GF-MH (hidden 128, 8 blocks, vocab 65) on CUDA against the same weights on CPU
  (float64): logits, loss and every parameter's gradient, each gradient's tolerance scaled by how much its sum
  cancels on the reference (``grad_sums.py``).

FLA's float32 Triton dots run in TF32 (about 1e-3 relative): the float32 tolerances allow for that. In the
``layers`` and ``ops`` groups a gradient tensor also passes when its error is within tolerance of the
comparison's typical gradient entry (``err_vs_typical``; see ``check``).
The exit status is 0 when every check passes, 1 otherwise, 2 for bad usage (e.g. no CUDA without --dry-run).
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))      # and its helper beside it

import torch  # noqa: E402
from grad_sums import gradient_cancellations  # noqa: E402

# Relative L2 error allowed, per precision and kind of tensor.
TOLERANCES = {
    "fp32": {"out": 2e-3, "grad": 1e-2},
    "bf16": {"out": 5e-2, "grad": 5e-2},
}
# Layer arguments: what GroundThink's blocks pass at the seed design's size (docs/design.md#block).
RWKV6_ARGS = dict(hidden_size=128, expand_k=0.5, expand_v=1.0, num_heads=4, norm_eps=1e-5)
MAMBA2_ARGS = dict(hidden_size=128, head_dim=64, expand=2, state_size=128, conv_kernel=4, norm_eps=1e-5)
MODEL_ARGS = dict(vocab_size=65, hidden_size=128, n_layers=8)
GROUPS = ("layers", "ops", "model")


# ---------------------------------------------------------------------------------------------------------
# Measuring

def measure(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    diff = actual - expected
    return {
        "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
        "rel_err": float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(expected).clamp_min(1e-30)),
        "finite": bool(torch.isfinite(actual).all()),
    }


def grad_rms(tensors) -> float:
    """Root mean square over all entries of the reference gradients of one comparison: the typical size
    of a gradient entry there."""
    tensors = [t.detach().double() for t in tensors if t is not None]
    return float(torch.sqrt(sum(t.square().sum().cpu() for t in tensors) / max(1, sum(t.numel() for t in tensors))))


def check(group: str, name: str, precision: str, actual, expected, tol: float, typical: float | None = None,
          **context) -> dict:
    """One entry: errors of ``actual`` against ``expected`` and whether they are within ``tol``.

    Pass: finite and ``rel_err <= tol``. For gradients (``typical`` given) also when the error's RMS is within
    ``tol`` of the typical gradient entry of the comparison (``err_vs_typical``): a tensor whose gradient is
    a near-cancelling sum (a bias, ``A_log``, ``D``) has a large relative error from TF32 / bf16 round-off
    alone, though its error is as small as everyone else's.
    """
    if actual is None or expected is None:
        return {"group": group, "name": name, "precision": precision, "passed": False, "tol": tol,
                "error": f"missing tensor (actual {'None' if actual is None else 'ok'}, "
                         f"expected {'None' if expected is None else 'ok'})", **context}
    if actual.shape != expected.shape:
        return {"group": group, "name": name, "precision": precision, "passed": False, "tol": tol,
                "error": f"shape {tuple(actual.shape)} != {tuple(expected.shape)}", **context}
    m = measure(actual, expected)
    passed = m["rel_err"] <= tol
    if typical is not None:
        diff = (actual.detach().double().cpu() - expected.detach().double().cpu())
        m["err_vs_typical"] = float(diff.square().mean().sqrt() / max(typical, 1e-30))
        passed = passed or m["err_vs_typical"] <= tol
    return {"group": group, "name": name, "precision": precision, **m, "tol": tol,
            "passed": m["finite"] and passed, **context}


def autocast(precision: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def fixed_randn(shape, seed: int, device="cpu") -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


# ---------------------------------------------------------------------------------------------------------
# Layers: FLA's vs ours, same weights, on CUDA

def build_layer_pair(kind: str, device: str = "cuda", seed: int = 0):
    """FLA's layer and ours with identical weights: FLA's initialization plus N(0, 0.05) noise."""
    from groundthink.layers import RWKV6, Mamba2

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FLA's "According to Bo, ..." and Mamba2's fast-path notices
        if kind == "rwkv6":
            from fla.layers.rwkv6 import RWKV6Attention

            theirs, ours = RWKV6Attention(**RWKV6_ARGS), RWKV6(**RWKV6_ARGS)
        elif kind == "mamba2":
            from fla.layers.mamba2 import Mamba2 as FLAMamba2

            theirs, ours = FLAMamba2(**MAMBA2_ARGS), Mamba2(**MAMBA2_ARGS)
        else:
            raise ValueError(f"unknown layer kind {kind!r}; use rwkv6 or mamba2")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs.to(device), ours.to(device)


def run_layer(layer, x, out_weight, precision: str) -> dict[str, torch.Tensor]:
    """Output, input gradient and weight gradients of ``sum(out * out_weight)``."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with autocast(precision):
        out = layer(x)[0]  # FLA: (out, attn / None, cache); ours: (out, state)
    (out.float() * out_weight).sum().backward()
    result = {"out": out.detach().float(), "grad.input": x.grad}
    result.update({f"grad.{name}": p.grad for name, p in layer.named_parameters()})
    return result


def layer_parity(kind: str, precision: str, seq_len: int = 100, batch: int = 2, device: str = "cuda") -> list[dict]:
    theirs, ours = build_layer_pair(kind, device)
    hidden = RWKV6_ARGS["hidden_size"] if kind == "rwkv6" else MAMBA2_ARGS["hidden_size"]
    x = fixed_randn((batch, seq_len, hidden), 10, device)
    out_weight = fixed_randn((batch, seq_len, hidden), 11, device)
    reference = run_layer(theirs, x, out_weight, "fp32")
    ours_result = run_layer(ours, x, out_weight, precision)
    fla_same_precision = run_layer(theirs, x, out_weight, precision) if precision != "fp32" else None
    typical = grad_rms(t for n, t in reference.items() if n.startswith("grad.") and n != "grad.input")
    checks = []
    for name, expected in reference.items():
        is_grad = name.startswith("grad.")
        tol = TOLERANCES[precision]["grad" if is_grad else "out"]
        context = {"layer": kind, "seq_len": seq_len, "reference": "fla_fp32"}
        if fla_same_precision is not None:
            fla_err = measure(fla_same_precision[name], expected)["rel_err"]
            context["fla_own_rel_err"] = fla_err
            tol = max(tol, 2 * fla_err)
        checks.append(check("layers", f"{kind}.{name}", precision, ours_result.get(name), expected, tol,
                            typical=typical if is_grad and name != "grad.input" else None, **context))
    return checks


# ---------------------------------------------------------------------------------------------------------
# Ops: the CUDA dispatch (FLA / mamba_ssm kernels) vs the chunked PyTorch scans on CPU, float64

def scan_inputs(kind: str, seq_len: int, seed: int = 0, batch: int = 2, heads: int = 4):
    """Inputs shaped and scaled as the layers produce them at the seed design's size."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if kind == "rwkv6":
        K, V = 16, 32
        r, k, v = randn(batch, seq_len, heads, K), randn(batch, seq_len, heads, K), randn(batch, seq_len, heads, V)
        w = -torch.exp(randn(batch, seq_len, heads, K) - 1.0)
        return {"r": r, "k": k, "v": v, "w": w, "u": randn(heads, K), "initial_state": randn(batch, heads, K, V)}
    P, N = 64, 128
    return {"x": randn(batch, seq_len, heads, P),
            "dt": torch.nn.functional.softplus(randn(batch, seq_len, heads) - 1.0),
            "A": -torch.exp(randn(heads)),
            "B": 0.3 * randn(batch, seq_len, heads, N), "C": 0.3 * randn(batch, seq_len, heads, N),
            "initial_state": randn(batch, heads, P, N)}


# Under bf16 autocast the layers hand the scans these inputs in bf16 (projections) and the rest in float32.
BF16_INPUTS = {"rwkv6": ("r", "k", "v"), "ssd": ("x", "B", "C")}


def run_scan(fn, inputs: dict, out_weight, state_weight, through_state: bool = True) -> dict[str, torch.Tensor]:
    leaves = {name: t.detach().clone().requires_grad_(True) for name, t in inputs.items()}
    out, state = fn(**leaves)
    loss = (out.double() * out_weight.to(out.device, torch.float64)).sum()
    if through_state:
        loss = loss + (state.double() * state_weight.to(state.device, torch.float64)).sum()
    loss.backward()
    return {"out": out.detach(), "final_state": state.detach(),
            **{f"grad.{name}": t.grad for name, t in leaves.items()}}


def scan_backend(kind: str) -> str:
    from groundthink.ops.backend import fla_available, mamba_ssm_chunk_scan

    if kind == "ssd" and mamba_ssm_chunk_scan() is not None:
        return "mamba_ssm"
    return "fla" if fla_available() else "torch"


def op_parity(kind: str, precision: str, seq_len: int, device: str = "cuda") -> list[dict]:
    from groundthink.ops import rwkv6, rwkv6_chunk_torch, ssd, ssd_chunk_torch
    from groundthink.ops.backend import fused_recurrent_max_len

    fast, torch_path = (rwkv6, rwkv6_chunk_torch) if kind == "rwkv6" else (ssd, ssd_chunk_torch)
    inputs = scan_inputs(kind, seq_len)
    # FLA's fused recurrent RWKV-6 kernel (up to GROUNDTHINK_FUSED_RECURRENT_MAX_LEN tokens; off by default)
    # gets dk/dv/dw wrong when the loss depends on the final state, so groundthink.ops.rwkv6 refuses that
    # gradient there: compare the output-only loss, and check the refusal separately.
    through_state = not (kind == "rwkv6" and seq_len <= fused_recurrent_max_len())
    weights = [fixed_randn(s, 20 + i) for i, s in enumerate(out_and_state_shapes(kind, inputs))]
    reference = run_scan(torch_path, {n: t.double() for n, t in inputs.items()}, *weights, through_state=through_state)
    # A's gradient sums per-token terms of both signs: its relative error is the terms' times their cancellation.
    amplification = {"grad.A": ssd_a_grad_amplification(inputs, *weights)} if kind == "ssd" else {}
    low = BF16_INPUTS[kind] if precision == "bf16" else ()
    on_device = {n: t.to(device, torch.bfloat16 if n in low else torch.float32) for n, t in inputs.items()}
    result = run_scan(fast, on_device,
                      *(fixed_randn(s, 20 + i, device) for i, s in enumerate(out_and_state_shapes(kind, inputs))),
                      through_state=through_state)
    typical = grad_rms(t for n, t in reference.items() if n.startswith("grad."))
    checks = []
    for name, expected in reference.items():
        is_grad = name.startswith("grad.")
        tol = TOLERANCES[precision]["grad" if is_grad else "out"] * amplification.get(name, 1.0)
        checks.append(check("ops", f"{kind}_T{seq_len}.{name}", precision, result[name], expected, tol,
                            typical=typical if is_grad else None, backend=scan_backend(kind),
                            reference="torch_chunked_fp64_cpu", **({"cancellation": amplification[name]}
                                                                   if name in amplification else {})))
    if not through_state and scan_backend(kind) == "fla":
        refused = False
        try:
            run_scan(fast, on_device, *(fixed_randn(s, 20 + i, device)
                                        for i, s in enumerate(out_and_state_shapes(kind, inputs))))
        except RuntimeError as err:
            refused = "final RWKV-6 state" in str(err)
        checks.append({"group": "ops", "name": f"{kind}_T{seq_len}.refuses_final_state_grad", "precision": precision,
                       "passed": refused, "tol": None, "backend": "fla"})
    return checks


def ssd_a_grad_amplification(inputs: dict, out_weight, state_weight=None) -> float:
    """How much the SSD's ``dL/dA_h = sum_{b,t} term_{b,t,h}`` amplifies its terms' relative error.

    The kernels' per-token terms are as accurate as every other gradient (float32 Triton dots are TF32), but
    terms of both signs cancel in the sum, so the sum's relative error is theirs times this factor (>= 1).
    """
    return sum_cancellation(ssd_a_grad_terms(inputs, out_weight, state_weight), dims=(0, 1))


def ssd_a_grad_terms(inputs: dict, out_weight, state_weight=None) -> torch.Tensor:
    """``[B, T, H]``: the per-token terms of A's gradient, float64 (one A per token: its gradients are them),
    for the loss ``run_scan`` forms (``state_weight=None``: the output alone)."""
    from groundthink.ops import ssd_chunk_torch

    per_token = {n: t.double() for n, t in inputs.items()}
    per_token["A"] = per_token["A"].expand(per_token["dt"].shape).clone()
    one_chunk = functools.partial(ssd_chunk_torch, chunk_size=per_token["dt"].shape[1])  # no padding to match
    return run_scan(one_chunk, per_token, out_weight, state_weight, through_state=state_weight is not None)["grad.A"]


def sum_cancellation(terms: torch.Tensor, dims) -> float:
    """``||sum |terms||| / ||sum terms||`` over ``dims``: 1 when no term cancels another, large when most do."""
    return max(1.0, float(terms.abs().sum(dims).norm() / terms.sum(dims).norm().clamp_min(1e-300)))


def import_kernels() -> None:
    """Import FLA's layers (and every kernel module they use) before GroundThink checks FLA: its autotuner set-up
    (the ``quick`` cut by default) applies to the FLA modules loaded by then, and FLA's own layers run first
    here (untouched, their chunked kernels would autotune for minutes per shape)."""
    import fla.layers  # noqa: F401
    from groundthink.ops.backend import fla_available

    fla_available()


def out_and_state_shapes(kind: str, inputs: dict):
    if kind == "rwkv6":
        return inputs["v"].shape, inputs["initial_state"].shape
    return inputs["x"].shape, inputs["initial_state"].shape


# ---------------------------------------------------------------------------------------------------------
# The whole model: CUDA vs CPU

def build_model_pair(key: str = "GF-MH", device: str = "cuda", seed: int = 0):
    """The model on CPU in float64 (reference) and a float32 copy on ``device``; every parameter perturbed by
    N(0, 0.02) so the zero-initialized ones (gate weight, RWKV bonus, LoRA inputs) take part."""
    from groundthink.models import get_model

    torch.manual_seed(seed)
    model = get_model(key, **MODEL_ARGS)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return copy.deepcopy(model).double(), model.to(device)


def model_tokens(seq_len: int, batch: int = 4):
    """``model_parity``'s fixed inputs and targets."""
    data = torch.randint(0, MODEL_ARGS["vocab_size"], (batch, seq_len + 1), generator=torch.Generator().manual_seed(3))
    return data[:, :-1], data[:, 1:]


@functools.lru_cache(maxsize=2)
def model_reference(key: str, seq_len: int, batch: int = 4):
    """The float64 CPU model (gradients in ``.grad``), its logits and loss on ``model_tokens``, and every parameter
    gradient's cancellation (``grad_sums.py``): the same for both precisions, so computed once."""
    cpu, _ = build_model_pair(key, device="cpu")
    inputs, targets = model_tokens(seq_len, batch)

    def forward():
        out = cpu(inputs, targets=targets)
        return out, out.loss

    ref, cancellations, _ = gradient_cancellations(cpu, forward)
    return cpu, ref.logits.detach(), ref.loss.detach(), cancellations


def model_parity(precision: str, seq_len: int, key: str = "GF-MH", batch: int = 4, device: str = "cuda") -> list[dict]:
    cpu, ref_logits, ref_loss, cancellations = model_reference(key, seq_len, batch)
    _, gpu = build_model_pair(key, device)
    inputs, targets = model_tokens(seq_len, batch)
    with autocast(precision):
        out = gpu(inputs.to(device), targets=targets.to(device))
    out.loss.backward()
    tol = TOLERANCES[precision]
    # What the precision alone costs: the same model on the same GPU through GroundThink's PyTorch scans, in
    # the same precision, with TF32 matmuls in float32 (FLA's float32 Triton dots are TF32). The kernel path
    # passes when it is within tolerance of the float64 reference or no worse than twice that baseline. A
    # gradient's tolerance is scaled by the cancellation of its sum (grad_sums.py: a bias summed over every
    # token, A_log, D), measured on the float64 reference for these inputs.
    baseline = torch_path_result(cpu, inputs, targets, precision, device)
    context = {"model": key, "seq_len": seq_len, "reference": "torch_fp64_cpu"}

    def entry(name, actual, expected, limit, cancellation=1.0):
        base_err = measure(baseline[name], expected)["rel_err"]
        return check("model", f"{key}_T{seq_len}.{name}", precision, actual, expected,
                     max(limit * cancellation, 2 * base_err), torch_path_rel_err=base_err,
                     cancellation=cancellation, **context)

    checks = [entry("logits", out.logits.float(), ref_logits, tol["out"]),
              entry("loss", out.loss, ref_loss, tol["out"])]
    ref_params = dict(cpu.named_parameters())
    for name, p in gpu.named_parameters():
        checks.append(entry(f"grad.{name}", p.grad, ref_params[name].grad, tol["grad"], cancellations[name]))
    return checks


def torch_path_result(cpu_model, inputs, targets, precision: str, device: str) -> dict[str, torch.Tensor]:
    """Logits, loss and gradients of a float32 copy of ``cpu_model`` on ``device`` with FLA switched off."""
    from groundthink.ops import backend

    model = copy.deepcopy(cpu_model).float().to(device)
    model.zero_grad(set_to_none=True)
    previous_env, previous_tf32 = os.environ.get("GROUNDTHINK_DISABLE_FLA"), torch.backends.cuda.matmul.allow_tf32
    os.environ["GROUNDTHINK_DISABLE_FLA"] = "1"
    backend.fla_available.cache_clear()
    torch.backends.cuda.matmul.allow_tf32 = precision == "fp32"
    try:
        with autocast(precision):
            out = model(inputs.to(device), targets=targets.to(device))
        out.loss.backward()
    finally:
        if previous_env is None:
            os.environ.pop("GROUNDTHINK_DISABLE_FLA")
        else:
            os.environ["GROUNDTHINK_DISABLE_FLA"] = previous_env
        backend.fla_available.cache_clear()
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return {"logits": out.logits.float().detach(), "loss": out.loss.detach(),
            **{f"grad.{n}": p.grad for n, p in model.named_parameters()}}


# ---------------------------------------------------------------------------------------------------------
# Running

def plan(groups=GROUPS):
    """Every comparison as (label, function, kwargs): the test file runs the same list."""
    cases = []
    for precision in ("fp32", "bf16"):
        if "layers" in groups:
            cases += [(f"layers/{kind}/{precision}", layer_parity, dict(kind=kind, precision=precision))
                      for kind in ("rwkv6", "mamba2")]
        if "ops" in groups:
            # 37 and 200: FLA's chunked kernels (the fused recurrent ones with GROUNDTHINK_FUSED_RECURRENT_MAX_LEN=64
            # at 37); the SSD chunks at 64.
            cases += [(f"ops/{kind}/T{T}/{precision}", op_parity, dict(kind=kind, precision=precision, seq_len=T))
                      for kind in ("rwkv6", "ssd") for T in (37, 200)]
        if "model" in groups:
            cases += [(f"model/GF-MH/T{T}/{precision}", model_parity, dict(precision=precision, seq_len=T))
                      for T in (64, 200)]
    return cases


def environment() -> dict:
    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    from groundthink.ops.backend import fla_available

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu (no CUDA)",
        "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": version("triton"), "fla": version("flash-linear-attention"), "fla_core": version("fla-core"),
        "mamba_ssm": version("mamba-ssm"),
        # What "our CUDA path" was: FLA's kernels unless disabled (then the comparisons are torch vs torch).
        "fla_kernels_used": fla_available(),
        "env": {k: os.environ[k] for k in ("GROUNDTHINK_DISABLE_FLA", "GROUNDTHINK_FUSED_OPS", "GROUNDTHINK_FUSED_LAYERS",
                                           "GROUNDTHINK_FUSED_RECURRENT_MAX_LEN", "GROUNDTHINK_FLA_AUTOTUNE")
                if k in os.environ},
    }


def dry_run() -> None:
    """Build what the comparisons use (FLA's layers and ours, the model) on CPU: imports and weights check out."""
    for kind in ("rwkv6", "mamba2"):
        build_layer_pair(kind, device="cpu")
    build_model_pair(device="cpu")
    assert len(plan()) > 0


def summarize(checks: list[dict]) -> dict:
    failed = [c for c in checks if not c["passed"]]
    worst = {}
    for c in checks:
        key = f"{c['group']}/{c['precision']}"
        if "rel_err" in c and c["rel_err"] > worst.get(key, {}).get("rel_err", -1):
            worst[key] = {"name": c["name"], "rel_err": c["rel_err"], "tol": c["tol"]}
    return {"checks": len(checks), "passed": len(checks) - len(failed), "failed": len(failed),
            "failures": [f"{c['name']} [{c['precision']}]: " + (c.get("error") or f"rel_err {c['rel_err']:.3g} > {c['tol']:.3g}")
                         for c in failed],
            "worst_per_group": worst}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated subset of {', '.join(GROUPS)}")
    parser.add_argument("--dry-run", action="store_true", help="build everything, compare nothing (works without CUDA)")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        print(f"error: unknown groups {sorted(unknown)}; valid: {', '.join(GROUPS)}", file=sys.stderr)
        return 2

    if args.dry_run:
        dry_run()
        where = "CUDA is available" if torch.cuda.is_available() else "CUDA is missing"
        print(f"dry run: {where}; FLA's layers, ours and the GF-MH model build; nothing compared")
        return 0
    if not torch.cuda.is_available():
        print("error: CUDA is missing: run this on the GPU machine (or pass --dry-run to check it imports)",
              file=sys.stderr)
        return 2

    import_kernels()
    started = time.time()
    checks, timings = [], {}
    report = {"command": " ".join(["python benchmarks/gpu_parity.py", *(argv if argv is not None else sys.argv[1:])]),
              "environment": environment(), "tolerances": TOLERANCES,
              "layer_args": {"rwkv6": RWKV6_ARGS, "mamba2": MAMBA2_ARGS}, "model_args": MODEL_ARGS}
    cases = plan(groups)
    for i, (label, fn, kwargs) in enumerate(cases):
        t0 = time.time()
        try:
            checks += fn(**kwargs)
        except Exception as err:  # one broken comparison must not hide the others
            checks.append({"group": label.split("/")[0], "name": label, "precision": kwargs.get("precision"),
                           "passed": False, "error": f"{type(err).__name__}: {err}"})
        timings[label] = round(time.time() - t0, 2)
        print(f"{label:28s} {timings[label]:7.1f} s", flush=True)
        # Rewritten after every case: a run stopped by a time limit still leaves what it measured.
        report.update(complete=i + 1 == len(cases), seconds=round(time.time() - started, 1), timings=timings,
                      summary=summarize(checks), checks=checks)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    summary = report["summary"]
    print(f"{summary['passed']}/{summary['checks']} checks passed on {report['environment']['device']}")
    for group, worst in summary["worst_per_group"].items():
        print(f"  worst {group:12s} {worst['rel_err']:.2e} (tol {worst['tol']:.0e})  {worst['name']}")
    for failure in summary["failures"]:
        print(f"  FAIL {failure}")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
