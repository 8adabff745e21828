"""Diagnostics: docs/design.md#balance-metrics metrics, the S/G/D suites of docs/design.md#diagnostics, the analyses, report and plots.

A tiny GF-MH is trained for a few real AdamW steps on Tiny Shakespeare (characters) and diagnosed once;
crafted models must fail the suites meant to catch them: Mamba output forced to zero (D3, D4), states that
ignore the input (S2, D2), a NaN-producing model (S1, G1).
"""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from groundthink.diagnostics import thresholds as T
from groundthink.diagnostics.analyses import character_class
from groundthink.diagnostics.metrics import (ablation_metrics, balance_metrics, grad_ratio, state_norms)
from groundthink.diagnostics.probe import DiagnoseOptions, Probe
from groundthink.diagnostics.report import diagnose
from groundthink.diagnostics.runlog import RunLog
from groundthink.diagnostics.suites import SUITES, run_suites
from groundthink.diagnostics.training_loop import make_optimizer
from groundthink.models import get_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
TINY = dict(vocab_size=65, hidden_size=32, n_layers=2, mamba_head_dim=16, rwkv_heads=2, mamba_state_size=16)
SEQ = 32
FAST = dict(seq_len=SEQ, batch_size=8, long_sequences=2, variety_samples=4, train_steps=6, train_batch_size=4,
            overfit_steps=40, overfit_samples=2, overfit_seq_len=16, overfit_lr=1e-2)


