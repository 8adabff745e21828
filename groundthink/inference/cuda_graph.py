"""One decode step captured as a CUDA graph: at small widths a step is hundreds of tiny kernels, and
launching them dominates; replaying a graph launches them all at once.

Only for models without attention layers: their states have a fixed shape, so the step can write the new
states into the same buffers every time (a KV cache grows, so the GPT baseline decodes eagerly).
With ``compile=True`` the step is first compiled by ``torch.compile`` (inductor fuses its element-wise
ops into a few Triton kernels), then captured the same way.
"""
from __future__ import annotations

import torch

from groundthink.inference.states import States, copy_states_, map_states, state_tensors


class CUDAGraphStep:
    """``step(tokens [B]) -> logits [B, V]``; owns a copy of the states and updates it in place."""

    def __init__(self, model, states: States, warmup_steps: int = 3, compile: bool = False):
        self.model = model
        # Compiled (inductor fuses the element-wise ops), then captured like the eager step.
        self.run = torch.compile(self._step, dynamic=False) if compile else self._step
        device = state_tensors(states)[0].device
        self.tokens = torch.zeros(state_tensors(states)[0].shape[0], 1, dtype=torch.long, device=device)
        self.states = map_states(lambda t: t.clone(), states)
        # Warm up on a side stream (Triton autotuning, cuBLAS handles) as PyTorch's graph docs require;
        # the warmup steps advance the buffers, which are reset below.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self.run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.run()
        copy_states_(self.states, states)

    def _step(self) -> torch.Tensor:
        out = self.model(self.tokens, states=self.states, return_states=True)
        copy_states_(self.states, out.states)
        return out.logits[:, -1]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens.view(-1, 1))
        self.graph.replay()
        return self.logits
