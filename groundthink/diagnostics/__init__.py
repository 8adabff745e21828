"""Diagnostics: the balance metrics of SPEC §4 and the graduation suites of SPEC §5."""
from groundthink.diagnostics.metrics import branch_grad_norms, grad_ratio, record_balance

__all__ = ["branch_grad_norms", "grad_ratio", "record_balance"]
