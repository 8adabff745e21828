"""``groundthink models``: prints the registry table; a bad value is one line on stderr and exit status 2."""
import subprocess
import sys

import pytest

from groundthink.cli.main import main
from groundthink.models import REGISTRY, count_parameters, get_model

SMALL = ["--vocab-size", "29", "--hidden-size", "32", "--n-layers", "2"]


def table(out: str) -> tuple[str, dict]:
    """The header above the table (joined into one string) and the rows by key."""
    lines = out.rstrip("\n").splitlines()
    start = lines.index(next(line for line in lines if line.split()[:2] == ["key", "description"]))
    assert lines[start].split() == ["key", "description", "fusion/block", "total", "params"]
    return " ".join(lines[:start]), {line.split()[0]: line.split() for line in lines[start + 2:]}


def total(row) -> int:
    return int(row[-1].replace(",", ""))


def test_models_command_prints_table(capsys):
    assert main(["models", *SMALL]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    header, rows = table(captured.out)
    assert "vocab_size=29" in header and "hidden_size=32" in header and "n_layers=2" in header
    assert list(rows) == list(REGISTRY)
    # Per-block fusion params and totals are the model's own counts at the requested size.
    model = get_model("GF-MH", vocab_size=29, hidden_size=32, n_layers=2)
    counts = count_parameters(model)
    assert rows["GF-MH"][-2:] == [f"{counts['fusion'] // 2:,}", f"{counts['total']:,}"]
    assert rows["GPT2"][-2] == "-"


def test_models_table_matches_list_models(capsys):
    from groundthink.models import list_models

    main(["models", *SMALL])
    cli = capsys.readouterr().out
    list_models(show=True, vocab_size=29, hidden_size=32, n_layers=2)
    assert capsys.readouterr().out == cli


@pytest.mark.parametrize("argv, names", [
    (["--n-layers", "0"], "n_layers"),
    (["--vocab-size", "-3"], "vocab_size"),
    (["--hidden-size", "30"], "hidden_size 30"),  # 30 * 0.5 = 15: RWKV-6's 4 heads cannot split the key dim
])
def test_bad_value_is_one_line_exit_2(capsys, argv, names):
    assert main(["models", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and names in err[0]


def test_set_counts_at_the_shape_it_names_and_the_table_fits_100_columns(capsys):
    assert main(["models", "--set", "model.hidden_size=64", "--set", "model.n_layers=4"]) == 0
    out = capsys.readouterr().out
    header, rows = table(out)
    for key in REGISTRY:
        assert total(rows[key]) == get_model(key, hidden_size=64, n_layers=4).num_params, key
    for field in ("vocab_size=65", "hidden_size=64", "n_layers=4", "rwkv_heads=4", "mamba_state_size=128"):
        assert field in header
    assert max(len(line) for line in out.splitlines()) <= 100


def test_config_counts_at_its_shape_and_each_key_keeps_its_own_fusion(tmp_path, capsys):
    # As a run folder's config.yaml: every model field resolved, its own key's fusion and gate among them.
    shape = dict(vocab_size=38, hidden_size=64, n_layers=4, rwkv_heads=2, mamba_head_dim=32, mamba_state_size=16)
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  key: GF-MH\n  layers: P\n  fusion: gate\n  gate_init: 0.3\n"
                      + "".join(f"  {k}: {v}\n" for k, v in shape.items()) + "train:\n  steps: 5\n")
    assert main(["models", "--config", str(config)]) == 0
    _, rows = table(capsys.readouterr().out)
    for key in ("GF-MH", "HY", "CP", "GPT2", "SEQ-RMMR"):
        assert total(rows[key]) == get_model(key, **shape).num_params, key
    assert main(["models", "--config", str(config), "--set", "model.n_layers=2"]) == 0  # --set over the file
    _, rows = table(capsys.readouterr().out)
    assert total(rows["GF-MH"]) == get_model("GF-MH", **{**shape, "n_layers": 2}).num_params


@pytest.mark.parametrize("argv, message", [
    (["--set", "train.lr=1e-3"], "only model settings apply"),
    (["--set", "model.hidden_sze=64"], "did you mean 'hidden_size'"),
    (["--set", "model.hidden_size=big"], "model.hidden_size"),
    (["--set", "model.hidden_size"], "section.key=value"),
    (["--config", "missing.yaml"], "not found"),
])
def test_bad_settings_are_one_line(capsys, argv, message):
    assert main(["models", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and message in err[0], err


def test_bad_value_from_a_real_process():
    # The installed entry point's behaviour, end to end: no traceback, one line, status 2.
    proc = subprocess.run([sys.executable, "-m", "groundthink", "models", "--n-layers", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "n_layers" in lines[0], proc.stderr
