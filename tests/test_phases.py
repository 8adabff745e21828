"""The per-phase clock of a run: phases nest by subtraction and add up to the wall time; every run reports
them in summary.json and prints them at the end."""
import json
import time

import pytest

from groundthink.training.phases import PHASES, PhaseClock
from groundthink.training.trainer import Trainer
from training_utils import tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def test_nested_phases_pause_the_outer_one_and_everything_adds_up():
    clock = PhaseClock()
    with clock.phase("steps"):
        time.sleep(0.02)
        with clock.phase("eval"):
            time.sleep(0.03)
        time.sleep(0.01)
    clock.move(0.005, "steps", "compile")
    report = clock.report()
    assert set(report) == set(PHASES) | {"wall"}
    assert report["eval"] >= 0.03 and report["steps"] >= 0.025 and report["compile"] == pytest.approx(0.005)
    assert report["eval"] < report["steps"] + report["eval"] <= report["wall"]  # eval not counted twice
    assert sum(v for k, v in report.items() if k != "wall") == pytest.approx(report["wall"], abs=0.01)
    clock.move(10.0, "eval", "other")  # never more than the source holds
    assert clock.report()["eval"] == 0.0


def test_a_run_reports_its_phases_in_the_summary_and_on_screen(tmp_path, capsys):
    summary = Trainer(tiny_config(steps=6, eval_every=3), tmp_path / "run").fit()
    phases = json.loads((tmp_path / "run" / "summary.json").read_text())["phases"]
    assert phases == pytest.approx(summary["phases"])
    assert all(phases[name] > 0 for name in ("setup", "steps", "eval", "checkpoint"))
    assert phases["compile"] > 0  # the first step's one-time work is charged apart
    assert sum(v for k, v in phases.items() if k != "wall") == pytest.approx(phases["wall"], abs=0.01)
    assert "time: " in capsys.readouterr().out
