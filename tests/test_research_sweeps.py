"""The research sweeps: baby-gpt carries nanoGPT's recipe at equal parameters, the scale sweeps' baselines
match the hybrid's size, and the scale report's table is the sweeps' own numbers."""
import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from groundthink.data.synthetic import recall_text
from groundthink.experiments import load_spec, run_sweep
from groundthink.experiments.scale import write_scale_report
from groundthink.experiments.spec import build_config
from groundthink.models.model import GroundThinkLM
from groundthink.training.schedule import lr_at
from training_utils import REPO

SWEEPS = REPO / "configs" / "sweeps"


def parameter_counts(spec, vocab: int, variant=None) -> dict[str, int]:
    counts = {}
    for run in spec.runs:
        if run.variant == variant:
            with torch.device("meta"):  # shapes only: no memory, no initialization cost
                counts[run.model] = GroundThinkLM(build_config(run.config, spec.data_root).model_config(vocab)).num_params
    return counts


def test_baby_gpt_is_nanogpts_recipe_at_equal_parameters():
    spec = load_spec(SWEEPS / "baby-gpt.yaml", seeds=[0])
    assert spec.variants == ["drop0.2", "drop0.1"] and spec.models == ["GF-MH", "HGF-MH", "MAMBA2", "GPT2",
                                                                        "GPT2-gpt2init"]
    for run in spec.runs:
        config = build_config(run.config, spec.data_root)
        tc = config.train
        assert (tc.steps, tc.batch_size, tc.seq_len, tc.lr, tc.min_lr, tc.beta2) == (5000, 64, 256, 1e-3, 1e-4, 0.99)
        assert lr_at(99, tc.lr, tc.min_lr, tc.steps, tc.warmup_ratio) == tc.lr  # 100 warmup steps
        assert lr_at(98, tc.lr, tc.min_lr, tc.steps, tc.warmup_ratio) < tc.lr
        model = config.model_config(65)
        assert model.dropout == {"drop0.2": 0.2, "drop0.1": 0.1}[run.variant]
        assert model.init == ("gpt2" if run.model == "GPT2-gpt2init" else "torch")
    counts = parameter_counts(spec, 65, "drop0.2")
    assert counts["GPT2"] == 10_745_088  # nanoGPT's 6 x 384 GPT with a 256-position table
    for name, count in counts.items():
        assert abs(count / counts["GPT2"] - 1) <= 0.05, (name, count)


@pytest.mark.parametrize("name", ["scale-9m", "scale-30m"])
def test_scale_baselines_match_the_hybrids_size(name):
    spec = load_spec(SWEEPS / f"{name}.yaml", seeds=[0])
    counts = parameter_counts(spec, 8192)
    target = {"scale-9m": 9e6, "scale-30m": 30e6}[name]
    assert abs(counts["GF-MH"] / target - 1) < 0.02
    assert counts["GF-RH"] == counts["GF-MH"] and abs(counts["HY"] - counts["GF-MH"]) < 100  # one shape
    for baseline in ("GPT2", "RWKV6", "MAMBA2"):
        assert abs(counts[baseline] / counts["GF-MH"] - 1) <= 0.05, (baseline, counts)


SPEC = """
name: {name}
data_root: {root}
base:
  model: {{hidden_size: {hidden}, n_layers: 2, rwkv_heads: 2, mamba_head_dim: 16, mamba_state_size: 16}}
  data: {{source: "{{data_root}}/text.txt"}}
  train: {{steps: 6, batch_size: 4, seq_len: 16, lr: 0.01, log_every: 3, eval_every: 3, eval_windows: 8,
          progress: false, tensorboard: false, device: cpu}}
models: [GF-MH, GPT2]
seeds: [0, 1]
measure: {{ablation: true}}
"""


def test_scale_report_is_the_sweeps_numbers_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "text.txt").write_text(recall_text(20000, 0, 2, 8), encoding="utf-8")
    sweeps = []
    for name, hidden in (("small", 32), ("large", 64)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(SPEC.format(name=name, root=tmp_path, hidden=hidden), encoding="utf-8")
        spec = load_spec(path)
        assert run_sweep(spec, tmp_path / name, log=lambda line: None) == 0
        sweeps.append((spec, tmp_path / name))
    write_scale_report(sweeps, tmp_path / "report")
    with open(tmp_path / "report" / "scale.csv", newline="") as f:
        rows = {(r["sweep"], r["model"]): r for r in csv.DictReader(f)}
    assert list(rows) == [("small", "GF-MH"), ("small", "GPT2"), ("large", "GF-MH"), ("large", "GPT2")]

    def summary(sweep, model, seed):
        return json.loads((tmp_path / sweep / model / f"seed{seed}" / "summary.json").read_text())

    for sweep in ("small", "large"):
        hybrid = [summary(sweep, "GF-MH", s) for s in (0, 1)]
        gpt = [summary(sweep, "GPT2", s) for s in (0, 1)]
        row = rows[(sweep, "GF-MH")]
        ratio = statistics.fmean(a["best_val_loss"] / b["best_val_loss"] for a, b in zip(hybrid, gpt))
        assert float(row["ratio_to_reference"]) == pytest.approx(ratio, rel=1e-12)
        assert float(row["params"]) == hybrid[0]["params"]
        shares = [json.loads((tmp_path / sweep / "GF-MH" / f"seed{s}" / "final_metrics.json").read_text())
                  ["ablation"]["ablation_share_mamba"] for s in (0, 1)]
        assert float(row["ablation_share_mamba"]) == pytest.approx(statistics.fmean(shares), rel=1e-12)
        assert rows[(sweep, "GPT2")]["ratio_to_reference"] == "" and rows[(sweep, "GPT2")]["gate_rwkv"] == ""
    assert float(rows[("large", "GF-MH")]["params"]) > float(rows[("small", "GF-MH")]["params"])
    assert f"{ratio:.4f}" in (tmp_path / "report" / "scale.md").read_text()
    assert Path(tmp_path / "report" / "scale.png").read_bytes()[:4] == b"\x89PNG"
