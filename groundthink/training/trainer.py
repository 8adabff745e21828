"""The training loop.

``Trainer(config, run_dir).fit()`` trains ``config.model.key`` on ``config.data`` with the schedule of
``config.train`` and keeps the run folder (see ``checkpoint.py``) up to date. One optimizer step is
``train_step()``: ``grad_accum`` micro-batches through ``compute_loss`` and backward, hooks, clipping, the
learning rate of the step, ``optimizer.step()``.

Extension points, so additions need no rewrite of the loop:

* ``hooks``: objects with any of the ``TrainerHook`` methods — balance interventions (extra loss terms,
  gate freezing, branch dropout, gradient scaling) live there, and their state is checkpointed.
* Distributed data parallel: ``rank`` / ``world_size`` (each rank draws its own batches; only rank 0
  evaluates, logs and writes), ``wrap_model`` (return a DDP module), ``no_sync`` (skips the all-reduce on
  inner accumulation steps whenever the wrapped model has ``no_sync``), ``reduce_mean`` and ``barrier``.

The loss stays on the device between log steps: the only host syncs are at ``log_every``, at evals and at
checkpoints.

``train.cuda_graph`` (``on`` / ``auto``) runs the step through ``cuda_graph.TrainStep`` instead: the same
micro-batches, hooks, clipping and AdamW step, captured once as one CUDA graph and replayed (on CPU it
runs eagerly and matches the eager step). Hooks then run inside the graph: only those marked
``graph_safe`` may (see ``TrainerHook``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import signal
import threading
import time
import warnings
from pathlib import Path

import torch

from groundthink.data import NAMED_SOURCES, RandomWindowSampler, eval_windows, load_data, load_tokenizer
from groundthink.data.files import atomic_write_text
from groundthink.devices import resolve_device
from groundthink.diagnostics.metrics import grad_ratio, record_balance
from groundthink.errors import UserError
from groundthink.models.model import GroundThinkLM
from groundthink.training import checkpoint as ckpt
from groundthink.training.config import Config
from groundthink.training.evaluation import autocast_for, evaluate_loss, perplexity
from groundthink.training.hooks import TrainingDiverged
from groundthink.training.interventions import intervention_hooks
from groundthink.training.logging import Console, MetricsLogger, clean, format_eval, truncate_metrics
from groundthink.training.optim import build_optimizer, parameter_groups
from groundthink.training.schedule import PlateauProtocol, lr_at


def absolute_source(source: str | None) -> str | None:
    """A data source that names an existing local path, made absolute; named sources unchanged."""
    if source is None or source in NAMED_SOURCES or not Path(source).expanduser().exists():
        return source
    return str(Path(source).expanduser().resolve())


class Trainer:
    def __init__(self, config: Config, run_dir, *, resume: bool = False, rank: int = 0, world_size: int = 1,
                 device: str | torch.device | None = None, hooks=(), data=None):
        self.run_dir = Path(run_dir)
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.hooks = list(hooks)
        tc = config.train
        self.device = resolve_device(tc.device, "train.device") if device is None else torch.device(device)
        self.autocast = autocast_for(self.device, tc.precision)

        self.resume_from = ckpt.resume_checkpoint(self.run_dir) if resume else None
        if resume:
            ckpt.load_state(self.resume_from)  # fail early (one line) on an unreadable state
        tokenizer = load_tokenizer(self.run_dir / "tokenizer.json") if resume else None
        self.data = data if data is not None else load_data(config.data, tokenizer)
        self.tokenizer = self.data.tokenizer

        # The resolved config: every model field filled in (vocabulary from the tokenizer).
        self.model_config = config.model_config(self.tokenizer.vocab_size)
        self.config = copy.deepcopy(config)
        self.config.model.settings = self.model_config.to_dict()
        # Local data paths as absolute paths, so the run folder resumes and evaluates from any directory.
        self.config.data.source = absolute_source(config.data.source)
        self.config.data.val_source = absolute_source(config.data.val_source)
        self.hooks = intervention_hooks(self.config.interventions, self.model_config) + self.hooks

        torch.manual_seed(tc.seed)  # the same initial weights on every rank and every rerun
        self.model = GroundThinkLM(self.model_config).to(self.device)
        self.train_model = self.wrap_model(self.model)
        self.use_graph_step = self.wants_graph_step(tc.cuda_graph)
        if tc.compile and not self.use_graph_step:
            why = self.graph_step_problem() or f"train.cuda_graph={tc.cuda_graph} on {self.device}"
            raise UserError(f"train.compile=true compiles the captured step, which this run does not use ({why}); "
                            f"use train.cuda_graph=auto on one CUDA device (on: also on CPU), or train.compile=false")
        self.optimizer = self.build_graph_optimizer() if self.use_graph_step else build_optimizer(self.model, tc)
        self.graph_step = None              # the TrainStep (built at the first step) when use_graph_step
        self.sampler = RandomWindowSampler(self.data.train, tc.batch_size, tc.seq_len, tc.seed, rank, world_size)
        self.val_windows = eval_windows(self.data.val, tc.seq_len, tc.eval_windows)
        # The same number of fixed windows from the training split: the train/val gap without the noise of
        # one batch's loss (the seeds' tables quote a "train loss" next to val loss).
        self.train_eval_windows = eval_windows(self.data.train, tc.seq_len, tc.eval_windows)
        self.task = self.data.task(tc.seq_len) if self.is_main else None
        self.plateau = PlateauProtocol(tc.steps, tc.plateau_patience, tc.plateau_factor,
                                       tc.plateau_max_reductions) if tc.plateau else None

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
        self.logger = None
        self.console = None
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)

    # ----------------------------------------------------------------------------------------------
    # Distributed extension points (single process: identity).

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module used for training forward passes (a DDP wrapper returns ``DDP(model)``)."""
        return model

    def no_sync(self, skip_sync: bool):
        """Context for a micro-batch: skips the gradient all-reduce on all but the last micro-batch."""
        if skip_sync and hasattr(self.train_model, "no_sync"):
            return self.train_model.no_sync()
        return contextlib.nullcontext()

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average a metric over ranks (for logging)."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.AVG)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    # ----------------------------------------------------------------------------------------------
    # The captured step (train.cuda_graph).

    def graph_step_problem(self) -> str | None:
        """Why this run's step cannot be captured as a CUDA graph (None when it can)."""
        if self.world_size > 1 or self.train_model is not self.model:
            return (f"cannot capture a distributed (DDP/FSDP) step (world size {self.world_size}): its "
                    f"all-reduce runs outside the graph")
        for hook in self.hooks:
            if not getattr(hook, "graph_safe", False):
                why = getattr(hook, "graph_unsafe_because", None) or "it is not marked graph_safe"
                return f"cannot capture the hook {type(hook).__name__} ({why})"
        return None

    def wants_graph_step(self, mode: str) -> bool:
        """Whether steps run through ``TrainStep``. ``on`` where it cannot work is a one-line error."""
        if mode == "off":
            return False
        problem = self.graph_step_problem()
        if problem is not None:
            if mode == "auto":
                return False
            raise UserError(f"train.cuda_graph=on {problem}; use train.cuda_graph=auto (it falls back to the "
                            f"eager step) or train.cuda_graph=off")
        if self.device.type != "cuda":
            if mode == "auto":
                return False
            warnings.warn(f"train.cuda_graph=on on {self.device}: there is no CUDA graph here, the same step "
                          f"runs eagerly (for tests; use a CUDA device for the speedup)", stacklevel=3)
        return True

    def build_graph_optimizer(self) -> torch.optim.Optimizer:
        """The AdamW of ``build_optimizer`` in the form a graph can capture (fused, capturable, tensor lrs)."""
        from groundthink.training.cuda_graph import make_adamw
        tc = self.config.train
        groups = parameter_groups(self.model, tc.lr, tc.weight_decay, tc.mamba_lr_mult)
        return make_adamw(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
                          device=self.device)

    def build_graph_step(self):
        from groundthink.training.cuda_graph import TrainStep
        tc = self.config.train
        bf16 = tc.precision == "bf16" or (tc.precision == "auto" and self.device.type == "cuda")
        return TrainStep(  # autocast is TrainStep's (without the weight-cast cache, as capture needs)
            self.model, self.optimizer, tc.batch_size, tc.seq_len, accumulation=tc.grad_accum,
            grad_clip=tc.grad_clip or None, amp_dtype=torch.bfloat16 if bf16 else None,
            cuda_graph=self.device.type == "cuda", compile=tc.compile,
            loss_fn=lambda model, inputs, targets: self.compute_loss(inputs, targets, autocast=False),
            after_backward=lambda: [hook.on_after_backward(self) for hook in self.hooks])

    def graph_train_step(self) -> None:
        """``train_step`` through ``TrainStep``: the same batches, learning rate, hooks and bookkeeping."""
        tc = self.config.train
        for hook in self.hooks:
            hook.on_step_start(self)
        if self.graph_step is None:
            self.graph_step = self.build_graph_step()
        batches = [self.sampler.next_batch() for _ in range(tc.grad_accum)]
        inputs = torch.stack([inputs for inputs, _ in batches]).to(self.device, non_blocking=True)
        targets = torch.stack([targets for _, targets in batches]).to(self.device, non_blocking=True)
        scale = self.lr_scale()
        for group in self.optimizer.param_groups:
            lr = tc.lr * group["lr_mult"] * scale
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # in place: the captured optimizer step reads this memory
            else:
                group["lr"] = lr
        self.last_lr = tc.lr * scale
        out = self.graph_step(inputs, targets)  # static outputs: overwritten by the next call
        self._loss_sum += out.loss  # the mean over the micro-batches, so it counts once
        self._loss_count += 1
        self._grad_norm = out.grad_norm.clone()
        self._nonfinite |= ~torch.isfinite(out.grad_norm) | ~torch.isfinite(out.loss)
        self.step += 1
        self.tokens_seen += tc.batch_size * tc.seq_len * tc.grad_accum * self.world_size
        for hook in self.hooks:
            hook.on_step_end(self)

    # ----------------------------------------------------------------------------------------------
    # One optimizer step.

    def compute_loss(self, inputs: torch.Tensor, targets: torch.Tensor,
                     autocast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss to backpropagate, language-model loss)`` of one micro-batch (``autocast``: the run's
        precision; ``TrainStep`` applies its own)."""
        with contextlib.ExitStack() as stack:
            for hook in self.hooks:
                context = hook.forward_context(self)
                if context is not None:
                    stack.enter_context(context)
            with self.autocast() if autocast else contextlib.nullcontext():
                output = self.train_model(inputs, targets=targets)
            loss = lm_loss = output.loss
            for hook in self.hooks:
                extra = hook.extra_loss(self, output)
                if extra is not None:
                    loss = loss + extra
        return loss, lm_loss

    def lr_scale(self) -> float:
        """Learning rate of this step relative to ``train.lr`` (schedule x plateau factor)."""
        tc = self.config.train
        scale = lr_at(self.step, tc.lr, tc.min_lr, tc.steps, tc.warmup_ratio) / tc.lr
        return scale * (self.plateau.scale if self.plateau else 1.0)

    def train_step(self) -> None:
        if self.use_graph_step:
            return self.graph_train_step()
        tc = self.config.train
        for hook in self.hooks:
            hook.on_step_start(self)
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(tc.grad_accum):
            inputs, targets = self.sampler.next_batch()
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with self.no_sync(micro < tc.grad_accum - 1):
                loss, lm_loss = self.compute_loss(inputs, targets)
                (loss / tc.grad_accum).backward()
            self._loss_sum += lm_loss.detach().float()
            self._loss_count += 1
        for hook in self.hooks:
            hook.on_after_backward(self)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        if hasattr(self._grad_norm, "full_tensor"):  # FSDP2 (training/distributed.py): a replicated DTensor
            self._grad_norm = self._grad_norm.full_tensor()
        self._nonfinite |= ~torch.isfinite(self._grad_norm) | ~torch.isfinite(lm_loss.detach())
        scale = self.lr_scale()
        for group in self.optimizer.param_groups:
            group["lr"] = tc.lr * group["lr_mult"] * scale
        self.last_lr = tc.lr * scale  # what the log reports (the base group's rate of this step)
        self.optimizer.step()
        self.step += 1
        self.tokens_seen += tc.batch_size * tc.seq_len * tc.grad_accum * self.world_size
        for hook in self.hooks:
            hook.on_step_end(self)

    # ----------------------------------------------------------------------------------------------
    # The loop.

    def fit(self, until_step: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop after ``until_step``, with a checkpoint). Returns the summary."""
        tc = self.config.train
        stop_at = min(tc.steps, until_step) if until_step is not None else tc.steps
        if self.is_main:
            self.prepare_run_dir()
            self.logger = MetricsLogger(self.run_dir, tensorboard=tc.tensorboard)
            self.console = Console(tc.steps, self.step, enabled=tc.progress)
            self.console.print(f"training {self.config.model.key} ({self.model.num_params:,} params) on "
                               f"{self.data.name} ({len(self.data.train):,} train tokens) -> {self.run_dir}"
                               + (f", resumed at step {self.step}" if self.resume_from else ""))
        status = "aborted"  # anything that escapes the loop below (a second Ctrl-C, an error)
        try:
            with self.signal_guard():
                for hook in self.hooks:
                    hook.on_fit_start(self)
                self._interval_start = time.perf_counter()
                self._interval_tokens = 0
                saved_step = self.step if self.resume_from else None
                while self.step < stop_at and self.stop_reason is None:
                    self.train_step()
                    self._interval_tokens += tc.batch_size * tc.seq_len * tc.grad_accum * self.world_size
                    if self.console:
                        self.console.advance()
                    last = self.step in (tc.steps, stop_at)
                    if self.step % tc.log_every == 0 or last:
                        self.log_train()
                    evaluated = self.step % tc.eval_every == 0 or self.step == tc.steps
                    improved = self.run_eval() if evaluated else False
                    periodic = tc.save_every > 0 and self.step % tc.save_every == 0
                    if last or periodic or (evaluated and (tc.save_every == 0 or improved)):
                        self.save()
                        saved_step = self.step
                if self.stop_reason and saved_step != self.step:
                    self.save()  # interrupted (or stopped by the plateau protocol) between checkpoints
            status = self.stop_reason or ("completed" if self.step >= tc.steps else "paused")
        except TrainingDiverged:
            status = "diverged"
            raise
        finally:
            summary = self.finish(status)
        return summary

    def log_train(self) -> None:
        loss = self.reduce_mean(self._loss_sum / max(self._loss_count, 1))
        loss_value, grad_norm, nonfinite = torch.stack(
            [loss.float(), self._grad_norm.float(), self._nonfinite.float()]).tolist()  # the one sync
        now = time.perf_counter()  # after the sync: the interval's queued GPU work is done and counted
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
        improved = False
        if self.is_main:
            self.check_finite()
            record = {"kind": "eval", "step": self.step, **self.evaluate()}
            for hook in self.hooks:
                hook.on_eval(self, record)
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
            self.logger.log(record)
            self.console.print(format_eval(record))
        self.barrier()
        self._interval_start = time.perf_counter()
        return improved

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Val loss and perplexity, the balance metrics of SPEC §4, and the source's own metric."""
        tc = self.config.train
        val_loss = evaluate_loss(self.model, self.val_windows, tc.batch_size, self.device, self.autocast)
        metrics = {"val_loss": val_loss, "val_ppl": perplexity(val_loss),
                   "train_eval_loss": evaluate_loss(self.model, self.train_eval_windows, tc.batch_size,
                                                    self.device, self.autocast)}
        ratio = grad_ratio(self.model)  # gradients of the last step are still held
        if ratio is not None:
            metrics["grad_ratio"] = float(ratio)
        self.model.eval()
        metrics.update(record_balance(self.model, self.val_windows[:tc.batch_size, :-1].to(self.device)))
        if self.task is not None:
            metrics.update(self.task.evaluate(self.model, self.device, tc.batch_size))
        self.model.train()
        return metrics

    # ----------------------------------------------------------------------------------------------
    # Failure, signals, checkpoints, the run folder.

    def check_finite(self) -> None:
        if bool(self._nonfinite):
            self.diverged()

    def diverged(self) -> None:
        last = ckpt.read_pointer(self.run_dir, "latest")
        kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"
        raise TrainingDiverged(
            f"training diverged: the loss or gradient became NaN/inf before step {self.step}; stopped, {kept}; "
            f"resume it with a lower learning rate: groundthink train --resume {self.run_dir} --set train.lr=...")

    @contextlib.contextmanager
    def signal_guard(self):
        """SIGINT / SIGTERM: finish the current step, save a checkpoint, stop. A second signal aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.signal_received is not None:
                raise KeyboardInterrupt
            self.signal_received = signum
            self.stop_reason = "interrupted"

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def state_dict(self) -> dict:
        """Everything besides the weights that an exact resume needs (plain types and tensors only)."""
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step, "model_key": self.config.model.key, "optimizer": self.optimizer_state(),
                "sampler": self.sampler.state_dict(), "rng": rng,
                "plateau": self.plateau.state_dict() if self.plateau else None,
                "best_val_loss": self.best_val_loss, "best_step": self.best_step, "tokens_seen": self.tokens_seen,
                "train_seconds": self.train_seconds, "hooks": [hook.state_dict() for hook in self.hooks],
                # a run stopped after its last step resumes straight to its summary, which reports this
                "last_eval": self.last_eval}

    def optimizer_state(self) -> dict:
        """``optimizer.state_dict()`` with plain-number learning rates (a captured step's are tensors), so
        checkpoints of both steps have one format and resume with either."""
        state = self.optimizer.state_dict()
        for group in state["param_groups"]:  # copies of the groups: the live tensors stay as they are
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = group["lr"].item()
        return state

    def load_optimizer_state(self, state: dict) -> None:
        """Load moments and step counts; how the optimizer runs stays this run's own: a captured step keeps
        its flags (fused, capturable) and the lr tensors it reads, and an eager step never inherits a
        captured run's ``capturable``."""
        before = [dict(group) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        kept = ("fused", "capturable", "foreach", "differentiable") if self.use_graph_step else ("capturable",)
        for group, old in zip(self.optimizer.param_groups, before):
            for flag in kept:
                if flag in old:
                    group[flag] = old[flag]
            if isinstance(old["lr"], torch.Tensor):
                old["lr"].fill_(float(group["lr"]))
                group["lr"] = old["lr"]

    def load_checkpoint(self, checkpoint: Path) -> None:
        state = ckpt.load_state(checkpoint)
        if state.get("model_key") != self.config.model.key:
            raise UserError(f"checkpoint {checkpoint} is of model {state.get('model_key')!r}, not "
                            f"{self.config.model.key!r}; resume without --model, or start a new run with --out")
        ckpt.load_weights(self.model, checkpoint)
        try:
            self.load_optimizer_state(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise UserError(f"optimizer state in {checkpoint} does not fit this model ({err}); "
                            f"resume with the run's own config.yaml") from None
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        version, internal, gauss = state["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self.step = int(state["step"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_step = state["best_step"]
        self.tokens_seen = int(state["tokens_seen"])
        self.train_seconds = float(state["train_seconds"])
        self.last_eval = state.get("last_eval")
        for hook, hook_state in zip(self.hooks, state.get("hooks", [])):
            hook.load_state_dict(hook_state)

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0), point ``latest`` (and ``best``) at it, prune."""
        path = None
        if self.is_main:
            self.check_finite()  # never save weights that have seen a NaN
            val_loss = self.last_eval["val_loss"] if self.last_eval and self.last_eval["step"] == self.step else None
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.state_dict(),
                                        {"model": self.config.model.key, "val_loss": val_loss})
            ckpt.set_pointer(self.run_dir, "latest", path)
            if self.best_step == self.step:
                ckpt.set_pointer(self.run_dir, "best", path)
            ckpt.prune_checkpoints(self.run_dir, self.config.train.keep_last)
        self.barrier()
        self._interval_start = time.perf_counter()
        return path

    def prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(self.run_dir)
        if self.resume_from is None:
            if ckpt.list_checkpoints(self.run_dir):
                raise UserError(f"run folder {self.run_dir} already holds a run with checkpoints; continue it with "
                                f"--resume {self.run_dir}, or choose another --out")
            for stale in ("metrics.jsonl", "summary.json"):
                (self.run_dir / stale).unlink(missing_ok=True)
            self.tokenizer.save(self.run_dir / "tokenizer.json")
        else:
            truncate_metrics(self.run_dir, self.step)
        atomic_write_text(self.run_dir / "config.yaml", self.config.to_yaml())

    def finish(self, status: str) -> dict:
        """Write ``summary.json`` and the summary line (rank 0); close the logger and the progress bar."""
        summary = {"kind": "summary", "step": self.step, "status": status, "model": self.config.model.key,
                   "data": self.data.name, "params": self.model.num_params, "max_steps": self.config.train.steps,
                   "best_val_loss": self.best_val_loss if self.best_step is not None else None,
                   "best_val_ppl": perplexity(self.best_val_loss) if self.best_step is not None else None,
                   "best_step": self.best_step, "tokens_seen": self.tokens_seen,
                   "train_seconds": self.train_seconds,
                   "tok_per_s": self.tokens_seen / self.train_seconds if self.train_seconds > 0 else None,
                   "device": str(self.device), "world_size": self.world_size,
                   "step_mode": ("cuda_graph" if self.use_graph_step and self.device.type == "cuda" else "eager")
                                + ("+compile" if self.config.train.compile else "")}
        if self.last_eval:
            summary["final"] = {k: v for k, v in self.last_eval.items() if k != "kind"}
        if self.signal_received is not None:
            summary["signal"] = signal.Signals(self.signal_received).name
        if self.is_main and self.logger is not None:
            self.logger.log(summary)
            self.logger.close()
            atomic_write_text(self.run_dir / "summary.json", json.dumps(clean(summary), indent=1) + "\n")
            self.console.close()
            if status == "interrupted":
                self.console.print(f"interrupted: checkpoint saved at step {self.step}; continue with "
                                   f"groundthink train --resume {self.run_dir}")
        return summary
