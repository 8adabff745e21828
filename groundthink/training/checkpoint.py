"""The checkpoint format, and which checkpoint of a run folder to use.

A checkpoint (the rest of the run folder is ``run_folder.py``'s)::

    RUN_DIR/checkpoints/step_0000100/model.safetensors     weights
                                    /trainer_state.pt      optimizer, schedule, sampler, RNG states
                                    /meta.json             step, val loss, model key
    RUN_DIR/checkpoints/latest     pointer: the name of the newest complete checkpoint
    RUN_DIR/checkpoints/best       pointer: the checkpoint with the best val loss

A checkpoint is written into a hidden temporary folder and renamed into place only when complete; pointers
are rewritten atomically after that; old checkpoints are renamed away before being deleted. So at any
moment (SIGKILL included) every ``step_*`` folder is complete and the pointers name existing ones. What a
disk or a person damaged afterwards is caught when the checkpoint is chosen (``checkpoint_problem``): every
command that reads a run takes the newest intact one and names the others in a warning, never deleting them.
Loading never unpickles arbitrary objects: weights are safetensors, trainer state loads with
``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

from groundthink.data.files import atomic_write_text, fsync_dir, give_usual_mode
from groundthink.data.tokenizers import load_tokenizer
from groundthink.errors import UserError
from groundthink.models.model import GroundThinkLM
from groundthink.training.config import Config, config_from_dict, read_yaml

CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
META = "meta.json"
POINTERS = ("latest", "best")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in (WEIGHTS, STATE, META))


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints (every file present; not checked further), oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if is_complete(p))


def read_pointer(run_dir, which: str) -> Path | None:
    """The checkpoint a pointer names, if the pointer exists and names a complete checkpoint."""
    pointer = checkpoints_dir(run_dir) / which
    if not pointer.is_file():
        return None
    target = checkpoints_dir(run_dir) / pointer.read_text(encoding="utf-8").strip()
    return target if is_complete(target) else None


def set_pointer(run_dir, which: str, checkpoint: Path) -> None:
    atomic_write_text(checkpoints_dir(run_dir) / which, checkpoint.name + "\n")


def save_checkpoint(run_dir, step: int, model: torch.nn.Module, state: dict, meta: dict) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` atomically and return its path (pointers are the caller's)."""
    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    tmp = folder / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS))
    give_usual_mode(tmp / WEIGHTS)  # safetensors creates 0600: others could not read the run's weights
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps({**meta, "step": step, "time": time.time()}, indent=1), encoding="utf-8")
    for name in (WEIGHTS, STATE, META):
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():  # the same step again: a resume from before a damaged checkpoint, or after a signal
        if checkpoint_problem(final) is None:
            remove_checkpoint(final)
        else:  # kept for inspection, out of the step_* namespace
            final.rename(final.with_name(f"damaged-{final.name}-{time.time_ns()}"))
    tmp.rename(final)
    fsync_dir(folder)
    return final


