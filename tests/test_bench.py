"""``groundthink bench`` on CPU: a real (tiny) run, its table and JSON, and one-line errors for bad input."""
import json

import pytest
import torch

from groundthink.experiments.speed import format_table
from groundthink.cli.main import main
from training_utils import load_benchmark


def test_bench_cpu_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--device", "cpu", "--models", "GF-MH,GPT2", "--steps", "1", "--warmup", "1",
                 "--batch-size", "2", "--seq-len", "16", "--json", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    table = captured.out
    assert "GF-MH" in table and "GPT2" in table and "1.00x" in table
    # Progress without a terminal: a status line with the ETA after the first row, a total at the end.
    assert "bench: 1/2 rows (50%)" in captured.err and "ETA" in captured.err and "bench: 2 rows in" in captured.err
    assert "cpu   eager   GF-MH" in captured.err
    data = json.loads(out.read_text())
    rows = {row["model"]: row for row in data["rows"]}
    assert set(rows) == {"GF-MH", "GPT2"} and data["environment"]["device"] == "cpu"
    for row in rows.values():
        assert row["shape"] == "cpu" and row["mode"] == "eager" and row["seq_len"] == 16
        assert row["tok_per_s"] > 0 and row["finite"] and row["flops_per_step"] > 0
        assert row["tok_per_s"] == pytest.approx(2 * 16 / row["ms_per_step"] * 1e3, rel=1e-3)
    assert rows["GPT2"]["vs_gpt"] == 1.0
    assert rows["GF-MH"]["vs_gpt"] == pytest.approx(rows["GF-MH"]["tok_per_s"] / rows["GPT2"]["tok_per_s"], rel=1e-2)


@pytest.mark.parametrize("argv, message", [
    (["--models", "NOPE"], "--models: unknown"),
    (["--shapes", "huge"], "--shapes"),
    (["--mode", "turbo"], "--mode"),
    (["--mode", "graph", "--device", "cpu"], "on CPU use --mode eager"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bench_bad_input_is_one_line(argv, message, capsys):
    assert main(["bench", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_failed_row_is_shown_not_raised():
    rows = [{"shape": "char", "model": "GF-MH", "mode": "graph", "error": "OOM: out of memory"}]
    assert "OOM: out of memory" in format_table(rows)


def test_profile_by_site_charges_backward_ops_to_their_forward_module():
    # profile_step --by-site: LerpLinear's addcmul and its backward are both charged to LerpLinear, the
    # mixes' addcmul (a function RWKV6.forward calls) to RWKV6.
    from torch.profiler import ProfilerActivity, profile

    from groundthink.layers.rwkv6 import RWKV6

    profile_step = load_benchmark("profile_step")
    layer = RWKV6(hidden_size=32, num_heads=2)
    profile_step.annotate_modules(layer)
    x = torch.randn(2, 8, 32, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x)[0].square().sum().backward()
    sites = profile_step.time_by_site(prof.events(), use_device=False)
    forward = {site for site, op in sites if op == "aten::addcmul"}
    backward = {site for site, op in sites if op.startswith("AddcmulBackward0 > ")}
    assert forward == backward == {"LerpLinear", "RWKV6"}, (forward, backward)
    assert all(count > 0 and us > 0 for count, us in sites.values())
