"""Next-token sampling: temperature, top-k, top-p (nucleus), with an optional seeded generator."""
from __future__ import annotations

import torch


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` naming the bad setting and its valid range."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer (or unset), got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or unset), got {top_p}")


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``logits: [B, V]`` -> token ids ``[B]``. ``temperature == 0`` is greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens before it already hold top_p of the mass (the best one always stays).
        outside = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs [B, V]``: ``torch.multinomial(probs, 1)``'s own algorithm for one sample
    (argmax of ``probs / q`` with ``q ~ Exp(1)``: the same draws from the same generator), written out
    because ``torch.multinomial`` checks its input on the host (a sync per token that a CUDA graph cannot
    capture)."""
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / noise).argmax(dim=-1)


class Sampler:
    """``sampler(logits [B, V]) -> tokens [B]`` with fixed settings: what a decode step captures with it."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None):
        check_sampling(temperature, top_k, top_p)
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return sample_next_token(logits, self.temperature, self.top_k, self.top_p, self.generator)

    @property
    def random(self) -> bool:
        """Whether it draws random numbers (a CUDA graph must then own its generator's state)."""
        return not (self.temperature == 0 or self.top_k == 1)