def remove_checkpoint(path: Path) -> None:
    """Rename out of the ``step_*`` namespace first, so a crash mid-delete leaves no partial checkpoint."""
    trash = path.with_name(f".trash-{path.name}-{time.time_ns()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(run_dir, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints and whatever a pointer names; delete the others."""
    kept = {p for p in (read_pointer(run_dir, which) for which in POINTERS) if p is not None}
    complete = list_checkpoints(run_dir)
    kept.update(complete[-keep_last:])
    for path in complete:
        if path not in kept:
            remove_checkpoint(path)


def clean_partial(run_dir) -> None:
    """Remove leftovers of writes or deletes that a crash interrupted."""
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for leftover in list(folder.glob(".tmp-*")) + list(folder.glob(".trash-*")):
            shutil.rmtree(leftover, ignore_errors=True)


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    try:
        load_model(model, str(Path(checkpoint) / WEIGHTS), strict=True, device=str(next(model.parameters()).device))
    except (RuntimeError, ValueError, OSError, SafetensorError) as err:
        first = " ".join(str(err).split())[:200]
        raise UserError(f"checkpoint {checkpoint} does not fit this model ({first}); it was written by another "
                        f"model or configuration — resume it with its own config.yaml") from None


def load_state(checkpoint: Path) -> dict:
    try:
        return torch.load(Path(checkpoint) / STATE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not a trainer state we wrote
        raise UserError(f"trainer state in {checkpoint} is unreadable ({type(err).__name__}); the run folder "
                        f"has no other checkpoint to use: start a new run with --out") from None


def read_meta(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / META).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Which checkpoint to use: the newest one that is intact.

def checkpoint_problem(checkpoint: Path, need_state: bool = True) -> str | None:
    """Why ``checkpoint`` cannot be used (a few words), or None when it is intact: every file present and
    readable, the weights finite, and (``need_state``) the trainer state loadable."""
    checkpoint = Path(checkpoint)
    if not is_complete(checkpoint):
        missing = [name for name in (WEIGHTS, STATE, META) if not (checkpoint / name).is_file()]
        return f"{', '.join(missing) or 'folder'} missing"
    try:
        meta = read_meta(checkpoint)
        int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{META} unreadable"
    try:
        weights = load_file(str(checkpoint / WEIGHTS))
    except Exception as err:  # noqa: BLE001 - truncated, empty or garbage files raise several types
        return f"{WEIGHTS} unreadable ({type(err).__name__})"
    bad = next((name for name, tensor in weights.items()
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)
    if bad is not None:
        return f"{WEIGHTS} holds non-finite values ({bad})"
    if need_state:
        try:
            torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - as load_state
            return f"{STATE} unreadable ({type(err).__name__})"
    return None


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def newest_intact(run_dir, prefer: Path | None = None, need_state: bool = True) -> Path | None:
    """``prefer`` when it is intact, else the newest intact checkpoint; each damaged one met is named in a
    warning and left where it is."""
    candidates = ([prefer] if prefer is not None else []) + \
        [p for p in reversed(list_checkpoints(run_dir)) if p != prefer]
    for path in candidates:
        problem = checkpoint_problem(path, need_state)
        if problem is None:
            return path
        warn(f"checkpoint {path} is damaged ({problem}); skipped, not deleted")
    return None


def resume_checkpoint(run_dir) -> Path:
    """The checkpoint ``--resume`` continues from: ``latest`` if intact, else the newest intact one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found; --resume takes a folder written by groundthink train")
    found = newest_intact(run_dir, read_pointer(run_dir, "latest"))
    if found is None:
        damaged = bool(list_checkpoints(run_dir))
        raise UserError(f"run folder {run_dir} has no {'intact' if damaged else 'complete'} checkpoint to resume "
                        f"from; start a new run with another --out (or train this folder again without --resume "
                        f"after moving its checkpoints away)")
    return found


# --------------------------------------------------------------------------------------------------
# Loading a trained run for evaluation, diagnostics and generation.

@dataclass
class LoadedRun:
    model: torch.nn.Module       # GroundThinkLM in eval mode, on the CPU
    tokenizer: object            # encode(str) -> list[int], decode(list[int]) -> str, vocab_size
    config: object               # groundthink.training.config.Config (resolved)
    step: int
    run_dir: Path
    checkpoint: Path


def read_run_config(run_dir) -> Config:
    """A run folder's resolved ``config.yaml``, validated."""
    path = Path(run_dir) / "config.yaml"
    return config_from_dict(read_yaml(path), origin=str(path)).validate()


def find_run(path) -> tuple[Path, Path | None]:
    """``(run_dir, checkpoint or None)`` from a run folder or one of its checkpoint folders."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path.parent.parent, path
    if (path / "config.yaml").is_file():
        return path, None
    raise UserError(f"{path} is neither a run folder (with config.yaml) nor a checkpoint folder "
                    f"(with {WEIGHTS}); pass a folder written by groundthink train")


def load_run(path, which: str = "best") -> LoadedRun:
    """Load a run's model (eval mode, CPU), tokenizer and resolved config.

    ``path`` is a run folder (then ``which`` picks the ``best`` or ``last`` checkpoint; ``best`` falls back
    to the last when the run never evaluated) or a checkpoint folder.
    """
    if which not in ("best", "last"):
        raise UserError(f"which must be 'best' or 'last', got {which!r}")
    run_dir, checkpoint = find_run(path)
    if checkpoint is None:
        preferred = (read_pointer(run_dir, "best") if which == "best" else None) or read_pointer(run_dir, "latest")
        checkpoint = newest_intact(run_dir, preferred, need_state=False)
        if checkpoint is None:
            state = "intact" if list_checkpoints(run_dir) else "complete"
            raise UserError(f"run folder {run_dir} has no {state} checkpoint; train it (or resume it) first")
    else:
        problem = checkpoint_problem(checkpoint, need_state=False)
        if problem is not None:
            raise UserError(f"checkpoint {checkpoint} is damaged ({problem}); pass its run folder to use the "
                            f"newest intact checkpoint")
    config = read_run_config(run_dir)
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = GroundThinkLM(config.model_config(tokenizer.vocab_size))
    load_weights(model, checkpoint)
    model.eval()
    return LoadedRun(model=model, tokenizer=tokenizer, config=config, step=int(read_meta(checkpoint)["step"]),
                     run_dir=run_dir, checkpoint=checkpoint)


# --------------------------------------------------------------------------------------------------
# Random state, for an exact resume (dropout, sampling and anything else that draws).

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
