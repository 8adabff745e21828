"""Starting data-parallel training on several processes with PyTorch's own launcher (docs/distributed.md)::

    torchrun --standalone --nproc_per_node N -m groundthink train ...     # or: groundthink train --nproc N ...

* The process group comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL
  with one GPU per rank (``cuda:LOCAL_RANK``), gloo on CPU. Every collective gives up after
  ``train.dist_timeout`` seconds, so a rank that died or stopped answering ends the job with an error line,
  not a hang.
* Every rank draws the same global batch of ``world_size * batch_size`` windows and keeps rows
  ``rank::world_size`` (``RandomWindowSampler``), so N ranks with batch B train on exactly the windows of one
  process with batch N*B (the loss and gradients agree up to floating-point summation order).
* Only rank 0 logs, evaluates and writes the run folder; what it decides alone (a better val loss means a
  checkpoint; the plateau protocol) is broadcast, and a signal or a non-finite loss seen by any rank is
  agreed on at the next log step, so all ranks stop (and save) at the same step.

Resuming with another number of ranks: the sampler's state is one random generator, the same on every rank,
advanced by ``world_size * batch_size`` window draws per micro-batch. Keep the global batch (W' * B' = W * B)
and the resumed run trains on exactly the windows the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable, NoReturn

import torch
import torch.distributed as dist

from groundthink.data import load_data
from groundthink.devices import resolve_device
from groundthink.errors import UserError
from groundthink.training.parallel import Collectives
from groundthink.training.run_folder import RunFolder
from groundthink.training.trainer import Trainer


# torchrun's protocol: these variables are how the launcher tells each process who it is.
def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """``torchrun --standalone`` (one machine, a free port picked by the rendezvous) for ``groundthink ARGV``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "groundthink", *argv]


def launch(nproc: int, argv: list[str], train_config) -> int:
    """``groundthink train --nproc N``: run ``groundthink ARGV`` on N processes under torchrun; its exit status."""
    if launched_by_torchrun():
        raise UserError("--nproc starts torchrun itself; under torchrun the number of processes is "
                        "--nproc_per_node, so drop --nproc")
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    device = resolve_device(train_config.device, "train.device")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {nproc} needs one GPU per process but {torch.cuda.device_count()} are visible; "
                        f"use --nproc {torch.cuda.device_count()}, or --device cpu for CPU processes")
    command = torchrun_command(nproc, argv)
    print(f"launching {nproc} processes: {shlex.join(command)}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command)
    # Ctrl-C reaches torchrun and its workers straight from the terminal; torchrun stops them. Dying here first
    # would orphan them, so this process waits it out and passes a SIGTERM on to torchrun.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rank_device(name: str, local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` when the run is on GPUs (``train.device`` auto or cuda), else the CPU."""
    if name.startswith("cuda:"):
        raise UserError(f"train.device {name} names one GPU, but under torchrun every process uses "
                        f"cuda:LOCAL_RANK; use --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")
    device = resolve_device(name, "train.device")
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"process {local_rank} of this machine has no GPU of its own ({torch.cuda.device_count()} "
                        f"visible); start at most that many processes per machine, or use --device cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def init_process_group(train_config) -> None:
    """Join the job torchrun started: NCCL on GPUs, gloo on CPU, collectives time out after dist_timeout s."""
    device = rank_device(train_config.device, local_rank_from_env())
    timeout = datetime.timedelta(seconds=train_config.dist_timeout)
    if device.type == "cuda":
        # With device_id the communicator is created now and bound to this GPU. NCCL's watchdog aborts the
        # process when a collective exceeds the timeout (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default).
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def is_peer_failure(err: BaseException) -> bool:
    """An error of a collective: another rank died (connection closed) or stopped answering (timeout)."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out"))


class LostRanks(UserError):
    """A collective failed: another rank died or did not answer within ``train.dist_timeout``."""


@contextlib.contextmanager
def peer_failures_explained(trainer: Trainer):
    """A collective's failure becomes one line that says which rank lost the others, at which step, and
    what is kept."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - only collective failures are turned into one line
        if not is_peer_failure(err):
            raise
        last = trainer.folder.latest()
        then = (f"checkpoint {last.name} is kept: continue with groundthink train --resume {trainer.run_dir} "
                f"(any number of processes)") if last else "no checkpoint had been written yet"
        first_line = " ".join(str(err).split())[:200]
        raise LostRanks(
            f"rank {trainer.rank} lost the other ranks at step {trainer.step} ({type(err).__name__}: {first_line}); "
            f"another rank failed (its error is above) or did not answer within train.dist_timeout = "
            f"{trainer.config.train.dist_timeout:g} s; {then}") from None


def run_rank(train_config, main: Callable[[], int]) -> NoReturn:
    """Run ``main`` as one rank of a torchrun job, then end the process with its exit status.

    Errors are reported as ``groundthink`` reports them (one line for a UserError, a traceback for a bug).
    The process ends with ``os._exit``: PyTorch 2.13's gloo backend can deadlock in its destructor (it joins
    its worker threads while holding the GIL that a thread finishing a last collective needs), and a rank
    hanging at exit would hang the job. Everything the run writes is closed and flushed before.
    """
    code = 1
    try:
        init_process_group(train_config)
        code = main()
        dist.destroy_process_group()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 1 if isinstance(err, LostRanks) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        if err.code is not None and not isinstance(err.code, int):
            print(err.code, file=sys.stderr)
    except BaseException as err:  # noqa: BLE001 - reported here because the process ends here
        if is_peer_failure(err):
            print(f"error: rank {dist.get_rank()} lost the other ranks ({type(err).__name__}: "
                  f"{' '.join(str(err).split())[:200]})", file=sys.stderr)
        else:
            traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def make_trainer(config, run_dir: Path, *, resume: bool, hooks=()) -> Trainer:
    """The trainer of this process: one rank of a torchrun job (after ``run_rank`` set up the process group),
    or the only process."""
    if not dist.is_initialized():
        return Trainer(config, run_dir, resume=resume, hooks=hooks)
    collectives = Collectives.of_process_group()
    run_dir = Path(collectives.broadcast(str(run_dir)))  # a default run folder's name has a timestamp: rank 0's
    device = rank_device(config.train.device, local_rank_from_env())
    # Rank 0 tokenizes (and trains a BPE) into the cache first; then the others read the cache.
    if not collectives.is_main:
        collectives.barrier()
    folder = RunFolder(run_dir)
    if resume:
        folder.resume_checkpoint()  # the single-process error when there is nothing to resume
    data = load_data(config.data, folder.tokenizer() if resume else None)
    if collectives.is_main:
        collectives.barrier()
    return Trainer(config, run_dir, resume=resume, device=device, hooks=hooks, data=data, collectives=collectives)
