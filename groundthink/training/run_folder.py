"""The run folder: every check and every write of ``groundthink train``'s output folder, in one place.

Layout (the checkpoint format itself is ``checkpoint.py``'s)::

    RUN_DIR/config.yaml      resolved configuration (model key + every model field, data, train)
    RUN_DIR/tokenizer.json   the tokenizer (char or BPE)
    RUN_DIR/metrics.jsonl    one JSON object per line: kind train / eval / summary
    RUN_DIR/summary.json     the final summary (with the run's phase clock)
    RUN_DIR/curves.png       loss, learning rate and balance curves (drawn by the train command)
    RUN_DIR/checkpoints/     step_XXXXXXX/ folders and the latest / best pointers
    RUN_DIR/.lock            held (flock) while a process trains here

What it guarantees: a new run never writes into a folder that holds something else (or another run's
checkpoints); two processes never train in one folder (the second gets a one-line error; the lock of a
process that died is released by the kernel with it); a refused or failed command changes no file of the
run (a resume's new settings reach config.yaml with its first checkpoint); a full disk or a read-only
folder is one line that names the folder; a process that ends normally leaves no temporary file.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from groundthink.data import NAMED_SOURCES, load_tokenizer
from groundthink.data.files import atomic_write_text
from groundthink.errors import UserError
from groundthink.training import checkpoint as ckpt
from groundthink.training.config import Config, load_config
from groundthink.training.logging import clean, truncate_metrics

CONFIG, TOKENIZER, METRICS, SUMMARY, LOCK = "config.yaml", "tokenizer.json", "metrics.jsonl", "summary.json", ".lock"
RUN_MARKERS = (CONFIG, "sweep_run.json")
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}


def absolute_source(source: str | None) -> str | None:
    """A data source that names an existing local path, made absolute; named sources unchanged."""
    if source is None or source in NAMED_SOURCES or not Path(source).expanduser().exists():
        return source
    return str(Path(source).expanduser().resolve())


def resolved_config(config: Config, vocab_size: int) -> Config:
    """The config a run folder keeps: every model field filled in (vocabulary from the tokenizer) and local
    data paths absolute, so the run resumes and evaluates from any directory."""
    resolved = copy.deepcopy(config)
    resolved.model.settings = config.model_config(vocab_size).to_dict()
    resolved.data.source = absolute_source(config.data.source)
    resolved.data.val_source = absolute_source(config.data.val_source)
    return resolved


def disk_problem(err: OSError) -> str | None:
    return DISK_ERRORS.get(err.errno)


class RunFolder:
    def __init__(self, path):
        self.path = Path(path)
        self._lock_file = None
        self.pending_config: str | None = None   # a resume's config, written with its first checkpoint

    # ---- reading and checking (nothing is written) --------------------------------------------------

    def is_run_folder(self) -> bool:
        """Written by groundthink train (config.yaml), or prepared by a sweep for it (its sweep_run.json)."""
        return any((self.path / marker).is_file() for marker in RUN_MARKERS)

    def check_new_run(self) -> None:
        """A new run may write here: a new or empty folder, or a run folder of ours without checkpoints."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder; pass a folder name with --out")
        if self.path.is_dir():
            if ckpt.list_checkpoints(self.path):
                raise UserError(f"run folder {self.path} already holds a run with checkpoints; continue it with "
                                f"--resume {self.path}, or choose another --out")
            entries = [p.name for p in self.path.iterdir() if p.name != LOCK]
            if entries and not self.is_run_folder():
                raise UserError(f"{self.path} is not empty and is not a run folder (no {CONFIG}; it holds "
                                f"{', '.join(sorted(entries)[:3])}{', ...' if len(entries) > 3 else ''}); "
                                f"choose a new or empty folder with --out")
        existing = next(p for p in (self.path, *self.path.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write the run folder {self.path}: {existing} is not writable; choose "
                            f"another --out")

    def resume_checkpoint(self) -> Path:
        """The newest intact checkpoint (``latest`` when it is), or a one-line error."""
        return ckpt.resume_checkpoint(self.path)

    def tokenizer(self):
        if not (self.path / TOKENIZER).is_file():
            raise UserError(f"run folder {self.path} has no {TOKENIZER}; it was not written by groundthink train "
                            f"(start a new run with --out)")
        return load_tokenizer(self.path / TOKENIZER)

    def latest(self) -> Path | None:
        return ckpt.read_pointer(self.path, "latest")

    def resumed_config(self, overrides: list[str], model_key: str | None = None) -> Config:
        """The run's own config with ``--set`` / flag overrides; only ``train.*`` may change."""
        if not (self.path / CONFIG).is_file():
            raise UserError(f"{self.path} is not a run folder (no {CONFIG}); --resume takes a folder written by "
                            f"groundthink train")
        saved = ckpt.read_run_config(self.path)
        if model_key is not None and model_key != saved.model.key:
            raise UserError(f"run {self.path} trained model {saved.model.key!r}, not {model_key!r}; drop --model "
                            f"to resume it, or start a new run with --out")
        config = load_config(None, overrides, base=copy.deepcopy(saved))
        for data in (saved.data, config.data):  # a relative path to the same file is the same data
            data.source, data.val_source = absolute_source(data.source), absolute_source(data.val_source)
        # Training settings may change on resume; the model and the data may not (the checkpoint depends on them).
        for section in ("model", "data"):
            before, after = saved.to_dict()[section], config.to_dict()[section]
            changed = [key for key in after if after[key] != before.get(key)]
            if changed:
                raise UserError(f"{section}.{changed[0]} cannot change when resuming (the checkpoint depends on "
                                f"it); only train.* settings can, e.g. --steps or --set train.lr=...")
        return config

    # ---- writing ----------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the folder for this process; a second writer gets a one-line error."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"run folder {self.path} is in use by {holder}; wait for it to finish (or stop it), "
                            f"or train into another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            (self.path / LOCK).unlink(missing_ok=True)
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def prepare(self, config: Config, tokenizer, resumed_step: int | None) -> None:
        """Make the folder ready for training: a new run's config and tokenizer, or a resume's metrics cut
        back to its checkpoint (the config waits for the first checkpoint)."""
        ckpt.clean_partial(self.path)
        if resumed_step is None:
            for stale in (METRICS, SUMMARY):
                (self.path / stale).unlink(missing_ok=True)
            tokenizer.save(self.path / TOKENIZER)
            atomic_write_text(self.path / CONFIG, config.to_yaml())
        else:
            truncate_metrics(self.path, resumed_step)
            self.pending_config = config.to_yaml()

    def save(self, step: int, model, state: dict, meta: dict, best: bool, keep_last: int) -> Path:
        """Write a checkpoint of ``step``, point ``latest`` (and ``best``) at it, prune old ones."""
        try:
            path = ckpt.save_checkpoint(self.path, step, model, state, meta)
        except OSError as err:
            ckpt.clean_partial(self.path)
            raise self.write_error(err, f"checkpoint of step {step}") from None
        ckpt.set_pointer(self.path, "latest", path)
        if best:
            ckpt.set_pointer(self.path, "best", path)
        ckpt.prune_checkpoints(self.path, keep_last)
        if self.pending_config is not None:
            atomic_write_text(self.path / CONFIG, self.pending_config)
            self.pending_config = None
        return path

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.path / SUMMARY, json.dumps(clean(summary), indent=1) + "\n")

    def write_error(self, err: OSError, what: str) -> UserError:
        """One line for a failed write: what could not be written, why, what is kept, the fix."""
        why = disk_problem(err) or err.strerror or type(err).__name__
        last = self.latest()
        kept = f"the last good checkpoint {last.name} is kept" if last else "no checkpoint had been written yet"
        return UserError(f"could not write the {what} in {self.path} ({why}); {kept}; free space or fix the "
                         f"folder's permissions, then continue with groundthink train --resume {self.path}"
                         if last else
                         f"could not write the {what} in {self.path} ({why}); {kept}; free space or fix the "
                         f"folder's permissions (or choose another --out) and start again")

    @contextlib.contextmanager
    def disk_errors_explained(self, what: str = "training output"):
        """A full disk or a read-only folder anywhere inside becomes ``write_error``'s one line."""
        try:
            yield
        except OSError as err:
            if disk_problem(err) is None:
                raise
            raise self.write_error(err, what) from None

    def remove_if_empty(self) -> None:
        """A run that wrote nothing leaves no empty folder behind (a refused command changes nothing)."""
        with contextlib.suppress(OSError):
            if self.path.is_dir() and not any(self.path.iterdir()):
                shutil.rmtree(self.path)
