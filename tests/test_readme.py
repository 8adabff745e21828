"""The README's quickstart, run as written at a tiny scale: every `groundthink` command of its code blocks,
with flags that shrink the model and the run appended, in one folder, in order."""
from __future__ import annotations

import re
import shlex

import pytest

from groundthink.cli.main import main
from training_utils import REPO, SHAKESPEARE, TINY_FLAGS

TINY_TRAIN = ["--steps", "4", "--batch-size", "4", "--seq-len", "16", *TINY_FLAGS, "--set", "train.eval_every=2",
              "--set", "train.progress=false"]
TINY = {"train": TINY_TRAIN, "diagnose": ["--train-steps", "2", "--overfit-steps", "2", "--seq-len", "16",
                                          "--batch-size", "4"],
        "generate": ["--max-new-tokens", "8"]}


def quickstart_commands() -> list[list[str]]:
    """The `groundthink ...` lines of the README's quickstart section (continuations joined, comments cut)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("groundthink "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_quickstart_has_the_commands_a_researcher_needs():
    verbs = [command[0] for command in quickstart_commands()]
    assert {"train", "generate", "diagnose", "plot", "models"} <= set(verbs)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="needs ../shared/data/tinyshakespeare.txt")
def test_the_readme_quickstart_runs_as_written_at_a_tiny_scale(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    for command in quickstart_commands():
        command = [str(SHAKESPEARE) if arg == "../shared/data/tinyshakespeare.txt" else arg for arg in command]
        code = main(command + TINY.get(command[0], []))
        out, err = capsys.readouterr()
        assert code == 0, (command, out[-2000:], err[-2000:])
    for run in ("runs/gfmh", "runs/gpt2"):
        assert (tmp_path / run / "curves.png").stat().st_size > 0
        assert (tmp_path / run / "summary.json").is_file()
    assert list((tmp_path / "runs" / "gfmh" / "diagnostics").rglob("report.md"))
