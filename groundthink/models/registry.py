"""The model registry: one table of keys -> (description, config overrides)."""
from __future__ import annotations

import textwrap

from groundthink.models.config import ModelConfig
from groundthink.models.model import GroundThinkLM
from groundthink.models.params import count_parameters

# key: (description, overrides of ModelConfig). Fusion variants are docs/design.md#fusion; baselines follow.
REGISTRY: dict[str, tuple[str, dict]] = {
    "HY": ("per-channel gains g_r*r + g_m*m", dict(fusion="gain", gate_init=0.7)),
    "GF": ("gate per position", dict(fusion="gate", gate_init=0.5)),
    "GF-MH": ("gate per position, Mamba-heavy start (0.3)", dict(fusion="gate", gate_init=0.3)),
    "GF-RH": ("gate per position, RWKV-heavy start (0.7)", dict(fusion="gate", gate_init=0.7)),
    "GF-XM": ("gate per position, extreme Mamba start (0.03)", dict(fusion="gate", gate_init=0.03)),
    "GF-XR": ("gate per position, extreme RWKV start (0.97)", dict(fusion="gate", gate_init=0.97)),
    "HGF": ("gate per position and channel", dict(fusion="gate_channel", gate_init=0.5)),
    "HGF-MH": ("gate per position and channel, Mamba-heavy (0.3)", dict(fusion="gate_channel", gate_init=0.3)),
    "HGF-RH": ("gate per position and channel, RWKV-heavy (0.7)", dict(fusion="gate_channel", gate_init=0.7)),
    "CP": ("concatenate and project Linear(2d, d)", dict(fusion="concat_project", gate_init=None)),
    "WS": ("weighted sum w*r + (1-w)*m, scalar w", dict(fusion="weighted_sum", gate_init=0.5)),
    "RF": ("residual fusion r + a*m, scalar a", dict(fusion="residual", gate_init=0.3)),
    "GPT2": ("baseline: causal self-attention (SDPA), learned positions", dict(layers="A")),
    "RWKV6": ("baseline: RWKV-6 only blocks", dict(layers="R")),
    "MAMBA2": ("baseline: Mamba-2 only blocks", dict(layers="M")),
    "SEQ-RMMR": ("sequential stack, pattern R M M R repeated", dict(layers="R M M R")),
    "SEQ-2R1M": ("sequential stack, 2:1 RWKV:Mamba layers (R R M)", dict(layers="R R M")),
}


def get_model(key: str, **overrides) -> GroundThinkLM:
    """Build a registered model; ``overrides`` are ModelConfig fields (``vocab_size``, ``gate_init``, ...)."""
    return GroundThinkLM(get_config(key, **overrides))


def get_config(key: str, **overrides) -> ModelConfig:
    if key not in REGISTRY:
        raise KeyError(f"unknown model {key!r}; valid keys: {', '.join(REGISTRY)}")
    settings = dict(REGISTRY[key][1])
    settings.update({k: v for k, v in overrides.items() if v is not None or k == "gate_init"})
    if "gate_init" in overrides and overrides["gate_init"] is None:
        settings["gate_init"] = REGISTRY[key][1].get("gate_init")
    return ModelConfig.from_dict(settings)


def list_models(show: bool = False, **overrides) -> list[str]:
    """The registered keys; ``show=True`` also prints key, description, fusion and total parameters."""
    keys = list(REGISTRY)
    if show:
        print(models_table(**overrides))
    return keys


# The ModelConfig fields that set how many parameters a model has (named in the table's header).
SHAPE_FIELDS = ("vocab_size", "hidden_size", "n_layers", "ffn_mult", "rwkv_heads", "rwkv_expand_k", "rwkv_expand_v",
                "mamba_expand", "mamba_head_dim", "mamba_state_size", "mamba_conv_kernel", "attn_heads",
                "max_position_embeddings")
TABLE_WIDTH = 100  # terminal columns
# The fields each key sets itself (its fusion, gate start, layer pattern).
PER_KEY_FIELDS = frozenset(name for _, settings in REGISTRY.values() for name in settings)


def shape_header(**overrides) -> str:
    """The shape the table counts at (every key shares it), as ``field=value`` in ``--set model.`` names."""
    config = get_config(next(iter(REGISTRY)), **overrides)
    fields = [f"{name}={getattr(config, name)}" for name in SHAPE_FIELDS]
    defaults = ModelConfig()
    fields += [f"{name}={value!r}" for name, value in overrides.items()
               if name not in SHAPE_FIELDS and (name in PER_KEY_FIELDS or value != getattr(defaults, name))]
    return textwrap.fill("counted at " + ", ".join(fields), width=TABLE_WIDTH, subsequent_indent="  ",
                         break_on_hyphens=False)


def models_table(**overrides) -> str:
    """The registry as a table (key, description, fusion parameters per block, total), under its shape."""
    rows = [("key", "description", "fusion/block", "total params")]
    for key, (description, _) in REGISTRY.items():
        model = get_model(key, **overrides)
        counts = count_parameters(model)
        fused_blocks = sum(1 for layer in model.layers if hasattr(layer, "fusion"))
        per_block = f"{counts['fusion'] // fused_blocks:,}" if fused_blocks else "-"
        rows.append((key, description, per_block, f"{counts['total']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([shape_header(**overrides), "", *lines])
