"""One decode step captured as a CUDA graph: at small widths a step is hundreds of tiny kernels, and
launching them dominates; replaying a graph launches them all at once.

Only for models without attention layers: their states have a fixed shape, so the step can write the new
states into the same buffers every time (a KV cache grows, so the GPT baseline decodes eagerly).
With a ``compile_mode`` the model part of the step is first compiled by ``torch.compile`` (see
``inference/compile.py``), then captured the same way. With a ``sampler`` the graph also samples the next
token and feeds it to its own next replay, so a decode loop never leaves the device.
"""
from __future__ import annotations

import torch

from groundthink.inference.states import States, copy_states_, map_states, state_tensors


class DecodeStep:
    """The work of one token over fixed buffers: ``tokens [B, 1]`` -> ``(logits [B, V], next token [B] or
    None)``, states updated in place. Device-agnostic: the CUDA graph captures it, and ``--count-ops``
    counts its ops on CPU."""

    def __init__(self, model, states: States, sampler=None, compile_mode: str | None = None):
        self.model, self.sampler = model, sampler
        device = state_tensors(states)[0].device
        self.tokens = torch.zeros(state_tensors(states)[0].shape[0], 1, dtype=torch.long, device=device)
        self.states = map_states(lambda t: t.clone(), states)
        if compile_mode:
            from groundthink.inference.compile import compile_step

            self.model_step = compile_step(self._model_step, compile_mode)
        else:
            self.model_step = self._model_step

    def _model_step(self) -> torch.Tensor:
        out = self.model(self.tokens, states=self.states, return_states=True)
        copy_states_(self.states, out.states)
        return out.logits[:, -1]

    def __call__(self):
        logits = self.model_step()
        if self.sampler is None:
            return logits, None
        token = self.sampler(logits)
        self.tokens.copy_(token.view(-1, 1))  # the next step's input, without a trip through the host
        return logits, token


class CUDAGraphStep:
    """``step(tokens [B]) -> logits [B, V]`` / ``sample_step(tokens) -> next tokens [B]``; owns a copy of the
    states and updates it in place. Returned tensors are overwritten by the next replay."""

    def __init__(self, model, states: States, warmup_steps: int = 3, compile_mode: str | None = None,
                 sampler=None):
        self.step_fn = DecodeStep(model, states, sampler, compile_mode)
        self.states, self.tokens = self.step_fn.states, self.step_fn.tokens
        device = self.tokens.device
        generator = getattr(sampler, "generator", None) if sampler is not None and sampler.random else None
        rng_state = generator.get_state() if generator is not None else None
        # Warm up on a side stream (Triton autotuning, cuBLAS handles) as PyTorch's graph docs require;
        # the warmup steps advance the buffers (and the sampler's generator), which are reset below.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self.step_fn()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None:  # replays draw from (and advance) the sampler's own generator
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.logits, self.next_token = self.step_fn()
        copy_states_(self.states, states)
        if generator is not None:
            generator.set_state(rng_state)

    def _feed(self, tokens: torch.Tensor) -> None:
        if tokens is not self.next_token:  # the graph already fed its own last token back
            self.tokens.copy_(tokens.view(-1, 1))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self._feed(tokens)
        self.graph.replay()
        return self.logits

    def sample_step(self, tokens: torch.Tensor) -> torch.Tensor:
        self._feed(tokens)
        self.graph.replay()
        return self.next_token
