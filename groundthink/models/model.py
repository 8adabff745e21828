"""The language model: token embedding -> N blocks -> RMSNorm -> head tied to the embedding."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from groundthink.models.blocks import BLOCKS
from groundthink.models.config import ModelConfig
from groundthink.ops.norms import RMSNorm
from groundthink.ops.precision import upcast


@dataclass
class LMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    # Per layer, per branch: {"rwkv6": RWKV6State, "mamba2": Mamba2State} or {"attention": KVCache}.
    states: list[dict] | None = None


class GroundThinkLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        nn.init.normal_(self.embed.weight, std=0.02)
        kinds = config.layer_kinds()
        # Only attention needs positions (RWKV-6 and Mamba-2 are ordered by their recurrence).
        self.pos_embed = None
        if "A" in kinds:
            self.pos_embed = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            nn.init.normal_(self.pos_embed.weight, std=0.02)
        self.layers = nn.ModuleList([BLOCKS[kind](config) for kind in kinds])
        self.norm_out = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.embed_dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        if config.init == "gpt2":
            gpt2_init(self)

    # ----------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                states: list[dict] | None = None, return_states: bool = False,
                position_offset: int = 0) -> LMOutput:
        """``input_ids: [B, T]``. With ``states`` (from a previous call) the sequence continues from them.

        ``position_offset`` is only used by attention layers (the number of tokens already consumed).
        """
        batch, seq_len = input_ids.shape
        # Checked on CPU only: on CUDA the check would sync the host every call (and break CUDA graphs).
        if not input_ids.is_cuda and input_ids.numel() \
                and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            end = position_offset + seq_len
            if end > self.config.max_position_embeddings:
                raise ValueError(f"sequence reaches position {end} but max_position_embeddings is "
                                 f"{self.config.max_position_embeddings}; raise model.max_position_embeddings")
            x = x + self.pos_embed(torch.arange(position_offset, end, device=input_ids.device))
        x = self.embed_dropout(x)
        new_states = []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer(x, None if states is None else states[i])
            new_states.append(layer_state)
        logits = self.head(self.norm_out(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(upcast(logits).view(-1, logits.size(-1)), targets.reshape(-1))
        return LMOutput(logits=logits, loss=loss, states=new_states if return_states else None)

    # ----------------------------------------------------------------------------------------------
    @contextmanager
    def recording(self):
        """Within this context every block records gate share and raw branch activation variance."""
        for layer in self.layers:
            layer.record, layer.last_stats = True, {}
        try:
            yield [layer.last_stats for layer in self.layers]
        finally:
            for layer in self.layers:
                layer.record = False

    @contextmanager
    def ablated(self, branch: str, layers: list[int] | None = None):
        """Zero one branch's output (``"rwkv6"`` or ``"mamba2"``) in the given layers (default: all)."""
        chosen = range(len(self.layers)) if layers is None else layers
        touched = [self.layers[i] for i in chosen if branch in self.layers[i].branches]
        for layer in touched:
            layer.ablate.add(branch)
        try:
            yield
        finally:
            for layer in touched:
                layer.ablate.discard(branch)

    def fusions(self) -> list[nn.Module]:
        """The fusion module of every parallel hybrid block (empty for baselines and sequential stacks)."""
        return [layer.fusion for layer in self.layers if hasattr(layer, "fusion")]

    def branch_parameters(self, branch: str):
        """Parameters of one branch kind (``rwkv6`` / ``mamba2`` / ``attention``) across all layers."""
        return [p for n, p in self.named_parameters() if f".{branch}." in n]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# The projections that write into the residual stream (GPT-2's c_proj of attention and MLP).
RESIDUAL_PROJECTIONS = ("attention.o_proj", "ffn.down")


@torch.no_grad()
def gpt2_init(model: GroundThinkLM) -> None:
    """GPT-2's initialization, as nanoGPT and Hugging Face apply it, for the GPT-2 parts of any model.

    Every linear of attention and FFN: normal(0, 0.02), biases zero; the residual output projections:
    normal(0, 0.02 / sqrt(2 * n_layers)) (two residual adds per block). The embeddings already start at
    normal(0, 0.02) under either init; RWKV-6, Mamba-2 and the fusion keep their own initialization.
    """
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    for layer in model.layers:
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[0] in ("attention", "ffn"):
                nn.init.normal_(module.weight, std=residual_std if name in RESIDUAL_PROJECTIONS else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
