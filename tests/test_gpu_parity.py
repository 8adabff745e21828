"""GPU parity as assertions: the comparisons of ``benchmarks/gpu_parity.py`` (FLA's layers vs ours, our CUDA
kernels vs our PyTorch scans, GF-MH on CUDA vs CPU; float32 and bf16), one test per comparison.

Marked ``gpu``: skipped without CUDA. The dry run (imports, module construction) is checked wherever the
``fla`` extra is installed; the pass rules everywhere.
"""
import pytest
import torch

from training_utils import load_benchmark

gpu_parity = load_benchmark("gpu_parity")


@pytest.mark.gpu
@pytest.mark.extra("fla")
@pytest.mark.parametrize("label, fn, kwargs", gpu_parity.plan(), ids=[case[0] for case in gpu_parity.plan()])
def test_gpu_parity(label, fn, kwargs):
    gpu_parity.import_kernels()
    checks = fn(**kwargs)
    assert checks
    failures = gpu_parity.summarize(checks)["failures"]
    assert not failures, f"{label}: " + "; ".join(failures)


@pytest.mark.extra("fla")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_script_without_cuda(capsys):
    assert gpu_parity.main(["--dry-run"]) == 0
    assert "CUDA is missing" in capsys.readouterr().out
    assert gpu_parity.main([]) == 2  # a real run needs CUDA: one-line error, status 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is missing" in err[0]


def test_check_pass_rules():
    # The pass rule of the report: relative error, or (for gradients) error against the typical entry.
    expected = torch.tensor([1.0, -1.0, 2.0])
    ok = gpu_parity.check("g", "t", "fp32", expected + 1e-4, expected, tol=1e-3)
    bad = gpu_parity.check("g", "t", "fp32", expected + 1e-1, expected, tol=1e-3)
    assert ok["passed"] and not bad["passed"] and bad["max_abs"] == pytest.approx(0.1)
    tiny = torch.tensor([1e-3, -1e-3])  # a near-cancelled gradient among entries of size ~1
    assert not gpu_parity.check("g", "t", "fp32", tiny + 1e-4, tiny, tol=1e-2)["passed"]
    assert gpu_parity.check("g", "t", "fp32", tiny + 1e-4, tiny, tol=1e-2, typical=1.0)["passed"]
    nan = gpu_parity.check("g", "t", "fp32", torch.tensor([float("nan"), 0.0]), tiny, tol=1e9, typical=1.0)
    assert not nan["passed"]
    missing = gpu_parity.check("g", "t", "fp32", None, tiny, tol=1.0)
    assert not missing["passed"] and "missing" in missing["error"]


def test_ssd_a_grad_cancellation():
    # The per-token terms sum to A's gradient, and the factor that scales A's tolerance is 1 without cancellation.
    inputs = gpu_parity.scan_inputs("ssd", 100)  # more than one chunk of the reference scan
    weights = [gpu_parity.fixed_randn(s, 20 + i) for i, s in enumerate(gpu_parity.out_and_state_shapes("ssd", inputs))]
    terms = gpu_parity.ssd_a_grad_terms(inputs, *weights)
    from groundthink.ops import ssd_chunk_torch
    reference = gpu_parity.run_scan(ssd_chunk_torch, {n: t.double() for n, t in inputs.items()}, *weights)
    torch.testing.assert_close(terms.sum((0, 1)), reference["grad.A"], rtol=1e-10, atol=1e-12)
    assert gpu_parity.ssd_a_grad_amplification(inputs, *weights) >= 1.0
    assert gpu_parity.sum_cancellation(torch.ones(3, 4, 2).double(), dims=(0, 1)) == 1.0
    assert gpu_parity.sum_cancellation(torch.tensor([[1.0], [-0.99]]).double(), dims=(0,)) == pytest.approx(199.0)


grad_sums = load_benchmark("grad_sums")


@pytest.mark.parametrize("key", ["GF-MH", "RWKV6", "MAMBA2", "GPT2"])
def test_gradient_terms_sum_to_every_gradient(key):
    # The recorded uses account for every parameter's whole gradient (no use missed, none counted twice), and
    # each cancellation is a factor >= 1.
    from groundthink.models import get_model

    torch.manual_seed(0)
    model = get_model(key, vocab_size=65, hidden_size=32, n_layers=2, rwkv_heads=2, mamba_head_dim=16,
                      mamba_state_size=16).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, dtype=p.dtype))
    data = torch.randint(0, 65, (2, 41), generator=torch.Generator().manual_seed(1))

    def forward():
        out = model(data[:, :-1], targets=data[:, 1:])
        return out, out.loss

    _, cancellations, sums = grad_sums.gradient_cancellations(model, forward)
    names = [name for name, _ in model.named_parameters()]
    assert sorted(sums) == sorted(names) and min(cancellations.values()) >= 1.0
    for name, p in model.named_parameters():
        torch.testing.assert_close(sums[name][0], p.grad, rtol=1e-10, atol=1e-14, msg=name)


def test_gradient_cancellation_of_known_sums():
    # loss = sum_t g_t * (x_t * w) * s: w's terms g_t x_t s are (1, -0.9) * 2 * s -> cancellation 1.9 / 0.1 = 19
    # (relative model); absolute model: rms(g) * sum |x_t s| / |sum| = sqrt((1 + 0.81) / 2) * 2 * 2 / (0.1 * 2).
    w = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    x, g = torch.tensor([[1.0], [1.0]], dtype=torch.float64), torch.tensor([[1.0], [-0.9]], dtype=torch.float64)

    def forward():
        out = x * (w.exp().log() * 1.0)   # a chain of element-wise functions of w alone, then a use
        return out, (out * g).sum()

    _, cancellations, sums = grad_sums.gradient_cancellations(model, forward)
    signed, relative, absolute = (t.item() for t in sums["w"])
    assert signed == pytest.approx(0.1) and relative == pytest.approx(1.9)
    assert absolute == pytest.approx(((1 + 0.81) / 2) ** 0.5 * 2)
    assert cancellations["w"] == pytest.approx(max(1.9, absolute) / 0.1)
    assert grad_sums.cancellation(torch.ones(3), torch.ones(3)) == 1.0


def test_gradient_cancellation_refuses_an_op_it_cannot_split():
    model = torch.nn.Linear(3, 1).double()
    with pytest.raises(NotImplementedError, match="cumsum"):
        grad_sums.gradient_cancellations(model, lambda: (None, model.weight.cumsum(-1).sum()))
