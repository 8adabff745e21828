"""The recurrent cache that ``generate`` carries between steps: GroundThink's per-layer states plus the
number of tokens they have consumed. Its size is fixed for RWKV-6 / Mamba-2 layers (a KV cache, for the
GPT baseline, grows)."""
from __future__ import annotations

import torch

from groundthink.inference.states import map_states, state_nbytes


class GroundThinkCache:
    def __init__(self, states: list[dict], seen_tokens: int):
        self.states = states
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep the states of the chosen beams (in place, as Hugging Face caches do)."""
        self.states = map_states(lambda t: t.index_select(0, beam_idx.to(t.device)), self.states)

    def nbytes(self) -> int:
        return state_nbytes(self.states)

    def __repr__(self) -> str:
        return f"GroundThinkCache(layers={len(self.states)}, seen_tokens={self.seen_tokens}, bytes={self.nbytes()})"