class Chars:
    """The character vocabulary of Tiny Shakespeare (65 symbols); ``decode`` is all diagnose needs."""

    def __init__(self, text):
        self.chars = sorted(set(text))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, text):
        return [self.index[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


@pytest.fixture(scope="module")
def corpus():
    if not DATA.is_file():
        pytest.skip(f"{DATA} not found (the shared data folder sits beside the repository)")
    text = DATA.read_text(encoding="utf-8")
    chars = Chars(text)
    split = int(len(text) * 0.9)
    return chars, torch.tensor(chars.encode(text[:split][:200_000])), torch.tensor(chars.encode(text[split:][:20_000]))


@pytest.fixture(scope="module")
def trained(corpus):
    """A tiny GF-MH after 30 real AdamW steps (batch 8 x 32 characters): past initialization noise."""
    _, train, _ = corpus
    torch.manual_seed(0)
    model = get_model("GF-MH", **TINY)
    optimizer = make_optimizer(model, lr=3e-3, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        starts = torch.randint(0, train.numel() - SEQ - 1, (8,), generator=generator)
        window = torch.stack([train[s:s + SEQ + 1] for s in starts.tolist()])
        loss = model(window[:, :-1], targets=window[:, 1:]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def diagnosis(trained, corpus, tmp_path_factory):
    chars, _, val = corpus
    out = tmp_path_factory.mktemp("diagnosis")
    return diagnose(trained, chars, val, None, out, DiagnoseOptions(**FAST)), out


def probe_for(model, val, **options):
    return Probe(model, val, options=DiagnoseOptions(**{**FAST, **options}))


def suite_status(model, val, *ids):
    functions = [f for f in SUITES if f.suite_id in ids]
    return {r.id: r for r in run_suites(probe_for(model, val), functions)}


# ---- thresholds reproduce the seed design's verdicts ----------------------------------------------------

def test_thresholds_reproduce_seed_verdicts():
    assert T.G4_GRAD_RATIO.check(0.10) == "WARN" and T.G4_GRAD_RATIO.check(0.08) == "FAIL"  # the seed design Obs. 8
    assert T.G4_GRAD_RATIO.check(0.45) == "PASS" and T.G4_GRAD_RATIO.check(3.5) == "WARN"
    assert T.D3_MIN_ABLATION_SHARE.check(0.002) == "WARN"       # the seed design: D3 WARN, Mamba 0.2%
    assert T.D3_MIN_ABLATION_SHARE.check(0.0) == "FAIL"
    assert T.D1_NORM_GROWTH.check(2.5) == "WARN"                 # the seed design: D1 WARN, RWKV grows 2.5x
    assert T.S4_STATE_VARIANCE_RATIO.check(108_583) == "WARN"    # the seed design: S4 WARN
    assert T.G2_INIT_ENTROPY.check(5.46) == "WARN" and T.G2_INIT_ENTROPY.check(1.9) == "FAIL"
    assert T.LONG_CONTEXT_PPL_RATIO.check(1.04) == "PASS"        # the seed design: 1.04x at 512 tokens
    assert T.ABLATION_INTERACTION_RATIO.check(999.0) == "FAIL"   # the seed design: RWKV 99.9% / Mamba 0.1%
    assert T.G3_GRAD_NORM.check(3.0) == "WARN" and T.G3_LOSS_RATIO.check(1.0) == "FAIL"
    assert all(band.check(float("nan")) == "FAIL" for band in (T.G4_GRAD_RATIO, T.D1_NORM_GROWTH, T.S2_RELATIVE_STATE_DIFF))
    assert T.G4_GRAD_RATIO.describe() == "PASS [0.3, 3]; WARN [0.1, 10]"


# ---- docs/design.md#balance-metrics metrics -----------------------------------------------------------------------------

def test_balance_metrics_follow_spec_definitions(trained, corpus):
    _, _, val = corpus
    window = val[:4 * (SEQ + 1)].view(4, SEQ + 1)
    inputs, targets = window[:, :-1], window[:, 1:]
    metrics = balance_metrics(trained, inputs, targets)
    for name in ("grad_ratio", "gate_rwkv", "act_var_rwkv", "act_var_mamba", "state_norm_rwkv", "state_norm_mamba",
                 "ablation_share_rwkv", "ablation_share_mamba"):
        assert name in metrics and math.isfinite(metrics[name]), name
    assert all(p.grad is None for p in trained.parameters())  # read through autograd.grad: no side effects

    # grad_ratio equals the trainer's (from .grad after a backward) on the same batch.
    model = copy.deepcopy(trained)
    model(inputs, targets=targets).loss.backward()
    assert metrics["grad_ratio"] == pytest.approx(float(grad_ratio(model)), rel=1e-5)

    # state_norm: the norm of each branch's final state, mean over the batch, mean over layers.
    with torch.no_grad():
        states = trained(inputs, return_states=True).states
    wkv = [float(s["rwkv6"].wkv.flatten(1).norm(dim=1).mean()) for s in states]
    ssm = [float(s["mamba2"].ssm.flatten(1).norm(dim=1).mean()) for s in states]
    assert metrics["state_norm_rwkv_per_layer"] == pytest.approx(wkv)
    assert metrics["state_norm_mamba"] == pytest.approx(sum(ssm) / len(ssm))

    # ablation_share: each branch's loss increase when zeroed, as a share of the two increases.
    with torch.no_grad():
        with trained.ablated("mamba2"):
            without_mamba = float(trained(inputs, targets=targets).loss)
        base = float(trained(inputs, targets=targets).loss)
    assert metrics["loss_without_mamba"] == pytest.approx(without_mamba, rel=1e-5)
    up_r, up_m = max(metrics["increase_rwkv"], 0), max(without_mamba - base, 0)
    assert metrics["ablation_share_mamba"] == pytest.approx(up_m / (up_r + up_m), rel=1e-4)
    assert metrics["ablation_share_rwkv"] + metrics["ablation_share_mamba"] == pytest.approx(1.0)


def test_balance_metrics_skip_what_a_baseline_lacks():
    torch.manual_seed(0)
    ids = torch.randint(0, 65, (2, 16))
    gpt = balance_metrics(get_model("GPT2", **TINY), ids, ids)
    assert not any(k.startswith(("grad_ratio", "gate_rwkv", "act_var", "state_norm", "ablation")) for k in gpt)
    rwkv = balance_metrics(get_model("RWKV6", **TINY), ids, ids)
    assert "state_norm_rwkv" in rwkv and "act_var_rwkv" in rwkv
    assert "grad_ratio" not in rwkv and "state_norm_mamba" not in rwkv and "ablation_share_mamba" not in rwkv
    assert state_norms([{"attention": None}]) == {}


# ---- the full diagnosis of a healthy tiny model --------------------------------------------------

def test_diagnose_runs_every_suite_and_the_healthy_ones_pass(diagnosis):
    result, _ = diagnosis
    ids = [r.id for r in result.results]
    assert ids == ["S0", "S1", "S2", "S3", "S4", "G1", "G2", "G3", "G4", "D1", "D2", "D3", "D4",
                   "ABL", "EVO", "LC", "GC", "TOK", "OVF", "RND", "RLD", "SPD"]
    status = {r.id: r.status for r in result.results}
    for suite_id in ("S0", "S1", "S2", "S3", "G1", "G2", "D2", "D4", "RND", "RLD", "OVF"):
        assert status[suite_id] == "PASS", (suite_id, result.result(suite_id))
    assert status["G3"] in ("PASS", "WARN")  # the loss fell in the AdamW loop; WARN only on the grad norm
    assert result.result("G3").data["loss_end"] < result.result("G3").data["loss_start"]
    assert result.result("S4").data["continuation_error"] <= 1e-5  # S4 may WARN on the seed design's variance ratio
    for r in result.results:
        assert r.status in T.STATUSES
        if r.status in ("PASS", "WARN", "FAIL"):
            assert r.value is not None and r.threshold, r
    table = result.table()
    for suite_id in ids:
        assert f"\n{suite_id} " in table


def test_diagnose_metrics_match_the_direct_measurement(diagnosis, trained):
    result, _ = diagnosis
    probe = probe_for(trained, None)
    metrics = result.metrics
    assert 0 <= metrics["gate_rwkv"] <= 1 and len(metrics["gate_rwkv_per_layer"]) == TINY["n_layers"]
    assert metrics["ablation_share_rwkv"] + metrics["ablation_share_mamba"] == pytest.approx(1.0)
    d3 = result.result("D3")
    assert d3.value == pytest.approx(min(metrics["ablation_share_rwkv"], metrics["ablation_share_mamba"]))
    assert result.result("G4").value == pytest.approx(metrics["grad_ratio"])
    assert probe.long_len == SEQ * T.LONG_CONTEXT_FACTOR  # random fallback data reaches 8x the training length
    lc = result.result("LC").data
    assert lc["bucket_start"][-1] + lc["bucket_width"] == SEQ * T.LONG_CONTEXT_FACTOR


def test_report_and_plots_are_written(diagnosis):
    result, out = diagnosis
    report = (out / "report.md").read_text()
    for r in result.results:
        assert f"| {r.id} |" in report
    assert "`grad_ratio`" in report and "`ablation_share_mamba`" in report
    data = json.loads((out / "diagnosis.json").read_text())
    assert [r["id"] for r in data["results"]] == [r.id for r in result.results]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["ablation.png", "branch_statistics.png", "gate_share.png", "gradient_coupling.png",
                    "loss_by_position.png", "token_types.png"]  # no run log: no training_balance.png
    from matplotlib.image import imread
    for name in pngs:
        path = out / name
        assert path.stat().st_size > 0
        pixels = imread(path)
        assert pixels.ndim == 3 and float(np.std(pixels)) > 0.01, name  # not a blank canvas
        assert f"]({name})" in report


# ---- crafted models that must fail ---------------------------------------------------------------

def test_mamba_output_forced_to_zero_fails_d3_and_d4(trained, corpus):
    model = copy.deepcopy(trained)
    with torch.no_grad():
        for layer in model.layers:
            layer.mamba2.out_proj.weight.zero_()
    results = suite_status(model, corpus[2], "D3", "D4")
    assert results["D3"].status == "FAIL" and results["D3"].data["ablation_share"]["mamba2"] == 0.0
    assert results["D4"].status == "FAIL" and results["D4"].data["output_change"]["mamba2"] == 0.0
    # ... while the same model with Mamba intact passes D4 (the suite measures the branch, not noise).
    assert suite_status(trained, corpus[2], "D4")["D4"].status == "PASS"


def freeze_states(model, branches=("rwkv6", "mamba2")):
    """Make the recurrent states independent of the input: RWKV keys = 0 (nothing is written to the wkv
    state), Mamba's input projection = 0 (x, B, C, dt no longer depend on the tokens)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in model.layers:
            if "rwkv6" in branches:
                layer.rwkv6.k_proj.linear.weight.zero_()
            if "mamba2" in branches:
                layer.mamba2.in_proj.weight.zero_()
    return model


def test_states_that_ignore_the_input_fail_s2_and_d2(trained, corpus):
    results = suite_status(freeze_states(trained), corpus[2], "S2", "D2")
    assert results["S2"].status == "FAIL" and results["S2"].value == 0.0
    assert results["D2"].status == "FAIL"
    # One frozen branch: S2 fails (every branch must vary), D2 warns (the seed design's rule: one of two frozen).
    results = suite_status(freeze_states(trained, ["mamba2"]), corpus[2], "S2", "D2")
    assert results["S2"].status == "FAIL" and "mamba" in results["S2"].detail
    assert results["D2"].status == "WARN" and "mamba" in results["D2"].detail


def test_nan_model_fails_s1_and_g1_and_the_report_still_completes(trained, corpus, tmp_path):
    chars, _, val = corpus
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.norm_out.weight.fill_(float("nan"))
    result = diagnose(model, chars, val, None, tmp_path,
                      DiagnoseOptions(**{**FAST, "train_steps": 2, "overfit_steps": 2}))
    status = {r.id: r.status for r in result.results}
    assert status["S1"] == "FAIL" and status["G1"] == "FAIL"
    assert status["S0"] == "FAIL"   # a NaN parameter is an initialization failure too
    assert status["G3"] == "FAIL"   # the loss cannot fall
    assert all(s in T.STATUSES for s in status.values())
    assert (tmp_path / "report.md").is_file()


def test_baselines_get_not_applicable_for_what_they_lack(corpus):
    torch.manual_seed(0)
    results = {r.id: r for r in run_suites(probe_for(get_model("GPT2", **TINY), corpus[2]))}
    for suite_id in ("S2", "G4", "D1", "D2", "D3", "D4"):
        assert results[suite_id].status == "N/A", suite_id
    for suite_id in ("S0", "S1", "S3", "S4", "G1", "G2"):
        assert results[suite_id].status == "PASS", (suite_id, results[suite_id])
    assert results["S4"].value == 0.0  # KV cache continuation is exact
    rwkv = {r.id: r for r in run_suites(probe_for(get_model("RWKV6", **TINY), corpus[2]),
                                        [f for f in SUITES if f.suite_id in ("S2", "D2", "G4", "D3")])}
    assert rwkv["S2"].status == "PASS" and rwkv["D2"].status == "PASS"
    assert rwkv["G4"].status == "N/A" and rwkv["D3"].status == "N/A"


# ---- G3 from a run log, and input validation -----------------------------------------------------

def test_g3_reads_the_run_log(tmp_path, corpus):
    lines = [{"kind": "train", "step": s, "loss": 4.0 - s / 100, "grad_norm": 0.9, "lr": 3e-4}
             for s in range(10, 110, 10)]
    lines.append({"kind": "eval", "step": 100, "val_loss": 3.2, "grad_ratio": 0.7, "gate_rwkv": 0.4})
    lines.append({"kind": "summary", "step": 100, "loss": 9.9, "best_val_loss": 3.2})
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"step": 11')  # torn last line
    run_log = RunLog.read(log)
    assert len(run_log.records) == 12 and run_log.last("grad_ratio") == 0.7
    assert run_log.train_losses()[1][-1] == pytest.approx(3.0)  # the summary line is not a train line
    probe = Probe(get_model("GF-MH", **TINY), corpus[2], run_log=run_log, options=DiagnoseOptions(**FAST))
    g3 = run_suites(probe, [f for f in SUITES if f.suite_id == "G3"])[0]
    assert g3.status == "PASS" and "run's log" in g3.detail and "training" not in probe.__dict__
    rising = [{"kind": "train", "step": s, "loss": 3.0 + s / 100, "grad_norm": 0.9} for s in range(10, 110, 10)]
    log.write_text("\n".join(json.dumps(line) for line in rising))
    probe = Probe(get_model("GF-MH", **TINY), corpus[2], run_log=RunLog.read(log), options=DiagnoseOptions(**FAST))
    assert run_suites(probe, [f for f in SUITES if f.suite_id == "G3"])[0].status == "FAIL"


def test_bad_inputs_are_refused_with_the_fix(corpus):
    model = get_model("GF-MH", **TINY)
    with pytest.raises(ValueError, match="vocabulary has 65"):
        Probe(model, torch.tensor([1, 2, 300] * 40), options=DiagnoseOptions(**FAST))
    with pytest.raises(ValueError, match="at least seq_len"):
        Probe(model, torch.arange(10), options=DiagnoseOptions(**FAST))
    with pytest.raises(ValueError, match="batch_size"):
        DiagnoseOptions(batch_size=0)
    with pytest.raises(ValueError, match="integer ids"):
        Probe(model, torch.rand(100), options=DiagnoseOptions(**FAST))


def test_token_classes():
    assert [character_class(t) for t in (" ", "\n", ",", "!?", "7", "e", " the", "x1", "\ufffd", "")] == \
        ["whitespace", "whitespace", "punctuation", "punctuation", "digits", "letters", "letters", "other",
         "other", "other"]


def test_ablation_metrics_on_a_sequential_stack():
    """SEQ stacks hold both branches in different layers: ablation zeroes each wherever it is."""
    torch.manual_seed(0)
    model = get_model("SEQ-RMMR", **{**TINY, "n_layers": 4})
    ids = torch.randint(0, 65, (2, 16))
    result = ablation_metrics(model, ids, ids)
    assert result["loss_without_rwkv"] != result["loss"] and result["loss_without_mamba"] != result["loss"]


def test_every_registry_model_is_diagnosed_without_a_crash():
    """Every suite and analysis runs on every registered model: what a model lacks is N/A, nothing raises."""
    from groundthink.models import REGISTRY

    options = DiagnoseOptions(seq_len=16, batch_size=4, long_sequences=2, variety_samples=3, train_steps=2,
                              train_batch_size=2, overfit_steps=0)
    balance = {"G4", "D3", "D4", "ABL", "GC", "TOK"}
    for key in REGISTRY:
        torch.manual_seed(0)
        model = get_model(key, **{**TINY, "n_layers": 3})
        result = diagnose(model, None, None, None, None, options)
        assert not [r for r in result.results if r.detail.startswith("error:")], key
        hybrid = {"rwkv6", "mamba2"} <= {b for layer in model.layers for b in layer.branches}
        for r in result.results:
            if r.id in balance:
                assert (r.status == "N/A") == (not hybrid), (key, r)
