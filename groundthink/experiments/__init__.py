"""Experiments: sweep specs (``spec``), the resumable runner (``sweep``, ``worker``), end-of-run measurements
(``measure``), result tables (``results``) and plots (``plots``). ``groundthink sweep`` is the command.

Imports are lazy, so ``python -m groundthink.experiments.worker`` starts without importing itself twice.
"""


def __getattr__(name):
    if name in ("SweepSpec", "load_spec"):
        from groundthink.experiments import spec

        return getattr(spec, name)
    if name == "run_sweep":
        from groundthink.experiments.sweep import run_sweep

        return run_sweep
    raise AttributeError(f"module 'groundthink.experiments' has no attribute {name!r}")


__all__ = ["SweepSpec", "load_spec", "run_sweep"]
