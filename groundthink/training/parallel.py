"""Data parallelism as functions and two small objects, composed by the trainer (docs/distributed.md).

* ``Collectives``: what the ranks agree on (a mean for logging, a max for flags, a broadcast of rank 0's
  decisions, a barrier). In one process every method returns its input: the trainer is the same code.
* ``ParallelModel``: the model as this process trains it. ``module`` is what forward passes go through
  (``DistributedDataParallel(model)``, the FSDP2-sharded model, or the model itself); ``sync_context`` skips
  the gradient all-reduce on all but the last micro-batch of a step; ``full_model()`` gives rank 0 the
  unsharded weights to evaluate and save; ``load_target`` / ``after_load`` take a full checkpoint in.
* ``train.parallel: ddp`` (default): gradients are all-reduced (averaged) in the backward of the last
  micro-batch. ``fsdp``: FSDP2 (``fully_shard`` on every block, then the root) shards weights, gradients and
  AdamW moments; rank 0 also keeps an unsharded copy, refreshed (all-gathered) before each evaluation and
  checkpoint. Checkpoints have the single-process format (full weights, full optimizer state), so a run
  resumes with any number of ranks, in either mode, or in one process.
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
import torch.distributed as dist

from groundthink.errors import UserError
from groundthink.models.metrics import BRANCHES, grad_ratio


class Collectives:
    """Collectives over the job's ranks; with ``world_size == 1`` (the default) nothing is communicated."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size

    @classmethod
    def of_process_group(cls) -> Collectives:
        return cls(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The average over ranks (a copy; the input is left as it is)."""
        if self.active:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.AVG)
        return tensor

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def broadcast(self, value):
        """``value`` as rank 0 has it, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


# --------------------------------------------------------------------------------------------------
# Wrapping and sharding.

def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True, find_unused_parameters=find_unused_parameters)


def apply_fsdp(model: torch.nn.Module, device: torch.device, world_size: int, model_key: str) -> None:
    """FSDP2, in place: each block is one all-gather / reduce-scatter unit; the root holds the rest
    (embedding tied with the head, final norm)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    scalars = [name for name, param in model.named_parameters() if param.ndim == 0]
    if scalars:
        raise UserError(f"train.parallel=fsdp cannot shard the scalar parameters of {model_key} "
                        f"({', '.join(scalars[:2])}, ...: FSDP2 shards along a dimension); train this model "
                        f"with train.parallel=ddp")
    # FSDP2 warns about any module output that is a view: an in-place op on it would skip a gather. The
    # blocks' outputs are only read out of place (tests/test_distributed.py: FSDP matches one process).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world_size,))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def gather_full_weights(sharded: torch.nn.Module, full: torch.nn.Module | None) -> None:
    """All-gather every FSDP shard; rank 0 (the one with ``full``) copies the weights into ``full``. Every
    rank must call it: the gather is a collective."""
    targets = dict(full.named_parameters()) if full is not None else {}
    with torch.no_grad():
        for name, param in sharded.named_parameters():
            value = param.full_tensor()
            if full is not None:
                targets[name].copy_(value)


def gather_optimizer_state(optimizer: torch.optim.Optimizer, is_main: bool) -> dict | None:
    """The AdamW state with full tensors, in ``optimizer.state_dict()`` form (rank 0; None elsewhere)."""
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()
    full = {}
    for index, values in state["state"].items():  # the same order on every rank
        full[index] = {key: value.full_tensor().cpu() if isinstance(value, DTensor) else value
                       for key, value in values.items()}
    return {"state": full, "param_groups": state["param_groups"]} if is_main else None


def shard_full_state(sharded: torch.nn.Module, full: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> None:
    """Each rank keeps its shard of the full weights in ``full`` and of the (full) optimizer state just
    loaded, sliced locally: no traffic."""
    from torch.distributed.tensor import distribute_tensor

    with torch.no_grad():
        for param, value in zip(sharded.parameters(), full.parameters()):
            param.copy_(distribute_tensor(value.detach(), param.device_mesh, param.placements, src_data_rank=None))
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if key != "step" and torch.is_tensor(value):
                    state[key] = distribute_tensor(value.to(device), param.device_mesh, param.placements,
                                                   src_data_rank=None)


def sharded_grad_ratio(model, collectives: Collectives) -> float | None:
    """``grad_ratio`` from FSDP's gradient shards: sums of squares per branch, summed over ranks."""
    squares = torch.zeros(2, device=next(model.parameters()).device)
    for i, branch in enumerate(BRANCHES):
        grads = [p.grad.to_local() for p in model.branch_parameters(branch) if p.grad is not None]
        if not grads:
            return None  # the same on every rank: a baseline without this branch, or no step yet
        squares[i] = sum(g.float().pow(2).sum() for g in grads)
    collectives.sum_(squares)
    rwkv, mamba = squares.sqrt().tolist()
    return rwkv / max(mamba, 1e-12)


