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
