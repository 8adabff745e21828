"""``groundthink models``: prints the registry table; a bad value is one line on stderr and exit status 2."""
import subprocess
import sys

import pytest

from groundthink.cli.main import main
from groundthink.models import REGISTRY, count_parameters, get_model

SMALL = ["--vocab-size", "29", "--hidden-size", "32", "--n-layers", "2"]


def test_models_command_prints_table(capsys):
    assert main(["models", *SMALL]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.strip().splitlines()
    assert lines[0].split() == ["key", "description", "fusion/block", "total", "params"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
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


def test_bad_value_from_a_real_process():
    # The installed entry point's behaviour, end to end: no traceback, one line, status 2.
    proc = subprocess.run([sys.executable, "-m", "groundthink", "models", "--n-layers", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "n_layers" in lines[0], proc.stderr