# --------------------------------------------------------------------------------------------------

class ParallelModel:
    """The model of one process, as trained, evaluated and saved. ``mode``: single | ddp | fsdp."""

    def __init__(self, model: torch.nn.Module, mode: str, collectives: Collectives, device: torch.device, *,
                 model_key: str = "", find_unused_parameters: bool = False):
        self.model, self.mode, self.collectives = model, mode, collectives
        self.full = None  # FSDP: the unsharded copy that rank 0 evaluates and saves (every rank until loaded)
        if mode == "ddp":
            self.module = wrap_ddp(model, device, find_unused_parameters)
        elif mode == "fsdp":
            self.full = copy.deepcopy(model)
            apply_fsdp(model, device, collectives.world_size, model_key)
            self.module = model
        else:
            self.module = model
        self.device = device

    @classmethod
    def build(cls, model, train_config, collectives: Collectives, device, model_key: str,
              find_unused_parameters: bool) -> ParallelModel:
        # Any torchrun job (even of one rank) trains as it would with more; a plain process is "single".
        mode = train_config.parallel if dist.is_initialized() else "single"
        return cls(model, mode, collectives, device, model_key=model_key,
                   find_unused_parameters=find_unused_parameters)

    def sync_context(self, last_micro_batch: bool):
        """Around one micro-batch: the gradient all-reduce / reduce-scatter runs on the last one only."""
        if self.mode == "fsdp":
            self.model.set_requires_gradient_sync(last_micro_batch)
        elif self.mode == "ddp" and not last_micro_batch:
            return self.module.no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def full_model(self):
        """Rank 0 gets the module with the full, current weights; other ranks get None. Under FSDP every
        rank must enter (the gather is a collective)."""
        if self.mode == "fsdp":
            gather_full_weights(self.model, self.full if self.collectives.is_main else None)
            yield self.full if self.collectives.is_main else None
        else:
            yield self.model if self.collectives.is_main else None

    def grad_ratio(self) -> float | None:
        """``grad_ratio`` of the gradients held (every rank must call it under FSDP)."""
        if self.mode == "fsdp":
            return sharded_grad_ratio(self.model, self.collectives)
        ratio = grad_ratio(self.model)
        return None if ratio is None else float(ratio)

    def full_optimizer_state(self, optimizer) -> dict | None:
        """Under FSDP the gathered state (rank 0), else None: the optimizer's own state is already full."""
        return gather_optimizer_state(optimizer, self.collectives.is_main) if self.mode == "fsdp" else None

    @property
    def load_target(self) -> torch.nn.Module:
        """The module a full checkpoint's weights load into."""
        return self.full if self.mode == "fsdp" else self.model

    def after_load(self, optimizer) -> None:
        """After a full checkpoint was loaded into ``load_target`` and ``optimizer``: FSDP shards both."""
        if self.mode == "fsdp":
            shard_full_state(self.model, self.full, optimizer, self.device)

    def drop_full_copy_off_main(self) -> None:
        if self.mode == "fsdp" and not self.collectives.is_main:
            self.full = None
