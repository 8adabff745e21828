"""The model registry: one table of keys -> (description, config overrides)."""
from __future__ import annotations

from groundthink.models.config import ModelConfig
from groundthink.models.model import GroundThinkLM
from groundthink.models.params import count_parameters

# key: (description, overrides of ModelConfig). Fusion variants are SPEC §2; baselines follow.
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


def models_table(**overrides) -> str:
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
    return "\n".join(lines)
