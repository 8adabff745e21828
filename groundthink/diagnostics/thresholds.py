"""Every PASS / WARN / FAIL threshold of the diagnostics, in one place (docs/design.md#diagnostics).

Sources, as named in each comment:
- "docs/design.md#diagnostics" and the seed documents in ``shared/seeds/`` (000: fusion reference, 002: observation synthesis,
  004: strategy summary with the graduation results);
- the seed project's own code, which the seed design cite as ``tools/thresholds.py`` and ``tests/test_*.py``
  (public repository 9to5ninja-projects/groundthink; only the numbers are taken from it);
- "GroundThink": a choice made here where the seed design give none, or where a seed number had to be applied
  to a scale-free quantity. Each such place says why.

A ``Band`` maps a number to a status: PASS inside the pass interval, WARN inside the (wider) warn interval,
FAIL outside it, FAIL for NaN. Bounds are inclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
NA = "N/A"     # the suite does not apply to this model (e.g. balance on GPT-2)
INFO = "INFO"  # a measurement without a verdict (speed, per-token-type table)
STATUSES = (PASS, WARN, FAIL, NA, INFO)


@dataclass(frozen=True)
class Band:
    pass_lo: float = -math.inf
    pass_hi: float = math.inf
    warn_lo: float | None = None   # None: same as the pass bound (no WARN on that side)
    warn_hi: float | None = None
    source: str = ""

    def check(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return FAIL
        if self.pass_lo <= value <= self.pass_hi:
            return PASS
        warn_lo = self.pass_lo if self.warn_lo is None else self.warn_lo
        warn_hi = self.pass_hi if self.warn_hi is None else self.warn_hi
        return WARN if warn_lo <= value <= warn_hi else FAIL

    def describe(self) -> str:
        """Short text for the table: ``PASS [0.3, 3]; WARN [0.1, 10]``, ``PASS [2, 5]; WARN > 5``, ..."""
        text = f"PASS {_interval(self.pass_lo, self.pass_hi)}"
        lo = self.pass_lo if self.warn_lo is None else self.warn_lo
        hi = self.pass_hi if self.warn_hi is None else self.warn_hi
        below, above = lo < self.pass_lo, hi > self.pass_hi
        if lo == -math.inf and hi == math.inf:
            return text + ", else WARN"
        if below and above:
            return text + f"; WARN {_interval(lo, hi)}"
        if below:
            return text + (f"; WARN < {self.pass_lo:g}" if lo == -math.inf else f"; WARN [{lo:g}, {self.pass_lo:g})")
        if above:
            return text + (f"; WARN > {self.pass_hi:g}" if hi == math.inf else f"; WARN ({self.pass_hi:g}, {hi:g}]")
        return text


def _interval(lo: float, hi: float) -> str:
    if lo == -math.inf:
        return f"<= {hi:g}"
    if hi == math.inf:
        return f">= {lo:g}"
    return f"[{lo:g}, {hi:g}]"


# ---- S0-S4: state-space fundamentals -------------------------------------------------------------

# S1: seed project tests/test_tiny_graduation.py (S1 asserts 0.001 < state norm < 1000). GroundThink makes
# it a WARN, not a FAIL: a trained RWKV state legitimately reaches 2571 (the seed design, Obs. 13).
S1_STATE_NORM = Band(1e-3, 1e3, warn_lo=-math.inf, warn_hi=math.inf, source="seed test_tiny_graduation.py S1")

# S2: seed project test_tiny_graduation.py S2 asserts ||s_a - s_b|| > 0.01 for two different inputs.
# GroundThink applies 0.01 to the difference relative to the mean state norm: absolute state scales differ
# 100x between branches and model sizes (measured: Mamba's ssm state norm ~0.07 at hidden 32, ~0.7 at 128).
S2_RELATIVE_STATE_DIFF = Band(0.01, math.inf, source="seed test_tiny_graduation.py S2 (made relative)")

# S4 (state persistence): a sequence fed in two pieces with the state carried over must give the logits of
# the whole sequence (max |difference| / max |logit|). The seed's S3 determinism test used 1e-5 on states.
# GroundThink: measured 3e-7 on CPU float32 and 0.8-1.1 when the state is dropped instead of carried (tiny
# models at init, every kind of mixer), so PASS <= 1e-3 and WARN <= 1e-2 leave room for GPU kernels that
# sum in another order or in TF32 while a broken hand-off still FAILs by two orders of magnitude.
S4_CONTINUATION_ERROR = Band(0.0, 1e-3, warn_hi=1e-2, source="GroundThink (seed test_tiny_graduation.py S3: 1e-5)")
# S4's balance half: seed project test_tiny_graduation.py S4 warns when the RWKV/Mamba state variance
# ratio is > 100 or < 0.01 (the seed design, reports S4 WARN at 108,583x); it never fails on it.
S4_STATE_VARIANCE_RATIO = Band(0.01, 100.0, warn_lo=-math.inf, warn_hi=math.inf,
                               source="seed test_tiny_graduation.py S4; the seed design (108,583x = WARN)")

# ---- G1-G4: graduation gates ---------------------------------------------------------------------

# G2: docs/design.md#diagnostics / the seed design: initial output entropy in [2.0, 5.0] nats. Seed project tools/thresholds.py:
# below 2.0 = collapsed (FAIL), above 5.0 = WARN (the seed design, calls 5.46 "high but acceptable").
G2_INIT_ENTROPY = Band(2.0, 5.0, warn_hi=math.inf, source="docs/design.md#diagnostics; the seed design; seed tools/thresholds.py")

# G3: docs/design.md#diagnostics / the seed design: loss decreasing and grad norm 0.5-1.5. The seed design give no WARN band; GroundThink
# fails a loss that does not fall and warns on a grad norm outside 0.5-1.5.
G3_LOSS_RATIO = Band(-math.inf, 1.0 - 1e-9, source="docs/design.md#diagnostics (loss decreasing)")   # last / first window
G3_GRAD_NORM = Band(0.5, 1.5, warn_lo=-math.inf, warn_hi=math.inf, source="docs/design.md#diagnostics; the seed design")

# G4: docs/design.md#balance-metrics/§5: grad_ratio in [0.3, 3.0]. Seed project tools/thresholds.py: 0.1-10 = WARN. Seed 000
# Obs. 8 agrees: 0.10 was WARN, 0.08 FAIL.
G4_GRAD_RATIO = Band(0.3, 3.0, warn_lo=0.1, warn_hi=10.0, source="docs/design.md#balance-metrics-5; seed tools/thresholds.py")

# ---- D1-D4: diagnostics --------------------------------------------------------------------------

# D1: seed project tests/test_diagnostics.py: state norm at 512 tokens / at 64 tokens, PASS < 2, WARN 2-10,
# FAIL > 10 (the seed design: RWKV grew 2.5x = WARN). GroundThink measures at 8x / 1x the training length.
D1_NORM_GROWTH = Band(0.0, 2.0, warn_hi=10.0, source="seed test_diagnostics.py D1; the seed design")

# D2: seed project tests/test_diagnostics.py: a state whose variance across 10 inputs is below 1e-6 is
# frozen; PASS when both branches vary, WARN when one is frozen, FAIL when both are. GroundThink applies
# 1e-6 to the variance relative to the state's mean square (measured: absolute Mamba state variance at
# init is ~3e-6, so an absolute 1e-6 would call a healthy model nearly frozen).
D2_FROZEN_RELATIVE_VARIANCE = 1e-6   # seed test_diagnostics.py D2_VARIANCE_MIN, made relative

# D3: seed project tests/test_diagnostics.py D3: smaller branch's contribution < 0.1% FAIL, < 1% WARN
# (the seed design: Mamba 0.2% = WARN). GroundThink measures the contribution as ablation_share (docs/design.md#balance-metrics).
D3_MIN_ABLATION_SHARE = Band(0.01, 1.0, warn_lo=0.001, source="seed test_diagnostics.py D3; the seed design")

# D4: seed project tests/test_diagnostics.py D4: relative output change < 0.001 FAIL, < 0.01 WARN.
# GroundThink's D4 asks it of each branch: the relative change of the logits when that branch is zeroed.
D4_RELATIVE_OUTPUT_CHANGE = Band(0.01, math.inf, warn_lo=0.001, source="seed test_diagnostics.py D4")

# ---- further checks of docs/design.md#diagnostics -------------------------------------------------------------------

# Overfit one batch: seed project test_tiny_graduation.py (Task 43): 10 samples x 64 tokens, AdamW lr 1e-3,
# at most 500 steps, PASS below loss 0.5, WARN if the loss at least halved. Seed 004: 0.48 in 65 steps.
OVERFIT_SAMPLES, OVERFIT_SEQ_LEN, OVERFIT_LR, OVERFIT_MAX_STEPS = 10, 64, 1e-3, 500
OVERFIT_TARGET_LOSS = 0.5
OVERFIT_WARN_FRACTION = 0.5   # final <= 0.5 x initial -> WARN

# Beat a random model: seed project test_tiny_graduation.py (Task 44): val loss below ln(vocab), the loss
# of uniform guessing (the seed design: 37.9% better). GroundThink wants at least 1% better for a PASS, so a model
# at initialization (loss ~ ln V) cannot pass by noise.
BEAT_RANDOM_IMPROVEMENT = Band(0.01, math.inf, warn_lo=0.0, source="seed Task 44; margin: GroundThink")

# Checkpoint reload identical: the seed design (Task 46, "identical reload"): logits after a save/load round trip
# equal the original's exactly.
RELOAD_MAX_DIFF = Band(0.0, 0.0, source="the seed design Task 46")

# Component ablation: seed project tests/test_ablation.py (Task 58) with tools/thresholds.py
# 'd3_interaction_ratio': larger / smaller ablation loss increase, PASS <= 5, WARN <= 10, FAIL beyond
# (the seed design: RWKV 99.9% / Mamba 0.1% = IMBALANCE).
ABLATION_INTERACTION_RATIO = Band(0.0, 5.0, warn_hi=10.0, source="seed test_ablation.py; tools/thresholds.py")

# State evolution: no verdict (INFO). The seed's Task 59 rule (PASS if the state's entries spread more for
# random tokens than for one repeated token) was made on a proxy state. On the real RWKV-6 wkv state a
# repeated token adds the same k v^T at every step, a coherent sum whose entries spread *more* than a random
# input's, so the rule would WARN on healthy models (measured: ratio 0.29 for RWKV, 0.06 for Mamba on a tiny
# GF-MH after 20 trainer steps). GroundThink reports the numbers and the state-norm trajectory instead.

# Long context: seed project tools/thresholds.py 'lc_degradation_64_512' (Task 60): perplexity at the
# longest / at the training length, PASS <= 1.5, FAIL >= 3.0 (WARN between). Seed 004: 1.04x at 512.
LONG_CONTEXT_PPL_RATIO = Band(0.0, 1.5, warn_hi=3.0, source="seed tools/thresholds.py lc_degradation_64_512")
LONG_CONTEXT_FACTOR = 8   # the issue: loss by position up to at least 8x the training length
