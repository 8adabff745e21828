"""A run's configuration: three sections (model / data / train), loaded from YAML, overridden with
``--set section.key=value``, validated with errors that list the valid choices.

Precedence: the defaults below (``groundthink train`` with no arguments: GF-MH, small, on the offline
recall corpus) < the YAML file < the CLI flags < ``--set``. A run folder's ``config.yaml`` is the resolved
configuration (every model field filled in), and loads back through the same code.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from groundthink.data.config import DataConfig
from groundthink.errors import UserError
from groundthink.models.config import ModelConfig
from groundthink.models.registry import REGISTRY, get_config
from groundthink.training.interventions_config import InterventionsConfig

# The size of the default model: small enough that `groundthink train` learns visibly on a 2-core CPU in
# under two minutes. Presets in configs/ set their own sizes.
DEFAULT_MODEL_SETTINGS = {"hidden_size": 64, "n_layers": 4, "rwkv_heads": 2, "mamba_head_dim": 32,
                          "mamba_state_size": 16}
PRECISIONS = ("auto", "fp32", "bf16")
PARALLEL_MODES = ("ddp", "fsdp")
CUDA_GRAPH_MODES = ("auto", "on", "off")


@dataclass
class ModelSection:
    """A registry key plus ModelConfig fields that override the registry's values for it."""

    key: str = "GF-MH"
    settings: dict = field(default_factory=lambda: dict(DEFAULT_MODEL_SETTINGS))

    def to_dict(self) -> dict:
        return {"key": self.key, **self.settings}


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    seq_len: int = 64
    grad_accum: int = 1              # micro-batches per optimizer step (effective batch = batch_size * this)
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_ratio: float = 0.1        # linear warmup over this share of `steps`, then cosine to min_lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0           # 0 = no clipping
    mamba_lr_mult: float = 1.0       # the `mamba` parameter group's learning rate multiplier
    log_every: int = 10
    eval_every: int = 100
    eval_windows: int = 128          # validation windows of seq_len (the same ones at every eval)
    save_every: int = 0              # 0 = checkpoint at every eval (and at the end)
    keep_last: int = 2               # checkpoints kept besides the best
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = "auto"          # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    # Plateau protocol of the seed design: after `plateau_patience` of the steps without a better val loss,
    # multiply the LR by `plateau_factor`; stop when `plateau_max_reductions` reductions brought no gain.
    plateau: bool = False
    plateau_patience: float = 0.15
    plateau_factor: float = 0.5
    plateau_max_reductions: int = 2
    progress: bool = True            # a progress bar on a usable terminal, else plain progress lines (also with false)
    tensorboard: bool = True         # also write TensorBoard scalars when tensorboard is installed
    # Several processes (torchrun, --nproc; see training/launch.py and parallel.py): ddp replicates the model, fsdp
    # (FSDP2) shards weights, gradients and optimizer state (for ~125M parameters and above).
    parallel: str = "ddp"
    dist_timeout: float = 600.0      # seconds a rank waits for the others (longer than an eval + checkpoint)
    # One optimizer step as one captured CUDA graph (training/step.py; ~14x faster for the char model
    # on an H100). on: always (an error where it cannot work: several processes, hooks that need the host;
    # on CPU the same step runs eagerly, with a warning); auto: on for single-process CUDA runs whose hooks
    # are all graph-safe, else the eager step; off: the eager step.
    cuda_graph: str = "auto"
    # torch.compile the captured step's forward + backward (Inductor fuses the element-wise ops around FLA's
    # kernels). Needs that step (cuda_graph on, or auto on one CUDA device). On an H100 about 1.2x at the char
    # shape, 1.04x at ~125M (bench --mode compile; README), for about a minute of compilation at the start.
    compile: bool = False

    def tokens_per_step(self, world_size: int = 1) -> int:
        """Tokens one optimizer step trains on, over all ranks."""
        return self.batch_size * self.seq_len * self.grad_accum * world_size

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "eval_every", "eval_windows",
                     "plateau_max_reductions"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"train.{name} must be a positive integer, got {value}")
        if self.save_every < 0:
            raise ValueError(f"train.save_every must be >= 0, got {self.save_every}")
        if self.keep_last < 1:
            raise ValueError("train.keep_last must be at least 1 (the latest checkpoint is what --resume uses)")
        for name in ("lr", "mamba_lr_mult"):
            if not getattr(self, name) > 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"train.min_lr must be in [0, train.lr = {self.lr}], got {self.min_lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("train.weight_decay and train.grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"train.beta1 / beta2 must be in [0, 1), got {self.beta1} / {self.beta2}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision {self.precision!r} is unknown; valid: {', '.join(PRECISIONS)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"train.device {self.device!r} is unknown; valid: auto, cpu, cuda, cuda:N")
        # YAML reads a bare `on` / `off` as true / false.
        self.cuda_graph = {"true": "on", "false": "off"}.get(str(self.cuda_graph).lower(), str(self.cuda_graph))
        if self.cuda_graph not in CUDA_GRAPH_MODES:
            raise ValueError(f"train.cuda_graph {self.cuda_graph!r} is unknown; valid: {', '.join(CUDA_GRAPH_MODES)}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"train.compile must be true or false, got {self.compile!r}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"train.parallel {self.parallel!r} is unknown; valid: {', '.join(PARALLEL_MODES)}")
        if not self.dist_timeout > 0:
            raise ValueError(f"train.dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if not (0 < self.plateau_patience < 1 and 0 < self.plateau_factor < 1):
            raise ValueError("train.plateau_patience and train.plateau_factor must be in (0, 1)")


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    interventions: InterventionsConfig = field(default_factory=InterventionsConfig)  # balance hooks, off

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train), "interventions": dataclasses.asdict(self.interventions)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The registry's config for ``model.key`` with the settings applied (and the tokenizer's vocabulary)."""
        settings = dict(self.model.settings)
        if vocab_size is not None:
            if settings.get("vocab_size") not in (None, vocab_size):
                raise UserError(f"model.vocab_size {settings['vocab_size']} does not match the tokenizer's "
                                f"{vocab_size}; leave model.vocab_size unset (BPE size: data.vocab_size)")
            settings["vocab_size"] = vocab_size
        try:
            return get_config(self.model.key, **settings)
        except (KeyError, ValueError, TypeError) as err:
            raise UserError(one_line(err)) from None

    def validate(self) -> Config:
        if self.model.key not in REGISTRY:
            raise UserError(f"unknown model {self.model.key!r}; valid keys: {', '.join(REGISTRY)}")
        try:
            self.data.validate()
            self.train.validate()
            self.interventions.validate()
        except ValueError as err:
            raise UserError(one_line(err)) from None
        self.model_config(self.model.settings.get("vocab_size"))  # checks the model settings
        return self


# --------------------------------------------------------------------------------------------------
# Building a Config from dicts, YAML files and `key=value` overrides.

SECTIONS = ("model", "data", "train", "interventions")


def config_from_dict(data: dict, base: Config | None = None, origin: str = "config") -> Config:
    """Apply a nested dict onto ``base`` (default: the built-in defaults), checking every key and value."""
    config = base or Config()
    if data is None:
        return config
    if not isinstance(data, dict):
        raise UserError(f"{origin} must be a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section {section!r} in {origin}{suggest(section, SECTIONS)}; "
                            f"valid sections: {', '.join(SECTIONS)}")
        if values is None:
            continue
        if section == "model" and isinstance(values, str):  # `model: GF-MH` shorthand
            values = {"key": values}
        if not isinstance(values, dict):
            raise UserError(f"config section {section!r} in {origin} must be a mapping, got {values!r}")
        for key, value in values.items():
            set_value(config, f"{section}.{key}", value, origin)
    return config


def load_config(path=None, overrides: list[str] | None = None, base: Config | None = None) -> Config:
    """Defaults (or ``base``), then the YAML file at ``path``, then ``section.key=value`` overrides; validated."""
    config = base or Config()
    if path is not None:
        config = config_from_dict(read_yaml(path), config, origin=str(path))
    for item in overrides or []:
        apply_override(config, item)
    return config.validate()


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing YAML file (presets are in configs/)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or one_line(err)
        raise UserError(f"config file {path} is not valid YAML{at} ({problem}); fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None


def apply_override(config: Config, item: str) -> None:
    """``--set train.lr=1e-3``: the value is parsed according to the field's type."""
    if "=" not in item:
        raise UserError(f"--set {item!r} must look like section.key=value (e.g. --set train.lr=1e-3)")
    dotted, raw = item.split("=", 1)
    set_value(config, dotted.strip(), raw.strip(), "--set", from_string=True)


