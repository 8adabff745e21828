"""Hugging Face integration: ``GroundThinkConfig`` / ``GroundThinkForCausalLM`` registered with ``AutoConfig``
and ``AutoModelForCausalLM``, a recurrent cache for ``generate``, tokenizer conversion, and export.

Needs ``transformers`` (``pip install -e ".[hf]"``); the rest of GroundThink does not import this package.
"""
try:
    import transformers  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    from groundthink.errors import UserError

    raise UserError("the Hugging Face integration needs transformers: pip install -e \".[hf]\"") from err

from transformers import AutoConfig, AutoModelForCausalLM

from groundthink.hf.cache import GroundThinkCache
from groundthink.hf.configuration import GroundThinkConfig
from groundthink.hf.export import export_hf
from groundthink.hf.modeling import GroundThinkForCausalLM
from groundthink.hf.tokenizer import to_hf_tokenizer

AutoConfig.register(GroundThinkConfig.model_type, GroundThinkConfig)
AutoModelForCausalLM.register(GroundThinkConfig, GroundThinkForCausalLM)

__all__ = ["GroundThinkConfig", "GroundThinkForCausalLM", "GroundThinkCache", "export_hf", "to_hf_tokenizer"]
