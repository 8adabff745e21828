"""What an exact resume needs besides the weights, captured from a trainer and put back.

The state holds the optimizer (full tensors, also under FSDP), the sampler's generator, every random
generator (dropout and anything else that draws), the plateau protocol, the hooks' states and the trainer's
counters; it is plain types and tensors only, so it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path

from groundthink.errors import UserError
from groundthink.training import checkpoint as ckpt
from groundthink.training.optim import load_optimizer_state, optimizer_state


def training_state(trainer) -> dict:
    optimizer = trainer.parallel.full_optimizer_state(trainer.optimizer) or optimizer_state(trainer.optimizer)
    return {"step": trainer.step, "model_key": trainer.config.model.key, "optimizer": optimizer,
            "sampler": trainer.sampler.state_dict(), "rng": ckpt.rng_state(),
            "plateau": trainer.plateau.state_dict() if trainer.plateau else None,
            "best_val_loss": trainer.best_val_loss, "best_step": trainer.best_step,
            "tokens_seen": trainer.tokens_seen, "train_seconds": trainer.train_seconds,
            "hooks": [hook.state_dict() for hook in trainer.hooks],
            # a run stopped after its last step resumes straight to its summary, which reports this
            "last_eval": trainer.last_eval}


def restore(trainer, checkpoint: Path, state: dict) -> None:
    """Load ``checkpoint``'s weights and ``state`` into the trainer's parts."""
    key = trainer.config.model.key
    if state.get("model_key") != key:
        raise UserError(f"checkpoint {checkpoint} is of model {state.get('model_key')!r}, not {key!r}; resume "
                        f"without --model, or start a new run with --out")
    ckpt.load_weights(trainer.parallel.load_target, checkpoint)
    try:
        load_optimizer_state(trainer.optimizer, state["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(f"optimizer state in {checkpoint} does not fit this model ({err}); "
                        f"resume with the run's own config.yaml") from None
    trainer.parallel.after_load(trainer.optimizer)
    trainer.sampler.load_state_dict(state["sampler"])
    ckpt.restore_rng(state["rng"])
    if trainer.plateau is not None and state.get("plateau"):
        trainer.plateau.load_state_dict(state["plateau"])
    trainer.step = int(state["step"])
    trainer.best_val_loss = float(state["best_val_loss"])
    trainer.best_step = state["best_step"]
    trainer.tokens_seen = int(state["tokens_seen"])
    trainer.train_seconds = float(state["train_seconds"])
    trainer.last_eval = state.get("last_eval")
    for hook, hook_state in zip(trainer.hooks, state.get("hooks", [])):
        hook.load_state_dict(hook_state)
