"""The per-phase clock of a run: phases nest by subtraction and add up to the wall time; every run reports
them in summary.json and prints them at the end."""
import json
import pytest

from groundthink.training.phases import PHASES, PhaseClock
from groundthink.training.trainer import Trainer
from training_utils import tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


class FakeTimer:
    """A clock that moves only when told to: the phase arithmetic is checked exactly, with no real time."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_pause_the_outer_one_and_everything_adds_up():
    timer = FakeTimer()
    clock = PhaseClock(timer)
    timer.now += 1.0                      # before any phase: "other"
    with clock.phase("steps"):
        timer.now += 2.0
        with clock.phase("eval"):
            timer.now += 3.0
        timer.now += 4.0
    clock.move(0.5, "steps", "compile")
    clock.add_before_start("startup", since=98.0)  # the process's imports, before the clock existed
    report = clock.report()
    assert set(report) == set(PHASES) | {"wall"}
    assert report == {"startup": 2.0, "setup": 0.0, "compile": 0.5, "capture": 0.0, "steps": 5.5, "eval": 3.0,
                      "checkpoint": 0.0, "other": 1.0, "wall": 12.0}
    clock.move(10.0, "eval", "other")  # never more than the source holds
    assert clock.report()["eval"] == 0.0 and clock.report()["other"] == 4.0


def test_a_run_reports_its_phases_in_the_summary_and_on_screen(tmp_path, capsys):
    summary = Trainer(tiny_config(steps=6, eval_every=3), tmp_path / "run").fit()
    phases = json.loads((tmp_path / "run" / "summary.json").read_text())["phases"]
    assert phases == pytest.approx(summary["phases"])
    assert all(phases[name] > 0 for name in ("setup", "steps", "eval", "checkpoint"))
    assert phases["compile"] > 0  # the first step's one-time work is charged apart
    assert sum(v for k, v in phases.items() if k != "wall") == pytest.approx(phases["wall"], abs=0.01)
    assert "time: " in capsys.readouterr().out