def set_value(config: Config, dotted: str, value, origin: str, from_string: bool = False) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise UserError(f"config key {dotted!r} in {origin} must be section.key with section one of "
                        f"{', '.join(SECTIONS)} (e.g. train.lr)")
    section, key = parts
    if section == "model":
        model_fields = typing.get_type_hints(ModelConfig)
        if key == "key":
            config.model.key = str(value)
            return
        if key not in model_fields:
            valid = ["key", *model_fields]
            raise UserError(f"unknown config key model.{key} in {origin}{suggest(key, valid)}; "
                            f"valid: {', '.join(valid)}")
        config.model.settings[key] = coerce(value, model_fields[key], f"model.{key}", from_string)
        return
    target = getattr(config, section)
    hints = typing.get_type_hints(type(target))
    if key not in hints:
        raise UserError(f"unknown config key {section}.{key} in {origin}{suggest(key, hints)}; "
                        f"valid: {', '.join(hints)}")
    setattr(target, key, coerce(value, hints[key], f"{section}.{key}", from_string))


def coerce(value, hint, name: str, from_string: bool = False):
    """``value`` as the field's type (``int``, ``float``, ``bool``, ``str``, or ``X | None``)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (from_string and str(value).lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if hint is dict and isinstance(value, dict):
            return value
    except (TypeError, ValueError, OverflowError):
        pass
    raise UserError(f"{name} must be {expected}, got {value!r}")


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__
