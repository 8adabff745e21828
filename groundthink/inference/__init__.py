"""Generation: prefill a prompt with the chunked scans, then one recurrent step per token (constant memory).

The GPT baseline decodes with its KV cache. ``generate`` / ``generate_tokens`` / ``stream_text`` are the
entry points; ``Decoder`` is the stateful piece underneath (prefill, step, optional CUDA graph).
"""
from groundthink.inference.generate import Decoder, generate, generate_tokens, stream_text
from groundthink.inference.sampling import sample_next_token
from groundthink.inference.states import state_nbytes

__all__ = ["Decoder", "generate", "generate_tokens", "stream_text", "sample_next_token", "state_nbytes"]
