"""Which optional extras of pyproject.toml are installed, for the tests that need one.

A test (or a whole file, via ``pytestmark``) marked ``@pytest.mark.extra("fla")`` is skipped where the extra
is missing, with the install command as the reason; a file that imports the extra's modules at the top calls
``require_extra`` first. ``python -m pytest -m extra`` runs exactly these tests (as .ci/run does after
installing the extras).
"""
from __future__ import annotations

import importlib.util

import pytest

# The modules each extra brings. FLA itself is a Linux dependency, but without Triton only its top-level
# package imports (its layers and kernels import triton), so the "fla" extra means Triton too.
EXTRA_MODULES = {"fla": ("triton", "fla"), "hf": ("transformers",), "eval": ("lm_eval", "transformers")}


def missing_extra(extra: str) -> str | None:
    """Why a test that needs ``extra`` cannot run here, or None when the extra is installed."""
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRA_MODULES)}")
    missing = [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]
    return f"needs {', '.join(missing)}: pip install -e \".[{extra}]\"" if missing else None


def require_extra(extra: str) -> None:
    """Skip the calling test file (at import, before its own imports of the extra) when ``extra`` is missing."""
    __tracebackhide__ = True  # pytest then reports the skip at the test file's line, not here
    reason = missing_extra(extra)
    if reason:
        pytest.skip(reason, allow_module_level=True)
