"""Prefill + recurrent decoding, sampling, and text streaming for any registry model.

Recurrent models (RWKV-6 / Mamba-2 / hybrids) prefill the prompt with the chunked scans in pieces of
``prefill_chunk`` tokens, carrying their states, then advance one token per step: memory is the same at
any context length. The GPT baseline prefills in one call and decodes with its growing KV cache
(``position_offset`` keeps its learned positions right).
"""
from __future__ import annotations

import warnings
from typing import Iterator

import torch

from groundthink.inference.compile import COMPILE_MODES
from groundthink.inference.sampling import Sampler, check_sampling
from groundthink.inference.states import States, state_nbytes

DEFAULT_PREFILL_CHUNK = 2048


def has_attention(model) -> bool:
    return any("attention" in layer.branches for layer in model.layers)


class Decoder:
    """The running states of a batch of sequences: ``prefill(ids)`` once, then ``step(tokens)`` per token.

    ``cuda_graph=True`` replays each step as a CUDA graph (CUDA, attention-free models; captured at the
    first step). ``compile`` (``True`` = ``"default"``, or a mode of ``inference.compile.COMPILE_MODES``:
    ``"gemv"``, ``"max-autotune"``) also runs the step through ``torch.compile`` before capturing it, which
    fuses the many small kernels of a step. With a ``sampler`` (``inference.sampling.Sampler``) the graph
    also samples: ``sample_step(token) -> next token`` is then one replay and nothing else. If capture
    fails the decoder warns and stays eager; ``graph_error`` says why.
    """

    def __init__(self, model, prefill_chunk: int | None = None, cuda_graph: bool = False,
                 compile: bool | str = False, sampler: Sampler | None = None):
        self.model = model
        self.attention = has_attention(model)
        # A KV cache grows with the prompt either way, so attention models prefill in one call (SDPA's fused
        # causal kernel); recurrent ones in pieces, so prefill memory is flat in the prompt length too.
        self.prefill_chunk = prefill_chunk or (None if self.attention else DEFAULT_PREFILL_CHUNK)
        self.compile_mode = "default" if compile is True else (compile or None)
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile!r}; valid: True, False, {', '.join(COMPILE_MODES)}")
        self.want_graph = bool(cuda_graph or self.compile_mode) and not self.attention
        self.sampler = sampler
        self.graph = None
        self.graph_error: str | None = None
        self.states: States | None = None
        self.position = 0

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(ids, states=self.states, return_states=True, position_offset=self.position)
        self.states, self.position = out.states, self.position + ids.shape[1]
        return out.logits[:, -1]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Consume ``ids [B, T]`` (T >= 1); returns the logits after the last token, ``[B, V]``."""
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"prefill needs token ids of shape [batch, T >= 1], got {tuple(ids.shape)}")
        if self.graph is not None:  # continuing after graph decoding: take the states back
            self.states, self.graph = self.graph.states, None
        chunk = self.prefill_chunk or ids.shape[1]
        for start in range(0, ids.shape[1], chunk):
            logits = self._forward(ids[:, start:start + chunk])
        return logits

    def _capture(self) -> None:
        from groundthink.inference.cuda_graph import CUDAGraphStep

        self.want_graph = False  # one attempt
        try:
            self.graph = CUDAGraphStep(self.model, self.states, compile_mode=self.compile_mode,
                                       sampler=self.sampler)
        except Exception as err:  # a kernel that cannot be captured: decode eagerly instead
            self.graph, self.graph_error = None, f"{type(err).__name__}: {err}"
            warnings.warn(f"CUDA graph capture failed, decoding eagerly ({self.graph_error})")

    def _before_step(self, tokens: torch.Tensor) -> None:
        if self.states is None:
            raise RuntimeError("Decoder.step before prefill")
        if self.want_graph and tokens.is_cuda:
            self._capture()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume one token per sequence (``tokens [B]``); returns the next logits ``[B, V]``.

        With a CUDA graph the returned tensor is overwritten by the next step: copy it to keep it (and a
        graph captured with a sampler also draws a token, advancing the sampler's generator).
        """
        self._before_step(tokens)
        if self.graph is not None:
            self.position += 1
            return self.graph(tokens)
        return self._forward(tokens.view(-1, 1))

    @torch.no_grad()
    def sample_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume one token per sequence and return the next one, ``[B]``, drawn by the decoder's sampler.

        With a CUDA graph this is one replay (model and sampling); the returned tensor is the graph's
        buffer, overwritten by the next step, and passing it back in costs no copy.
        """
        if self.sampler is None:
            raise RuntimeError("Decoder.sample_step needs a Decoder built with a sampler")
        self._before_step(tokens)
        if self.graph is not None:
            self.position += 1
            return self.graph.sample_step(tokens)
        return self.sampler(self._forward(tokens.view(-1, 1)))

    def current_states(self) -> States:
        return self.graph.states if self.graph is not None else self.states

    def state_nbytes(self) -> int:
        return state_nbytes(self.current_states())


def check_positions(model, prompt_len: int, max_new_tokens: int) -> None:
    """Attention models have learned positions: prompt + generated tokens must fit in them."""
    limit = model.config.max_position_embeddings
    if model.pos_embed is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds this "
                         f"attention model's max_position_embeddings ({limit}); shorten the prompt or "
                         f"generate fewer tokens")


def make_generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def decode_tokens(decoder: Decoder, first: torch.Tensor, count: int, eos_token_id: int | None = None,
                  host: bool = False) -> Iterator[torch.Tensor]:
    """Yield ``first`` and the next ``count - 1`` tokens ``[B]`` drawn by ``decoder.sample_step``.

    Each step is queued on the device before the previous token is handed out, so a consumer that reads
    tokens on the host (streaming) overlaps with the next step. ``host=True`` yields CPU tensors, copied
    from a CUDA device without blocking the queued step (on CPU it changes nothing).
    """
    token = first
    for i in range(count):
        current, ready = token.clone(), None  # a CUDA graph overwrites its token buffer at the next step
        if host and current.is_cuda:
            current = current.to("cpu", non_blocking=True)  # lands in pinned memory: an asynchronous copy
            ready = torch.cuda.Event()
            ready.record()
        if i + 1 < count:
            token = decoder.sample_step(token)
        if ready is not None:
            ready.synchronize()  # waits for the copy, not for the step queued after it
        yield current
        if eos_token_id is not None and bool((current == eos_token_id).all()):
            return


def generate_tokens(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                    eos_token_id: int | None = None, prefill_chunk: int | None = None,
                    cuda_graph: bool = False, compile: bool | str = False,
                    host: bool = False) -> Iterator[torch.Tensor]:
    """Yield the sampled tokens ``[B]`` one at a time (streaming). ``prompt_ids: [B, T]`` or ``[T]``.

    Stops after ``max_new_tokens`` or when every sequence has produced ``eos_token_id``. ``host=True``
    yields CPU tensors (see ``decode_tokens``): what a streaming consumer wants.
    """
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ids = prompt_ids.view(1, -1) if prompt_ids.ndim == 1 else prompt_ids
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty: generation needs at least one prompt token")
    check_positions(model, ids.shape[1], max_new_tokens)
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()  # e.g. RWKV branch dropout is on in training mode
    try:
        sampler = Sampler(temperature, top_k, top_p, make_generator(seed, ids.device))
        decoder = Decoder(model, prefill_chunk=prefill_chunk, cuda_graph=cuda_graph, compile=compile,
                          sampler=sampler)
        with torch.no_grad():
            first = sampler(decoder.prefill(ids))
        yield from decode_tokens(decoder, first, max_new_tokens, eos_token_id, host)
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """Prompt followed by the generated tokens, ``[B, T + new]``. ``kwargs`` as ``generate_tokens``."""
    ids = prompt_ids.view(1, -1) if prompt_ids.ndim == 1 else prompt_ids
    new = list(generate_tokens(model, ids, max_new_tokens, **kwargs))
    return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids.clone()


class TextStream:
    """Turns tokens into text pieces as they come. A piece is held back while it ends in an incomplete UTF-8
    character (byte-level BPE can split one across tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = (self.tokenizer.decode(self.pending) if self.pending else ""), []
        return text


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int, device=None, **kwargs) -> Iterator[str]:
    """Yield the generated text piece by piece. ``tokenizer`` has ``encode(str) -> list[int]`` / ``decode``;
    ``kwargs`` as ``generate_tokens``."""
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    device = device or next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    stream = TextStream(tokenizer)
    for token in generate_tokens(model, ids, max_new_tokens, host=True, **kwargs):
        piece = stream.push(int(token[0]))
        if piece:
            yield piece
    rest = stream.flush()
    if rest:
        yield rest
