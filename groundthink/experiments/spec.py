"""A sweep spec: one YAML file with a base run config and the axes crossed into runs.

    name: fusion                      # the default output folder is runs/sweeps/<name>
    question: ...                     # what the sweep asks (printed at the top of results.md)
    data_root: ../shared/data         # "{data_root}" in any string of the config is replaced by this
    base: {model: ..., data: ..., train: ..., interventions: ...}    # a normal run config (groundthink train)
    models: [GF-MH, {name: GPT2-15L, key: GPT2, set: {model.n_layers: 15}}]
    variants: [{name: char}, {name: bpe, set: {data.tokenizer: bpe, ...}}]    # optional, crossed with models
    seeds: [0, 1, 2]
    measure: {ablation: true, long_context: 0, long_sequences: 8}        # after each run (measure.py)
    reference: {GF-MH: 1.59}          # a published val loss per row, shown beside ours
    goal: {grad_ratio: [0.3, 3.0], ablation_share_mamba: [0.2, 1.0], val_loss_within: {of: GF-MH, delta: 0.01}}
    ratios: [[GF-MH, GPT2-15L]]       # val-loss ratios of two models, paired by seed, per variant

The matrix is models x variants x seeds; each run is a normal run folder at ``OUT/[variant/]model/seedN``.
A run's identity is its config with the placeholders left in, so the same sweep moved to a machine whose
data lives elsewhere (``--data-root``) still recognizes its finished runs.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

from groundthink.data.sources import NAMED_SOURCES
from groundthink.errors import UserError
from groundthink.models.registry import REGISTRY
from groundthink.training.config import config_from_dict, read_yaml
from groundthink.training.config import suggest as close

SPEC_KEYS = ("name", "question", "data_root", "base", "models", "variants", "seeds", "measure", "reference",
             "goal", "ratios")
MEASURE_KEYS = {"ablation": bool, "long_context": int, "long_sequences": int}
GOAL_KEYS = ("grad_ratio", "ablation_share_mamba", "val_loss_within")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
DATA_ROOT = "{data_root}"


@dataclass
class Measure:
    ablation: bool = True          # loss with each branch zeroed -> ablation_share (hybrids only)
    long_context: int = 0          # loss by position up to this many tokens, state carried (0 = off)
    long_sequences: int = 8        # validation sequences averaged in the long-context pass


@dataclass
class RunSpec:
    model: str                     # the model entry's name (a row of the results)
    key: str                       # its registry key
    variant: str | None
    seed: int
    config: dict                   # nested sections, "{data_root}" unreplaced: the run's identity

    @property
    def label(self) -> str:
        return self.model if self.variant is None else f"{self.variant}/{self.model}"

    @property
    def folder(self) -> Path:
        return Path(*([self.variant] if self.variant else []), self.model, f"seed{self.seed}")


@dataclass
class SweepSpec:
    name: str
    path: Path
    question: str
    data_root: str
    runs: list[RunSpec]
    models: list[str]
    variants: list[str | None]
    seeds: list[int]
    measure: Measure = field(default_factory=Measure)
    reference: dict = field(default_factory=dict)
    goal: dict = field(default_factory=dict)
    ratios: list = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Result rows in spec order (variant-major, as the folders)."""
        return [RunSpec(m, "", v, 0, {}).label for v in self.variants for m in self.models]

    def resolved(self, config: dict) -> dict:
        return substitute(config, self.data_root)


def substitute(value, data_root: str):
    if isinstance(value, str):
        return value.replace(DATA_ROOT, data_root)
    if isinstance(value, dict):
        return {k: substitute(v, data_root) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, data_root) for v in value]
    return value


def build_config(config: dict, data_root: str):
    """The validated ``Config`` of a run's config dict."""
    return config_from_dict(substitute(copy.deepcopy(config), data_root), origin="the sweep").validate()


# --------------------------------------------------------------------------------------------------

