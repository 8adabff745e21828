"""The training loop: fit, log, evaluate, decide.

``Trainer(config, run_dir).fit()`` trains ``config.model.key`` on ``config.data`` with the schedule of
``config.train`` and keeps the run folder up to date. It composes the parts (docs/architecture.md):

* ``step.TrainStep``: one optimizer step, eager or captured as a CUDA graph (``train.cuda_graph``);
* ``parallel.ParallelModel`` / ``parallel.Collectives``: DDP or FSDP2 across processes (identity in one);
* ``run_folder.RunFolder``: checks, lock, checkpoints, summary;
* hooks (``hooks.TrainerHook``): balance interventions and anything else that adds a loss term, acts on
  gradients or reports metrics; their state is checkpointed.

The loss stays on the device between log steps: the only host syncs are at ``log_every``, at evaluations
and at checkpoints. Only rank 0 evaluates, logs and writes.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path

import torch

from groundthink.data import RandomWindowSampler, eval_windows, load_data
from groundthink.devices import resolve_device
from groundthink.models.model import GroundThinkLM
from groundthink.ops.kernel_cache import cold_start_estimate_s, kernels_warm, record_kernels_warm
from groundthink.training import checkpoint as ckpt
from groundthink.training import resume
from groundthink.training.config import Config
from groundthink.training.evaluation import evaluate_model, perplexity
from groundthink.training.hooks import TrainingDiverged
from groundthink.training.interventions import intervention_hooks
from groundthink.training.kernel_warmup import kernel_shape, start_kernel_checks
from groundthink.training.logging import Console, MetricsLogger, format_eval
from groundthink.training.optim import build_optimizer
from groundthink.training.parallel import Collectives, ParallelModel
from groundthink.training.phases import PhaseClock
from groundthink.training.precision import amp_dtype, autocast_for
from groundthink.training.run_folder import RunFolder, resolved_config
from groundthink.training.schedule import PlateauProtocol, lr_at
from groundthink.training.signals import REPEAT_SIGNAL_S, StopRequests
from groundthink.training.step import TrainStep, capture_problem, hooked_loss, wants_graph_step


class Trainer:
    def __init__(self, config: Config, run_dir, *, resume: bool = False, hooks=(), data=None,
                 device: str | torch.device | None = None, collectives: Collectives | None = None):
        self.clock = PhaseClock()
        with self.clock.phase("setup"):
            self._build(config, run_dir, resume, list(hooks), data, device, collectives or Collectives())

    def _build(self, config, run_dir, resume, hooks, data, device, collectives) -> None:
        self.collectives = collectives
        self.rank, self.world_size, self.is_main = collectives.rank, collectives.world_size, collectives.is_main
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.path
        tc = config.train
        self.device = resolve_device(tc.device, "train.device") if device is None else torch.device(device)
        self.autocast = autocast_for(self.device, tc.precision)
        start_kernel_checks(config, self.device)  # in the background, while the data loads
        self.resume_from = self.folder.resume_checkpoint() if resume else None
        resumed_state = ckpt.load_state(self.resume_from) if resume else None  # fails early, in one line
        if not resume and self.is_main:
            self.folder.check_new_run()
        self.data = data if data is not None else load_data(config.data, self.folder.tokenizer() if resume else None)
        self.tokenizer = self.data.tokenizer
        self.config = resolved_config(config, self.tokenizer.vocab_size)
        self.model_config = self.config.model_config(self.tokenizer.vocab_size)
        self.hooks = intervention_hooks(self.config.interventions, self.model_config) + hooks

        self.use_graph_step = wants_graph_step(tc, capture_problem(self.world_size, self.hooks), self.device)
        torch.manual_seed(tc.seed)  # the same initial weights on every rank and every rerun
        self.model = GroundThinkLM(self.model_config).to(self.device)
        # GateFreeze turns requires_grad off and on again: DDP must then look for parameters without gradients.
        self.parallel = ParallelModel.build(self.model, tc, collectives, self.device, self.config.model.key,
                                            find_unused_parameters=self.config.interventions.gate_freeze_steps > 0)
        self.optimizer = build_optimizer(self.model, tc, capturable=self.use_graph_step)
        self.loss_fn = hooked_loss(self.hooks, self)
        self.step_fn = TrainStep(
            self.parallel.module, self.optimizer, tc.batch_size, tc.seq_len, accumulation=tc.grad_accum,
            grad_clip=tc.grad_clip, amp_dtype=amp_dtype(self.device, tc.precision),
            cuda_graph=self.use_graph_step and self.device.type == "cuda", compile=tc.compile,
            loss_fn=self.loss_fn, after_backward=lambda: [hook.on_after_backward(self) for hook in self.hooks],
            sync_context=self.parallel.sync_context)
        self.sampler = RandomWindowSampler(self.data.train, tc.batch_size, tc.seq_len, tc.seed, self.rank,
                                           self.world_size)
        self.val_windows = eval_windows(self.data.val, tc.seq_len, tc.eval_windows)
        # The same number of fixed windows from the training split: the train/val gap without the noise of
        # one batch's loss.
        self.train_eval_windows = eval_windows(self.data.train, tc.seq_len, tc.eval_windows)
        self.task = self.data.task(tc.seq_len) if self.is_main else None
        self.plateau = PlateauProtocol(tc.steps, tc.plateau_patience, tc.plateau_factor,
                                       tc.plateau_max_reductions) if tc.plateau else None
        self.stops = StopRequests(REPEAT_SIGNAL_S if self.world_size > 1 else 0.0)

        # Progress and bookkeeping (all checkpointed).
        self.step = 0                       # optimizer steps done
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.best_val_loss = math.inf
        self.best_step: int | None = None
        self.last_eval: dict | None = None
        # Per-interval accumulators on the device (read at log time only).
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._grad_norm = torch.zeros((), device=self.device)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.last_lr = 0.0                  # the learning rate of the last step (logged)
        self.stop_reason: str | None = None
        self.signal_received: int | None = None
        self.logger = self.console = None
        self._capture_counted = False
        self.kernels_cold = False           # the first steps compile GPU kernels (told on screen, then recorded)
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from, resumed_state)
        self.parallel.drop_full_copy_off_main()

    @property
    def stop_requested(self) -> bool:
        return self.stops.requested

    @property
    def tokens_per_step(self) -> int:
        return self.config.train.tokens_per_step(self.world_size)

    # ----------------------------------------------------------------------------------------------
    def lr(self) -> float:
        """Learning rate of this step: the schedule times the plateau factor."""
        tc = self.config.train
        return lr_at(self.step, tc.lr, tc.min_lr, tc.steps, tc.warmup_ratio) * (self.plateau.scale if self.plateau else 1.0)

    def train_step(self) -> None:
        tc = self.config.train
        for hook in self.hooks:
            hook.on_step_start(self)
        batches = [self.sampler.next_batch() for _ in range(tc.grad_accum)]
        inputs = torch.stack([inputs for inputs, _ in batches])
        targets = torch.stack([targets for _, targets in batches])
        self.last_lr = self.lr()
        out = self.step_fn(inputs, targets, lr=self.last_lr)
        self._loss_sum += out.loss  # the mean over the micro-batches (a captured step's output is overwritten)
        self._loss_count += 1
        self._grad_norm = out.grad_norm.clone()
        self._nonfinite |= ~torch.isfinite(out.grad_norm) | ~torch.isfinite(out.loss)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        for hook in self.hooks:
            hook.on_step_end(self)

    def timed_step(self) -> None:
        """``train_step`` under the phase clock: the first call's kernel compilation and the graph capture
        are charged to their own phases."""
        calls = self.step_fn.calls
        with self.clock.phase("steps"):
            self.train_step()
        if calls == 0 and self.step_fn.first_call_s is not None:
            self.clock.move(self.step_fn.first_call_s, "steps", "compile")
        if self.step_fn.capture_s is not None and not self._capture_counted:
            self._capture_counted = True
            self.clock.move(self.step_fn.capture_s, "steps", "capture")

    # ----------------------------------------------------------------------------------------------
    def fit(self, until_step: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop after ``until_step``, with a checkpoint). Returns the summary."""
        tc = self.config.train
        stop_at = min(tc.steps, until_step) if until_step is not None else tc.steps
        if self.is_main:
            self.folder.lock()
        status = "aborted"  # anything that escapes the loop below (a second Ctrl-C, an error)
        try:
            with self.folder.disk_errors_explained(), self.stops.installed():
                if self.is_main:
                    with self.clock.phase("setup"):  # the run folder, the logger (TensorBoard's import), the bar
                        self.folder.prepare(self.config, self.tokenizer, self.step if self.resume_from else None)
                        self.logger = MetricsLogger(self.run_dir, tensorboard=tc.tensorboard)
                        self.console = Console(tc.steps, self.step, enabled=tc.progress)
                    self.console.print(f"training {self.config.model.key} ({self.model.num_params:,} params) on "
                                       f"{self.data.name} ({len(self.data.train):,} train tokens) -> {self.run_dir}"
                                       + (f", resumed at step {self.step}" if self.resume_from else ""))
                    self.kernels_cold = not kernels_warm(kernel_shape(self.config, self.use_graph_step), self.device)
                    if self.kernels_cold:
                        self.console.print(f"compiling GPU kernels for this shape, first run on this machine: "
                                           f"~{cold_start_estimate_s(self.device)} s")
                for hook in self.hooks:
                    hook.on_fit_start(self)
                self.loop(stop_at)
            status = self.stop_reason or ("completed" if self.step >= tc.steps else "paused")
        except TrainingDiverged:
            status = "diverged"
            raise
        finally:
            summary = self.finish(status)
        return summary

    def loop(self, stop_at: int) -> None:
        tc = self.config.train
        self._interval_start, self._interval_tokens = time.perf_counter(), 0
        saved_step = self.step if self.resume_from else None
        while self.step < stop_at and self.stop_reason is None:
            self.timed_step()
            self._interval_tokens += self.tokens_per_step
            if self.world_size == 1 and self.stops.requested:  # several ranks agree at the log step
                self.stop_reason, self.signal_received = "interrupted", self.stops.signal
            if self.console:
                self.console.advance()
            last = self.step in (tc.steps, stop_at)
            if self.step % tc.log_every == 0 or last:
                with self.clock.phase("steps"):  # the log's one host sync waits for the queued steps
                    self.log_train()
            evaluated = self.step % tc.eval_every == 0 or self.step == tc.steps
            improved = self.run_eval() if evaluated else False
            periodic = tc.save_every > 0 and self.step % tc.save_every == 0
            if last or periodic or (evaluated and (tc.save_every == 0 or improved)):
                self.save()
                saved_step = self.step
        if self.stop_reason and saved_step != self.step:
            self.save()  # interrupted (or stopped by the plateau protocol) between checkpoints

    def log_train(self) -> None:
        # What one rank may know alone (a signal, a non-finite loss) is agreed here, at a step every rank
        # logs, so all stop (and save) at the same step. The largest signal number wins (SIGTERM).
        flags = self.collectives.max(torch.stack([torch.tensor(float(self.stops.signal or 0), device=self.device),
                                                  self._nonfinite.float()]))
        loss = self.collectives.mean(self._loss_sum / max(self._loss_count, 1))
        signum, nonfinite, loss_value, grad_norm = torch.cat(
            [flags, torch.stack([loss.float(), self._grad_norm.float()])]).tolist()  # the one sync
        now = time.perf_counter()  # after the sync: the interval's queued GPU work is done and counted
        if nonfinite:
            self._nonfinite.fill_(True)  # another rank's NaN: this rank stops with it
        if signum and self.stop_reason is None:
            self.stop_reason, self.signal_received = "interrupted", int(signum)
        self._loss_sum.zero_()
        self._loss_count = 0
        if nonfinite or not math.isfinite(loss_value):
            self.diverged()
        elapsed = now - self._interval_start
        self.train_seconds += elapsed
        record = {"kind": "train", "step": self.step, "loss": loss_value, "lr": self.last_lr,
                  "grad_norm": grad_norm, "tok_per_s": self._interval_tokens / max(elapsed, 1e-9),
                  "tokens": self.tokens_seen, "elapsed_s": self.train_seconds}
        self._interval_start, self._interval_tokens = time.perf_counter(), 0
        if self.is_main:
            self.logger.log(record)
            self.console.train(record)

    def run_eval(self) -> bool:
        """Evaluate on rank 0, log, update best and the plateau protocol. True when the val loss improved."""
        started = time.perf_counter()
        with self.clock.phase("eval"):
            ratio = self.parallel.grad_ratio()  # every rank: from FSDP's shards it is a collective
            improved = False
            with self.parallel.full_model() as model:
                if self.is_main:
                    self.check_finite()
                    record = {"kind": "eval", "step": self.step, **self.evaluate(model, ratio)}
                    for hook in self.hooks:
                        hook.on_eval(self, record)
                    improved = self.decide(record)
                    record["eval_s"] = time.perf_counter() - started  # the first one includes its kernels' compilation
                    self.logger.log(record)
                    self.console.print(format_eval(record))
            # Rank 0's decisions: save a best checkpoint, the plateau protocol's LR factor, stopping.
            improved, self.stop_reason, self.best_val_loss, self.best_step, plateau = self.collectives.broadcast(
                [improved, self.stop_reason, self.best_val_loss, self.best_step,
                 self.plateau.state_dict() if self.plateau else None])
            if plateau is not None and not self.is_main:
                self.plateau.load_state_dict(plateau)
        if self.kernels_cold:  # training and evaluation kernels are built now: later runs start warm
            self.kernels_cold = False
            report = self.clock.report()
            record_kernels_warm(kernel_shape(self.config, self.use_graph_step), self.device, report["compile"] + report["capture"] + report["eval"])
        self._interval_start = time.perf_counter()
        return improved

    def decide(self, record: dict) -> bool:
        """Best val loss and the plateau protocol (rank 0). True when the val loss improved."""
        self.last_eval = record
        improved = record["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = record["val_loss"], self.step
        if self.plateau is not None:
            action = self.plateau.update(self.step, record["val_loss"])
            record["lr_scale"] = self.plateau.scale
            if action == "reduce":
                self.console.print(f"plateau: no val improvement for {self.plateau.patience_steps} steps, "
                                   f"learning rate x{self.plateau.factor} (now x{self.plateau.scale:.3g})")
            elif action == "stop":
                self.console.print("plateau: two reductions brought no improvement, stopping")
                self.stop_reason = "plateau"
        return improved

    def evaluate(self, model: torch.nn.Module | None = None, grad_ratio: float | None = None) -> dict:
        """The evaluation record's metrics; ``grad_ratio``: of the last step's gradients, measured beforehand
        on every rank (``ParallelModel.grad_ratio``)."""
        if model is None:
            model, grad_ratio = self.model, self.parallel.grad_ratio() if grad_ratio is None else grad_ratio
        tc = self.config.train
        return evaluate_model(model, self.val_windows, self.train_eval_windows, tc.batch_size, self.device,
                              self.autocast, task=self.task, grad_ratio=grad_ratio)

    # ----------------------------------------------------------------------------------------------
    def check_finite(self) -> None:
        if bool(self._nonfinite):
            self.diverged()

    def diverged(self) -> None:
        last = self.folder.latest()
        then = (f"the last good checkpoint {last.name} is kept; resume it with a lower learning rate: "
                f"groundthink train --resume {self.run_dir} --set train.lr=...") if last else \
            (f"no checkpoint had been written yet; start again with a lower learning rate: groundthink train "
             f"--out {self.run_dir} --set train.lr=... (and the same other settings)")
        raise TrainingDiverged(f"training diverged: the loss or gradient became NaN/inf before step {self.step}; "
                               f"stopped, {then}")

    def state_dict(self) -> dict:
        """Everything besides the weights that an exact resume needs (``resume.py``)."""
        return resume.training_state(self)

    def load_checkpoint(self, checkpoint: Path, state: dict | None = None) -> None:
        resume.restore(self, checkpoint, ckpt.load_state(checkpoint) if state is None else state)

    def save(self) -> Path | None:
        """A checkpoint of the current step (written by rank 0; every rank takes part under FSDP)."""
        path = None
        with self.clock.phase("checkpoint"):
            state = self.state_dict()  # under FSDP the optimizer state is gathered: every rank
            with self.parallel.full_model() as model:
                if self.is_main:
                    self.check_finite()  # never save weights that have seen a NaN
                    evaluated = self.last_eval and self.last_eval["step"] == self.step
                    path = self.folder.save(self.step, model, state,
                                            {"model": self.config.model.key,
                                             "val_loss": self.last_eval["val_loss"] if evaluated else None},
                                            best=self.best_step == self.step, keep_last=self.config.train.keep_last)
            self.collectives.barrier()
        self._interval_start = time.perf_counter()
        return path

    def finish(self, status: str) -> dict:
        """Write ``summary.json`` and the summary line (rank 0); close the logger, the progress bar, the lock."""
        tc = self.config.train
        summary = {"kind": "summary", "step": self.step, "status": status, "model": self.config.model.key,
                   "data": self.data.name, "params": self.model.num_params, "max_steps": tc.steps,
                   "best_val_loss": self.best_val_loss if self.best_step is not None else None,
                   "best_val_ppl": perplexity(self.best_val_loss) if self.best_step is not None else None,
                   "best_step": self.best_step, "tokens_seen": self.tokens_seen,
                   "train_seconds": self.train_seconds,
                   "tok_per_s": self.tokens_seen / self.train_seconds if self.train_seconds > 0 else None,
                   "device": str(self.device), "world_size": self.world_size,
                   "step_mode": ("cuda_graph" if self.step_fn.use_graph else "eager") + ("+compile" if tc.compile else ""),
                   "phases": self.clock.report()}
        if self.last_eval:
            summary["final"] = {k: v for k, v in self.last_eval.items() if k != "kind"}
        if self.signal_received is not None:
            summary["signal"] = signal.Signals(self.signal_received).name
        if self.is_main and self.logger is not None:
            with contextlib.suppress(OSError):  # a full disk was reported already; keep what is there
                self.logger.log(summary)
                self.folder.write_summary(summary)
            self.logger.close()
            self.console.close()
            self.console.print(self.clock.line())
            if status == "interrupted":
                self.console.print(f"interrupted: checkpoint saved at step {self.step}; continue with "
                                   f"groundthink train --resume {self.run_dir}")
        if self.is_main:
            self.folder.unlock()
        return summary
