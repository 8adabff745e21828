"""Models: the parallel hybrid, its fusion variants and the baselines, behind one registry."""
from groundthink.models.config import LAYER_KINDS, ModelConfig
from groundthink.models.model import GroundThinkLM, LMOutput
from groundthink.models.params import count_parameters
from groundthink.models.registry import REGISTRY, get_config, get_model, list_models

__all__ = ["GroundThinkLM", "LMOutput", "ModelConfig", "LAYER_KINDS", "REGISTRY",
           "count_parameters", "get_config", "get_model", "list_models"]