def load_spec(path, data_root: str | None = None, overrides: list[str] | None = None,
              seeds: list[int] | None = None, only: list[str] | None = None) -> SweepSpec:
    """Read and check a sweep file; ``overrides`` (``section.key=value``) apply to every run."""
    path = Path(path)
    raw = read_yaml(path)
    where = f"sweep {path}"
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}{suggest(unknown[0], SPEC_KEYS)}; valid: {', '.join(SPEC_KEYS)}")
    name = str(raw.get("name") or path.stem)
    check_name(name, "name", where)
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise UserError(f"{where}: base must be a run config (sections model, data, train, interventions)")
    base = copy.deepcopy(base)
    if isinstance(base.get("model"), str):
        base["model"] = {"key": base["model"]}
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r} must look like section.key=value (e.g. --set train.steps=50)")
        dotted, value = item.split("=", 1)
        set_dotted(base, dotted.strip(), parse_scalar(value.strip()), "--set")

    models = [model_entry(entry, where) for entry in as_list(raw.get("models"), "models", where, required=True)]
    variants = [variant_entry(entry, where) for entry in as_list(raw.get("variants"), "variants", where)] or [(None, {})]
    for kind, names in (("model", [m[0] for m in models]), ("variant", [v[0] for v in variants])):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserError(f"{where}: {kind} name {dupes[0]!r} appears twice; give each entry its own name")
    seed_list = seeds if seeds is not None else as_list(raw.get("seeds", [0]), "seeds", where)
    if not seed_list or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seed_list):
        raise UserError(f"{where}: seeds must be a list of integers >= 0, e.g. seeds: [0, 1, 2]")
    known = [m[0] for m in models]
    if only:
        missing = [n for n in only if n not in known]
        if missing:
            raise UserError(f"--only {missing[0]!r} is not a model of {where}; its models: {', '.join(known)}")
        models = [m for m in models if m[0] in only]

    runs = []
    for variant, variant_set in variants:
        for model, key, model_set in models:
            for seed in seed_list:
                config = copy.deepcopy(base)
                for dotted, value in {**variant_set, **model_set}.items():
                    set_dotted(config, dotted, value, f"{where} ({variant or model})")
                config.setdefault("model", {})["key"] = key
                config.setdefault("train", {})["seed"] = seed
                runs.append(RunSpec(model, key, variant, seed, config))

    spec = SweepSpec(name=name, path=path, question=" ".join(str(raw.get("question") or "").split()),
                     data_root=str(data_root if data_root is not None else raw.get("data_root", "../shared/data")),
                     runs=runs, models=[m[0] for m in models], variants=[v[0] for v in variants],
                     seeds=list(seed_list), measure=measure_entry(raw.get("measure"), where),
                     reference=raw.get("reference") or {}, goal=raw.get("goal") or {},
                     ratios=raw.get("ratios") or [])
    check_extras(spec, where, known)  # against every model: --only must not break the spec's own checks
    for run in runs:  # every run's config must be valid before anything trains
        try:
            build_config(run.config, spec.data_root)
        except UserError as err:
            raise UserError(f"{where}, run {run.label} seed {run.seed}: {err}") from None
    return spec


def check_data(spec: SweepSpec) -> None:
    """Fail before training when a local data file of the sweep is missing."""
    for run in spec.runs:
        data = spec.resolved(run.config).get("data", {})
        for key in ("source", "val_source"):
            source = data.get(key)
            if source and source not in NAMED_SOURCES and not Path(source).expanduser().exists():
                hint = (" (--data-root sets {data_root})" if DATA_ROOT in str(run.config.get("data", {}).get(key))
                        else "")
                raise UserError(f"sweep {spec.path}: data.{key} {source} not found{hint}; pass the folder that "
                                f"holds the data with --data-root DIR")


# ---- entries --------------------------------------------------------------------------------------

def as_list(value, what: str, where: str, required: bool = False) -> list:
    if value is None:
        if required:
            raise UserError(f"{where}: {what} is missing; list the registry keys to run, e.g. {what}: [GF-MH, GF]")
        return []
    if not isinstance(value, list):
        raise UserError(f"{where}: {what} must be a list, got {value!r}")
    return value


