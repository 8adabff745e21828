"""Turning a user's device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a ``torch.device``."""
from __future__ import annotations

import torch

from groundthink.errors import UserError


def resolve_device(name: str, setting: str = "--device") -> torch.device:
    """``auto`` picks CUDA when there is one. ``setting`` names where the user set it (``--device`` or
    ``train.device``), so the one-line error says what to change."""
    fix = f"--set {setting}=cpu" if "." in setting else f"{setting} cpu"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{setting} is {name!r} but CUDA is not available here; use {fix}")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"{setting} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
