"""What the GPU tests share: the small model shape, the relative error, and ``check``, which logs every
measured error to $GROUNDTHINK_PARITY_LOG (JSON lines) when set before it asserts."""
import json
import os

import torch

MODELS = ["GF-MH", "RWKV6", "MAMBA2", "GPT2"]
SMALL = dict(vocab_size=65, hidden_size=64, n_layers=2, rwkv_heads=4, mamba_head_dim=32, mamba_state_size=32,
             max_position_embeddings=256)


def rel_err(actual, expected) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(actual).all()
    return (torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected).clamp_min(1e-30)).item()


def check(name: str, actual, expected, tol: float) -> None:
    err = rel_err(actual, expected)
    path = os.environ.get("GROUNDTHINK_PARITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"check": name, "rel_err": err, "tol": tol, "pass": err < tol}) + "\n")
    assert err < tol, f"{name}: relative error {err:.3g} >= {tol}"


def check_all(items) -> None:
    """``check`` each ``(name, actual, expected, tol)``, logging every error before failing on the first bad one."""
    failures = []
    for name, actual, expected, tol in items:
        try:
            check(name, actual, expected, tol)
        except AssertionError as err:
            failures.append(str(err).splitlines()[0])
    assert not failures, "; ".join(failures)


def grads_of(fn, *tensors):
    """Output of ``fn`` and the gradients of a fixed random projection of it, w.r.t. ``tensors``."""
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*tensors)
    first = out[0] if isinstance(out, tuple) else out
    g = torch.Generator(device="cpu").manual_seed(123)
    (first.float() * torch.randn(first.shape, generator=g).to(first.device)).sum().backward()
    return first.detach(), [t.grad for t in tensors]


def cuda(*tensors):
    return [t.cuda() for t in tensors]
