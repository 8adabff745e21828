"""Data-parallel training on several processes, started by PyTorch's own launcher::

    torchrun --standalone --nproc_per_node N -m groundthink train ...     # or: groundthink train --nproc N ...

Each process ("rank") runs a ``DistributedTrainer``: the single-process ``Trainer`` with these changes.

* Process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL with one
  GPU per rank (``cuda:LOCAL_RANK``), gloo on CPU. Every collective gives up after ``train.dist_timeout``
  seconds, so a rank that died or stopped answering ends the job with an error line, not a hang.
* ``train.parallel: ddp`` (default): ``DistributedDataParallel``; gradients are all-reduced (averaged) during
  the backward of the last micro-batch of a step only (``no_sync`` on the inner ones).
  ``train.parallel: fsdp``: FSDP2 (``fully_shard`` on every block, then the root): weights, gradients and AdamW
  moments are sharded over the ranks; inner micro-batches skip the reduce-scatter. Rank 0 also keeps an
  unsharded copy of the weights, refreshed (all-gathered) before each evaluation and checkpoint.
* Sampling: every rank draws the same global batch of ``world_size * batch_size`` windows and keeps rows
  ``rank::world_size`` (``RandomWindowSampler``), so N ranks with batch B train on exactly the windows of one
  process with batch N*B, and the loss and gradients are the same up to floating-point summation order.
* Only rank 0 logs, evaluates and writes the run folder. What rank 0 decides alone (a better val loss means a
  checkpoint; the plateau protocol's LR factor and stop) is broadcast; a signal or a non-finite loss seen by
  any rank is agreed on at the next log step, so all ranks stop at the same step and save together.
* Checkpoints have the single-process format (full weights, full optimizer state), so a run resumes with any
  number of ranks, in either mode, or in one process.

Resuming with another number of ranks. The sampler's state is one random generator, the same on every rank,
advanced by ``world_size * batch_size`` window draws per micro-batch. A run resumed with W' ranks and batch B'
continues that stream, drawing W' * B' windows per micro-batch. Keep the global batch (W' * B' = W * B, e.g.
``--nproc 1 --batch-size 2B`` for a run that used 2 ranks x B) and the resumed run trains on exactly the windows
the uninterrupted run would have; change it and the stream simply continues with the new global batch
(the learning-rate schedule counts optimizer steps, so it is unaffected either way).

Testing failure handling: ``GROUNDTHINK_FAULT=crash:RANK:STEP`` makes that rank raise at the start of that
(0-based) step; ``hang:RANK:STEP`` makes it stop taking part (sleep) until it is signalled.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

import torch
import torch.distributed as dist

from groundthink.data import load_data, load_tokenizer
from groundthink.devices import resolve_device
from groundthink.errors import UserError
from groundthink.training import checkpoint as ckpt
from groundthink.training.hooks import TrainerHook
from groundthink.training.trainer import Trainer

FAULT_ENV = "GROUNDTHINK_FAULT"
# Under torchrun a terminal's Ctrl-C reaches each rank twice (from the terminal and forwarded by torchrun):
# signals closer together than this count as one request to stop.
REPEAT_SIGNAL_S = 1.0


# --------------------------------------------------------------------------------------------------
# Launching and the process group.

def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


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


@dataclass
class RankInfo:
    rank: int
    world_size: int
    device: torch.device


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
    device = rank_device(train_config.device, int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=train_config.dist_timeout)
    if device.type == "cuda":
        # With device_id the communicator is created now and bound to this GPU. NCCL's watchdog aborts the
        # process when a collective exceeds the timeout (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default).
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def broadcast_object(value, src: int = 0):
    """``value`` as rank ``src`` has it, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def is_peer_failure(err: BaseException) -> bool:
    """An error of a collective: another rank died (connection closed) or stopped answering (timeout)."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out"))


class LostRanks(UserError):
    """A collective failed: another rank died or did not answer within ``train.dist_timeout``."""


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


def make_trainer(config, run_dir: Path, *, resume: bool) -> Trainer:
    """A ``DistributedTrainer`` in a torchrun job (after ``run_rank`` set up the process group), else a ``Trainer``."""
    if not dist.is_initialized():
        return Trainer(config, run_dir, resume=resume)
    rank = dist.get_rank()
    run_dir = Path(broadcast_object(str(run_dir)))  # a default run folder's name has a timestamp: rank 0's
    device = rank_device(config.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    return DistributedTrainer(config, run_dir, info=RankInfo(rank, dist.get_world_size(), device), resume=resume)


def load_data_rank0_first(config, run_dir: Path, resume: bool, rank: int):
    """Rank 0 tokenizes (and trains a BPE) into the cache first; then the others read the cache."""
    if rank != 0:
        dist.barrier()
    if resume:
        ckpt.resume_checkpoint(run_dir)  # the single-process error when there is nothing to resume
    tokenizer = load_tokenizer(Path(run_dir) / "tokenizer.json") if resume else None
    data = load_data(config.data, tokenizer)
    if rank == 0:
        dist.barrier()
    return data


# --------------------------------------------------------------------------------------------------
# The trainer of one rank.

class DistributedTrainer(Trainer):
    def __init__(self, config, run_dir, *, info: RankInfo, resume: bool = False, hooks=()):
        self.parallel = config.train.parallel
        self.full_model = None            # FSDP: the unsharded copy that rank 0 evaluates and saves
        self.pending_signal: int | None = None
        self.pending_signal_time = 0.0
        self.sharded_grad_ratio_value: float | None = None
        self.full_optimizer_state: dict | None = None
        data = load_data_rank0_first(config, Path(run_dir), resume, info.rank)
        super().__init__(config, run_dir, resume=resume, rank=info.rank, world_size=info.world_size,
                         device=info.device, hooks=[*hooks, *fault_hooks()], data=data)
        if not self.is_main:
            self.full_model = None  # only needed on every rank while a checkpoint was loaded

    def fit(self, until_step: int | None = None) -> dict:
        try:
            return super().fit(until_step)
        except Exception as err:  # noqa: BLE001 - only collective failures are turned into one line
            if not is_peer_failure(err):
                raise
            last = ckpt.read_pointer(self.run_dir, "latest")
            then = (f"checkpoint {last.name} is kept: continue with groundthink train --resume {self.run_dir} "
                    f"(any number of processes)") if last else "no checkpoint had been written yet"
            first_line = " ".join(str(err).split())[:200]
            raise LostRanks(
                f"rank {self.rank} lost the other ranks at step {self.step} ({type(err).__name__}: {first_line}); "
                f"another rank failed (its error is above) or did not answer within train.dist_timeout = "
                f"{self.config.train.dist_timeout:g} s; {then}") from None

    # ---- wrapping the model ----------------------------------------------------------------------

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.parallel == "fsdp":
            return self.shard(model)
        from torch.nn.parallel import DistributedDataParallel

        # GateFreeze turns requires_grad off and on again: DDP must then look for parameters without gradients.
        find_unused = self.config.interventions.gate_freeze_steps > 0
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       gradient_as_bucket_view=True,
                                       find_unused_parameters=find_unused)

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2, in place: each block is one all-gather / reduce-scatter unit; the root holds the rest
        (embedding tied with the head, final norm)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        scalars = [name for name, param in model.named_parameters() if param.ndim == 0]
        if scalars:
            raise UserError(f"train.parallel=fsdp cannot shard the scalar parameters of {self.config.model.key} "
                            f"({', '.join(scalars[:2])}, ...: FSDP2 shards along a dimension); train this model "
                            f"with train.parallel=ddp")
        # FSDP2 warns about any module output that is a view: an in-place op on it would skip a gather. The
        # blocks' outputs are only read out of place (tests/test_distributed.py: FSDP matches one process).
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        self.full_model = copy.deepcopy(model)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def no_sync(self, skip_sync: bool):
        if self.parallel == "fsdp":
            self.model.set_requires_gradient_sync(not skip_sync)
            return contextlib.nullcontext()
        return super().no_sync(skip_sync)

    # ---- FSDP: full weights and optimizer state for rank 0, shards from a full checkpoint ---------

    @contextlib.contextmanager
    def unsharded_on_main(self):
        """FSDP: gather the weights into rank 0's full copy and let ``self.model`` name it meanwhile (every
        rank must enter: the gather is a collective). DDP: nothing to do, every rank holds the full model."""
        if self.parallel != "fsdp":
            yield
            return
        full = dict(self.full_model.named_parameters()) if self.is_main else {}
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                value = param.full_tensor()
                if self.is_main:
                    full[name].copy_(value)
        sharded = self.model
        if self.is_main:
            self.model = self.full_model
        try:
            yield
        finally:
            self.model = sharded

    def gather_optimizer_state(self) -> dict | None:
        """The AdamW state with full tensors, in ``optimizer.state_dict()`` form (rank 0; None elsewhere)."""
        from torch.distributed.tensor import DTensor

        state = self.optimizer.state_dict()
        full = {}
        for index, values in state["state"].items():  # the same order on every rank
            full[index] = {key: value.full_tensor().cpu() if isinstance(value, DTensor) else value
                           for key, value in values.items()}
        return {"state": full, "param_groups": state["param_groups"]} if self.is_main else None

    def load_checkpoint(self, checkpoint: Path) -> None:
        if self.parallel != "fsdp":
            return super().load_checkpoint(checkpoint)
        from torch.distributed.tensor import distribute_tensor

        sharded, self.model = self.model, self.full_model  # the weights load into the full copy ...
        try:
            super().load_checkpoint(checkpoint)
        finally:
            self.model = sharded
        # ... and each rank keeps its shard of them and of the optimizer state (sliced locally: no traffic).
        with torch.no_grad():
            for param, full in zip(self.model.parameters(), self.full_model.parameters()):
                param.copy_(distribute_tensor(full.detach(), param.device_mesh, param.placements, src_data_rank=None))
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                state = self.optimizer.state.get(param, {})
                for key, value in state.items():
                    if key != "step" and torch.is_tensor(value):
                        state[key] = distribute_tensor(value.to(self.device), param.device_mesh, param.placements,
                                                       src_data_rank=None)

    def sharded_grad_ratio(self) -> float | None:
        """``grad_ratio`` (SPEC §4) from FSDP's gradient shards: sums of squares per branch, summed over ranks."""
        squares = torch.zeros(2, device=self.device)
        for i, branch in enumerate(("rwkv6", "mamba2")):
            grads = [p.grad.to_local() for p in self.model.branch_parameters(branch) if p.grad is not None]
            if not grads:
                return None  # the same on every rank: a baseline without this branch, or no step yet
            squares[i] = sum(g.float().pow(2).sum() for g in grads)
        dist.all_reduce(squares)
        rwkv, mamba = squares.sqrt().tolist()
        return rwkv / max(mamba, 1e-12)

    # ---- rank 0 alone evaluates and saves; all ranks take the same decisions ----------------------

    def run_eval(self) -> bool:
        if self.parallel == "fsdp":
            self.sharded_grad_ratio_value = self.sharded_grad_ratio()
        with self.unsharded_on_main():
            improved = super().run_eval()
        # Rank 0's decisions: save a best checkpoint, the plateau protocol's LR factor, stopping.
        outcome = broadcast_object([improved, self.stop_reason, self.best_val_loss, self.best_step,
                                    self.plateau.state_dict() if self.plateau else None])
        improved, self.stop_reason, self.best_val_loss, self.best_step, plateau = outcome
        if plateau is not None:
            self.plateau.load_state_dict(plateau)
        return improved

    def evaluate(self) -> dict:
        metrics = super().evaluate()
        if self.sharded_grad_ratio_value is not None:  # FSDP: rank 0's full copy holds no gradients
            metrics["grad_ratio"] = self.sharded_grad_ratio_value
        return metrics

    def save(self) -> Path | None:
        if self.parallel != "fsdp":
            return super().save()
        self.full_optimizer_state = self.gather_optimizer_state()
        try:
            with self.unsharded_on_main():
                return super().save()
        finally:
            self.full_optimizer_state = None

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.full_optimizer_state is not None:
            state["optimizer"] = self.full_optimizer_state
        return state

    def log_train(self) -> None:
        # What one rank may know alone: a signal it received, a non-finite loss. Agreed here, at a step every
        # rank logs, so all stop (and save) at the same step. The largest signal number wins (SIGTERM).
        flags = torch.stack([torch.tensor(float(self.pending_signal or 0), device=self.device),
                             self._nonfinite.float()])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._nonfinite = flags[1] > 0
        signum = int(flags[0].item())
        if signum and self.stop_reason is None:
            self.stop_reason, self.signal_received = "interrupted", signum
        super().log_train()

    @contextlib.contextmanager
    def signal_guard(self):
        """SIGINT / SIGTERM are noted, then agreed on at the next log step (``log_train``); a second signal
        (more than REPEAT_SIGNAL_S after the first) aborts, as in a single process."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            now = time.monotonic()
            if self.pending_signal is None:
                self.pending_signal, self.pending_signal_time = signum, now
            elif now - self.pending_signal_time > REPEAT_SIGNAL_S:
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# --------------------------------------------------------------------------------------------------
# Rehearsing failures.

class InjectedFault(TrainerHook):
    """One rank fails at the start of one step: ``crash`` raises, ``hang`` stops taking part (sleeps) until
    a signal arrives (torchrun sends one when it ends the job), like a rank stuck in a kernel or a deadlock."""

    def __init__(self, kind: str, rank: int, step: int):
        self.kind, self.rank, self.step = kind, rank, step

    def on_step_start(self, trainer) -> None:
        if trainer.rank != self.rank or trainer.step != self.step:
            return
        if self.kind == "crash":
            raise RuntimeError(f"injected fault: rank {self.rank} crashed at step {self.step} ({FAULT_ENV})")
        print(f"injected fault: rank {self.rank} hangs at step {self.step} ({FAULT_ENV})", file=sys.stderr, flush=True)
        while trainer.pending_signal is None:
            time.sleep(0.05)
        raise SystemExit(f"injected fault: rank {self.rank} was hanging at step {self.step} until signalled")


def fault_hooks() -> list[TrainerHook]:
    """``GROUNDTHINK_FAULT=crash:RANK:STEP`` or ``hang:RANK:STEP``; nothing when unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return []
    kind, _, rest = spec.partition(":")
    rank, _, step = rest.partition(":")
    if kind not in ("crash", "hang") or not rank.isdigit() or not step.isdigit():
        raise UserError(f"{FAULT_ENV}={spec!r} must look like crash:RANK:STEP or hang:RANK:STEP (e.g. crash:1:3)")
    return [InjectedFault(kind, int(rank), int(step))]
