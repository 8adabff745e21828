"""Shared helpers of the training tests: tiny configs that train in a fraction of a second per step."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from groundthink.training.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (the scripts are not a package; tests call their functions)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_MODEL = {"hidden_size": 32, "n_layers": 2, "rwkv_heads": 2, "mamba_head_dim": 16, "mamba_state_size": 16}


def tiny_config(model: str = "GF-MH", data: dict | None = None, **train) -> Config:
    settings = {"steps": 20, "batch_size": 4, "seq_len": 16, "log_every": 1, "eval_every": 10, "eval_windows": 8,
                "progress": False, "tensorboard": False, **train}
    return config_from_dict({"model": {"key": model, **TINY_MODEL},
                             "data": {"source": "recall", "recall_chars": 20000, **(data or {})},
                             "train": settings}).validate()


def cli_env(cache: Path) -> dict:
    """Environment for a `python -m groundthink` subprocess: this checkout, its own cache, one thread."""
    env = dict(os.environ, GROUNDTHINK_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli(*args, cache: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groundthink", *map(str, args)], env=cli_env(cache),
                          capture_output=True, text=True, timeout=300, **kwargs)


TINY_FLAGS = ["--set", "model.hidden_size=32", "--set", "model.n_layers=2", "--set", "model.rwkv_heads=2",
              "--set", "model.mamba_head_dim=16", "--set", "model.mamba_state_size=16",
              "--set", "data.recall_chars=20000", "--set", "train.eval_windows=8", "--set", "train.tensorboard=false"]
