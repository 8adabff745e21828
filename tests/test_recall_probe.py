"""Token-level MQAR (data/mqar.py) and the per-branch recall probe (experiments/recall_probe.py)."""
import json
import math

import pytest
import torch

from groundthink.cli.main import main
from groundthink.data.mqar import IGNORE, MQARSetting, answer_accuracy, answer_loss, mqar_batch
from groundthink.errors import UserError
from groundthink.experiments.recall_probe import ProbeOptions, run_probe

SETTING = MQARSetting(seq_len=64, pairs=4, vocab_size=8192)


def batch(setting=SETTING, count=200, seed=0):
    return mqar_batch(setting, count, torch.Generator().manual_seed(seed))


def test_pairs_come_first_then_every_key_is_asked_once_at_an_even_offset():
    inputs, targets = batch()
    k, half = SETTING.pairs, SETTING.vocab_size // 2
    keys, values = inputs[:, 0:2 * k:2], inputs[:, 1:2 * k:2]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < SETTING.vocab_size)).all()
    assert all(len(set(row.tolist())) == k for row in keys) and all(len(set(row.tolist())) == k for row in values)
    asked = targets != IGNORE
    assert (asked.sum(1) == k).all() and not asked[:, :2 * k].any()
    positions = asked.nonzero()[:, 1]
    assert ((positions - 2 * k) % 2 == 0).all()
    # The answer at each asked position is the value paired with the key found there: recall from context.
    for row in range(len(inputs)):
        table = dict(zip(keys[row].tolist(), values[row].tolist()))
        where = asked[row].nonzero().flatten()
        assert sorted(inputs[row, where].tolist()) == sorted(table)
        assert [table[key] for key in inputs[row, where].tolist()] == targets[row, where].tolist()


def test_batches_are_deterministic_from_the_seed_and_queries_come_mostly_early():
    assert all(torch.equal(a, b) for a, b in zip(batch(seed=3), batch(seed=3)))
    assert not torch.equal(batch(seed=3)[0], batch(seed=4)[0])
    _, targets = batch(MQARSetting(256, 16), count=500)
    offsets = ((targets != IGNORE).nonzero()[:, 1] - 32) // 2  # query slot, 0 .. 111
    assert (offsets < 56).float().mean() > 0.6  # Zoology's power law: nearer slots likelier (uniform: 0.5)


def test_the_loss_and_accuracy_count_answer_positions_only():
    inputs, targets = batch(count=8)
    logits = torch.randn(*inputs.shape, SETTING.vocab_size, requires_grad=True)
    loss = answer_loss(logits, targets)
    asked = targets != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[asked], targets[asked])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert (logits.grad[~asked] == 0).all() and (logits.grad[asked] != 0).any()
    oracle = torch.zeros_like(logits).scatter_(-1, targets.clamp(min=0)[..., None], 1.0)
    hits, total = answer_accuracy(oracle, targets)
    assert int(hits) == total == 8 * SETTING.pairs


@pytest.mark.parametrize("seq_len, pairs, vocab", [(15, 4, 8192), (64, 4, 8)])
def test_settings_that_cannot_hold_the_task_are_refused(seq_len, pairs, vocab):
    with pytest.raises(ValueError, match="MQAR"):
        MQARSetting(seq_len, pairs, vocab)


TINY = dict(settings=[(16, 2)], vocab_size=32, hidden_size=32, layers=2, attention_layers=1, batch_size=32,
            test_examples=256, device="cpu",
            model_settings={"rwkv_heads": 2, "mamba_head_dim": 16, "mamba_state_size": 16})


def test_the_probe_scores_each_model_and_each_branch_of_the_hybrid_and_resumes(tmp_path):
    options = ProbeOptions(models=["GF-MH", "GPT2"], steps=4, lrs=[1e-3, 3e-3], **TINY)
    lines = []
    record = run_probe(options, tmp_path, log=lines.append)
    assert [(e["model"], e["lr"]) for e in record["entries"]] == [("GF-MH", 1e-3), ("GF-MH", 3e-3),
                                                                    ("GPT2", 1e-3), ("GPT2", 3e-3)]
    for entry in record["entries"]:
        assert 0 <= entry["accuracy"] <= 1 and entry["steps"] == 4
        assert ("accuracy_without_rwkv6" in entry) == ("accuracy_without_mamba2" in entry) == (entry["model"] == "GF-MH")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["entries"] == json.loads(json.dumps(record["entries"]))
    report = (tmp_path / "results.md").read_text()
    assert "| GF-MH without mamba2 |" in report and "| GPT2 |" in report and "GPT2 without" not in report
    again = []
    assert run_probe(options, tmp_path, log=again.append)["entries"] == saved["entries"] and again == []
    with pytest.raises(UserError, match="other options"):
        run_probe(ProbeOptions(models=["GPT2"], steps=5, **TINY), tmp_path)


def test_a_trained_attention_model_recalls_far_above_chance(tmp_path):
    options = ProbeOptions(models=["GPT2"], steps=150, lrs=[1e-2], **TINY)
    accuracy = run_probe(options, tmp_path, log=lambda line: None)["entries"][0]["accuracy"]
    assert accuracy > 4 * 2 / 32  # chance: one of the 16 values


@pytest.mark.parametrize("flags, message", [
    (["--settings", "64"], "SEQ_LEN:PAIRS"),
    (["--settings", "16:8"], "seq_len >= 4 x pairs"),
    (["--models", "GF-MH,NOPE"], "unknown model"),
    (["--hidden", "30"], "model.rwkv_heads"),
    (["--set", "train.lr=1"], "model.KEY=VALUE"),
])
def test_bad_probe_flags_are_one_line_errors(flags, message, capsys, tmp_path):
    assert main(["recall-probe", "--out", str(tmp_path), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


@pytest.mark.gpu
def test_the_probe_trains_through_the_captured_step_on_cuda(tmp_path):
    options = ProbeOptions(models=["GF-MH", "GPT2"], steps=8, lrs=[1e-3], **{**TINY, "device": "cuda"})
    for entry in run_probe(options, tmp_path, log=lambda line: None)["entries"]:
        assert math.isfinite(entry["final_train_loss"]) and 0 <= entry["accuracy"] <= 1
