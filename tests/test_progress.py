"""Progress (groundthink/progress.py): plain status lines with done/total, rate and ETA wherever no tqdm bar
can show (a pipe, a file, a pseudo-terminal of size 0 x 0), a bar on a real terminal size, the model-token
counter behind eval's and diagnose's ETA, and the lines the commands print when run as subprocesses."""
import copy
import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest
import torch

from groundthink.models.registry import get_model
from groundthink.progress import Progress, count_model_tokens, format_duration, usable_terminal
from training_utils import TINY_FLAGS, TINY_MODEL, cli, cli_env

TINY_TRAIN = ["train", "--steps", "6", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
              "--set", "train.eval_every=3", *TINY_FLAGS]


def pseudo_terminal(rows: int, columns: int):
    """(master fd, slave fd) of a real pseudo-terminal reporting ``rows`` x ``columns``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


def read_all(master: int, process=None) -> str:
    """Everything written to the terminal (until the writer is gone)."""
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.5 if process is None else 120)
        if not ready:
            if process is None or process.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_plain_lines_carry_count_rate_and_eta_and_a_closing_line():
    stream = io.StringIO()
    with Progress(10, "work", unit="items", stream=stream, interval=0) as progress:
        for _ in range(4):
            progress.update(1)
        progress.set_postfix("phase two")
        progress.update(6)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("work: 1/10 items (10%), ") and "items/s" in lines[0] and "ETA " in lines[0]
    assert lines[3].startswith("work: 4/10 items (40%)")
    assert lines[4].startswith("work: 10/10 items (100%)") and lines[4].endswith("; phase two")
    assert lines[-1].startswith("work: 10 items in ") and len(lines) == 6
    assert progress.eta() == 0


def test_a_timer_line_only_when_due_and_quiet_prints_nothing():
    stream = io.StringIO()
    progress = Progress(100, "slow", stream=stream, interval=3600, closing_line=False)
    for _ in range(50):
        progress.update(1)
    progress.close()
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]  # the first unit's line only
    quiet = Progress(5, "q", stream=stream, quiet=True)
    quiet.update(5)
    quiet.close()
    assert "q: " not in stream.getvalue() and quiet.status().startswith("q: 5/5 it (100%)")


def test_a_better_total_and_an_unknown_total():
    stream = io.StringIO()
    progress = Progress(1000, "d", unit="tok", stream=stream, interval=0, closing_line=False)
    progress.update(100)
    progress.set_total(200)
    assert "100/200 tok (50%)" in progress.status()
    assert "d: 7 tok," in Progress(0, "d", unit="tok", stream=stream, quiet=True, initial=7).status()
    assert (format_duration(42), format_duration(3725), format_duration(None)) == ("0:42", "1:02:05", "?")


@pytest.mark.parametrize("rows, columns, usable", [(0, 0, False), (24, 0, False), (0, 120, False),
                                                   (24, 20, False), (24, 100, True)])
def test_which_pseudo_terminals_can_show_a_bar(rows, columns, usable):
    master, slave = pseudo_terminal(rows, columns)
    with open(slave, "w", closefd=True) as stream:
        assert usable_terminal(stream) is usable
        progress = Progress(3, "t", unit="steps", stream=stream, interval=0)
        for _ in range(3):
            progress.update(1)
        progress.close()
        stream.flush()
        shown = read_all(master)
    os.close(master)
    assert usable_terminal(io.StringIO()) is False
    if usable:
        assert "3/3" in shown and "%|" in shown        # tqdm's bar
    else:                                              # where tqdm would draw nothing: plain lines
        assert "t: 1/3 steps (33%)" in shown and "t: 3 steps in " in shown


def test_model_tokens_are_counted_forward_and_backward_and_on_copies():
    model = get_model("GF-MH", vocab_size=20, **TINY_MODEL)
    ids = torch.randint(0, 20, (2, 8))
    progress = Progress(1000, "m", unit="tok", quiet=True)
    with count_model_tokens(model, progress, backward_weight=1.5):
        with torch.no_grad():
            model(ids)
        assert progress.n == 16
        model(ids, targets=ids).loss.backward()
        assert progress.n == 16 + 16 + 24
        copy.deepcopy(model)(ids[:1])                    # a training copy shares the counter
        assert progress.n == 56 + 8
    model(ids)
    assert progress.n == 64                              # nothing counted outside the block


# ---- the commands, as subprocesses with their output captured (no terminal) -------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    result = cli(*TINY_TRAIN, "--out", folder / "run", cache=folder / "cache")
    assert result.returncode == 0, result.stderr
    return folder, result


def test_train_prints_progress_lines_and_writes_its_curves(trained):
    folder, result = trained
    assert "train: 1/6 steps (17%)" in result.stdout and "ETA " in result.stdout  # stderr: errors only
    assert "train: 6 steps in " in result.stdout and "loss " in result.stdout
    assert (folder / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_prints_progress_on_stderr_and_keeps_stdout_json(trained):
    folder, _ = trained
    result = cli("eval", folder / "run", "--json", cache=folder / "cache")
    assert result.returncode == 0, result.stderr
    windows = json.loads(result.stdout)["windows"]
    assert f"(step 6): {windows:,} windows of 16 tokens of recall on cpu" in result.stderr
    first = next(line for line in result.stderr.splitlines() if " tok (" in line)
    assert first.startswith("eval: ") and "tok/s" in first and "ETA " in first
    assert "eval: " in result.stderr.splitlines()[-1] and " in " in result.stderr.splitlines()[-1]


def test_diagnose_prints_progress_and_a_table_within_100_columns(trained):
    folder, _ = trained
    result = cli("diagnose", folder / "run", "--train-steps", "3", "--overfit-steps", "5", "--batch-size", "4",
                 cache=folder / "cache")
    assert result.returncode == 0, result.stderr
    status = [line for line in result.stderr.splitlines() if line.startswith("diagnose: ")]
    assert "tok (" in status[0] and "ETA " in status[0] and status[0].endswith("S0 initialization")
    assert any(" tok in " in line for line in status) and "writing report.md" in status[-1]
    assert max(len(line) for line in result.stdout.splitlines()[1:-1]) <= 100  # the table (not the paths)
    assert (folder / "run" / "diagnostics" / "step_0000006" / "training_balance.png").stat().st_size > 0


def test_train_under_a_zero_size_pseudo_terminal_is_not_silent(tmp_path):
    """The reported case: a pty of 0 x 0, where a tqdm bar prints nothing at all."""
    master, slave = pseudo_terminal(0, 0)
    process = subprocess.Popen([sys.executable, "-m", "groundthink", *TINY_TRAIN, "--out", str(tmp_path / "run")],
                               stdin=slave, stdout=slave, stderr=slave, env=cli_env(tmp_path / "cache"))
    os.close(slave)
    shown = read_all(master, process)
    os.close(master)
    assert process.wait(timeout=300) == 0, shown
    assert "train: 1/6 steps (17%)" in shown and "train: 6 steps in " in shown
