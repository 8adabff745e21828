"""Diagnostics: the balance metrics of docs/design.md#balance-metrics and the graduation suites of docs/design.md#diagnostics.

``metrics`` (what the trainer logs) is imported eagerly; ``diagnose`` and the rest load on first use, so
importing the metrics never pulls in matplotlib.
"""
from groundthink.diagnostics.metrics import (ablation_metrics, ablation_share, balance_metrics, branch_grad_norms,
                                             grad_ratio, record_balance, state_norms)

_LAZY = {"diagnose": "report", "Diagnosis": "report", "DiagnoseOptions": "probe", "Probe": "probe",
         "SuiteResult": "suites", "SUITES": "suites", "ANALYSES": "analyses"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"groundthink.diagnostics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'groundthink.diagnostics' has no attribute {name!r}")


__all__ = ["ablation_metrics", "ablation_share", "balance_metrics", "branch_grad_norms", "grad_ratio",
           "record_balance", "state_norms", *_LAZY]
