"""``GroundThinkConfig``: a Hugging Face config that carries every ``ModelConfig`` field under its own name."""
from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

from groundthink.models.config import ModelConfig

MODEL_FIELDS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


class GroundThinkConfig(PretrainedConfig):
    model_type = "groundthink"
    # Names other Hugging Face tools look for.
    attribute_map = {"num_hidden_layers": "n_layers"}

    def __init__(self, tie_word_embeddings: bool = True, use_cache: bool = True, **kwargs):
        for name, default in MODEL_FIELDS.items():
            setattr(self, name, kwargs.pop(name, default))
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs) -> GroundThinkConfig:
        return cls(**config.to_dict(), **kwargs)

    def to_model_config(self) -> ModelConfig:
        """The ``ModelConfig`` (validated); fields unknown to this version of GroundThink are refused."""
        return ModelConfig.from_dict({name: getattr(self, name) for name in MODEL_FIELDS})
