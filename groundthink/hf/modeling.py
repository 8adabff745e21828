"""``GroundThinkForCausalLM``: any registry model as a Hugging Face ``PreTrainedModel`` with generation.

The GroundThink model sits unchanged under ``.model`` (parameter names ``model.<ours>``), the head stays tied
to the embedding, and ``generate`` carries a ``GroundThinkCache`` under the kwarg ``state`` (the name
Hugging Face's RWKV uses; ``generate`` knows it in transformers 4.45 through 5.x), so decoding advances the
recurrent states one token at a time instead of re-reading the sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from groundthink.hf.cache import GroundThinkCache
from groundthink.hf.configuration import GroundThinkConfig
from groundthink.models.model import GroundThinkLM

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
_TIED = {"model.head.weight": "model.embed.weight"}
# transformers 5 maps tied target -> source; 4.x lists the targets.
_TIED_KEYS = _TIED if TRANSFORMERS_MAJOR >= 5 else list(_TIED)


@dataclass
class GroundThinkCausalLMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    state: GroundThinkCache | None = None


def check_attention_mask(attention_mask: torch.Tensor | None) -> bool:
    """True when some positions are padding. Only right padding is allowed: a recurrent state cannot skip
    tokens in the middle, but positions after a sequence's end never influence its earlier logits."""
    if attention_mask is None or bool(attention_mask.all()):
        return False
    mask = attention_mask.bool()
    # Right padding: once a row turns 0 it stays 0, i.e. the mask never increases along the sequence.
    if bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError("GroundThink models support right padding only (a recurrent state cannot skip "
                         "padding): set tokenizer.padding_side = 'right' or use batch size 1")
    return True


class GroundThinkPreTrainedModel(PreTrainedModel):
    config_class = GroundThinkConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["ParallelHybridBlock", "RWKV6Block", "Mamba2Block", "AttentionBlock"]
    supports_gradient_checkpointing = False
    _is_stateful = True  # no assisted decoding / cache cropping: the states cannot be rolled back

    def _init_weights(self, module):
        # GroundThink's modules initialize themselves (FLA's schemes); Hugging Face's generic init must not
        # overwrite them. Loading replaces every parameter anyway.
        pass


class GroundThinkForCausalLM(GroundThinkPreTrainedModel, GenerationMixin):
    _tied_weights_keys = _TIED_KEYS

    def __init__(self, config: GroundThinkConfig):
        super().__init__(config)
        self.model = GroundThinkLM(config.to_model_config())
        self.post_init()

    @classmethod
    def from_groundthink(cls, model: GroundThinkLM, **config_kwargs) -> GroundThinkForCausalLM:
        """Wrap a trained GroundThink model (its weights are copied exactly)."""
        hf_model = cls(GroundThinkConfig.from_model_config(model.config, **config_kwargs))
        hf_model.model.load_state_dict(model.state_dict())
        return hf_model.to(next(model.parameters()).device)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model.own_cpu_memory()
        return loaded

    @torch.no_grad()
    def own_cpu_memory(self) -> None:
        """Move CPU parameters out of the memory-mapped safetensors file into fresh allocations.

        Tensors mapped from the file sit at arbitrary offsets; CPU kernels vectorize differently at
        unaligned addresses, which changes results in the last bit. Fresh (64-byte aligned) copies make a
        loaded model compute exactly what the saved one did, and free the file.
        """
        for param in self.parameters():  # each once: the tied head shares the embedding's Parameter
            if param.device.type == "cpu" and param.data_ptr() % 64:
                param.data = param.data.clone()

    # Hugging Face's embedding accessors (resize, tying).
    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.head

    def set_output_embeddings(self, value):
        self.model.head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is a GroundThinkCache, never a DynamicCache

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                state: GroundThinkCache | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> GroundThinkCausalLMOutput | tuple:
        """Causal LM forward. ``state`` continues from earlier tokens; ``labels`` are shifted inside (HF
        convention, -100 ignored). Returns the new ``state`` when ``use_cache``."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("GroundThinkForCausalLM takes input_ids (inputs_embeds is not supported)")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        padded = check_attention_mask(attention_mask)
        seen = 0 if state is None else state.seen_tokens
        out = self.model(input_ids, states=None if state is None else state.states,
                         return_states=use_cache and not padded, position_offset=seen)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(out.logits[:, :-1].float().reshape(-1, out.logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(out.logits.device), ignore_index=-100)
        new_state = GroundThinkCache(out.states, seen + input_ids.shape[1]) if out.states is not None else None
        return_dict = getattr(self.config, "return_dict", True) if return_dict is None else return_dict
        if not return_dict:
            return tuple(v for v in (loss, out.logits, new_state) if v is not None)
        return GroundThinkCausalLMOutput(loss=loss, logits=out.logits, state=new_state)

    # -- generation -------------------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids, state: GroundThinkCache | None = None,
                                      attention_mask=None, inputs_embeds=None, use_cache=None, **kwargs):
        if inputs_embeds is not None and state is None:
            raise ValueError("GroundThinkForCausalLM.generate takes input_ids (inputs_embeds is not supported)")
        inputs = {"use_cache": use_cache}
        if state is not None:
            # Only the tokens the states have not consumed yet (one per step while decoding).
            inputs.update(input_ids=input_ids[:, state.seen_tokens:], state=state)
        else:
            inputs.update(input_ids=input_ids, attention_mask=attention_mask)
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                                   num_new_tokens)
        model_kwargs["state"] = outputs.get("state")
        if TRANSFORMERS_MAJOR < 5:
            # 4.x beam search reorders (and generate returns) only model_kwargs["past_key_values"]: the same
            # object, so reordering it in place reorders the states we read back from "state".
            model_kwargs["past_key_values"] = model_kwargs["state"]
        return model_kwargs

    def _reorder_cache(self, state: GroundThinkCache | None, beam_idx: torch.LongTensor):
        if state is not None:  # None with use_cache=False
            state.reorder_cache(beam_idx)
        return state