def model_entry(entry, where: str) -> tuple[str, str, dict]:
    if isinstance(entry, str):
        entry = {"key": entry}
    if not isinstance(entry, dict) or "key" not in entry or set(entry) - {"key", "name", "set"}:
        raise UserError(f"{where}: a model entry is a registry key or {{key, name, set}}, got {entry!r}")
    key = str(entry["key"])
    if key not in REGISTRY:
        raise UserError(f"{where}: unknown model {key!r}{suggest(key, REGISTRY)}; valid keys: {', '.join(REGISTRY)}")
    name = str(entry.get("name") or key)
    check_name(name, "model name", where)
    return name, key, settings_entry(entry.get("set"), where, name)


def variant_entry(entry, where: str) -> tuple[str, dict]:
    if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "set"}:
        raise UserError(f"{where}: a variant is {{name, set: {{section.key: value}}}}, got {entry!r}")
    name = str(entry["name"])
    check_name(name, "variant name", where)
    return name, settings_entry(entry.get("set"), where, name)


def settings_entry(settings, where: str, owner: str) -> dict:
    if settings is None:
        return {}
    if not isinstance(settings, dict) or not all(isinstance(k, str) and "." in k for k in settings):
        raise UserError(f"{where}: 'set' of {owner} must map section.key to a value, e.g. {{train.lr: 1e-3}}")
    return dict(settings)


def measure_entry(raw, where: str) -> Measure:
    if raw is None:
        return Measure()
    if not isinstance(raw, dict) or set(raw) - set(MEASURE_KEYS):
        raise UserError(f"{where}: measure takes {', '.join(MEASURE_KEYS)}, got {raw!r}")
    for key, value in raw.items():
        kind = MEASURE_KEYS[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UserError(f"{where}: measure.{key} must be an integer >= 0, got {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise UserError(f"{where}: measure.{key} must be true or false, got {value!r}")
    return Measure(**raw)


def check_extras(spec: SweepSpec, where: str, models: list[str]) -> None:
    labels = [RunSpec(m, "", v, 0, {}).label for v in spec.variants for m in models]
    if not isinstance(spec.reference, dict):
        raise UserError(f"{where}: reference must map a row (model, or variant/model) to a val loss")
    for label, value in spec.reference.items():
        if label not in labels:
            raise UserError(f"{where}: reference names {label!r}, not a row of this sweep; rows: {', '.join(labels)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: reference[{label!r}] must be a number, got {value!r}")
    if not isinstance(spec.goal, dict) or set(spec.goal) - set(GOAL_KEYS):
        raise UserError(f"{where}: goal takes {', '.join(GOAL_KEYS)}, got {spec.goal!r}")
    for key in ("grad_ratio", "ablation_share_mamba"):
        band = spec.goal.get(key)
        if band is not None and not (isinstance(band, list) and len(band) == 2 and band[0] <= band[1]):
            raise UserError(f"{where}: goal.{key} must be [low, high], got {band!r}")
    within = spec.goal.get("val_loss_within")
    if within is not None:
        if not (isinstance(within, dict) and set(within) == {"of", "delta"}):
            raise UserError(f"{where}: goal.val_loss_within must be {{of: ROW, delta: NUMBER}}, got {within!r}")
        if within["of"] not in labels:
            raise UserError(f"{where}: goal.val_loss_within.of {within['of']!r} is not a row; rows: {', '.join(labels)}")
    for pair in spec.ratios:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in models for p in pair)):
            raise UserError(f"{where}: ratios entries are [MODEL, MODEL] of this sweep's models, got {pair!r}")


def check_name(name: str, what: str, where: str) -> None:
    if not NAME.match(name):
        raise UserError(f"{where}: {what} {name!r} must be letters, digits, '.', '_', '+' or '-' (it names a folder)")


def set_dotted(config: dict, dotted: str, value, origin: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"{origin}: setting {dotted!r} must be section.key (e.g. train.lr)")
    section = config.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise UserError(f"{origin}: section {parts[0]!r} must be a mapping")
    section[parts[1]] = value


def parse_scalar(text: str):
    """A ``--set`` value as YAML reads it (numbers, booleans, null), else the string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


def suggest(word: str, choices) -> str:
    return close(word, choices)
