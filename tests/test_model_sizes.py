"""Sizes the layers cannot divide are one-line config errors that name the setting and values that work."""
import re

import pytest

from groundthink.errors import UserError
from groundthink.models import get_model
from groundthink.training.config import load_config


@pytest.mark.parametrize("model, overrides, setting", [
    ("GF-MH", ["model.rwkv_heads=3"], "rwkv_heads"),
    ("GF-MH", ["model.hidden_size=30"], "rwkv_heads"),
    ("RWKV6", ["model.rwkv_expand_k=0.3"], "hidden_size"),
    ("MAMBA2", ["model.mamba_head_dim=48"], "mamba_head_dim"),
    ("GF-MH", ["model.hidden_size=40", "model.rwkv_heads=1"], "mamba_head_dim"),
    ("GPT2", ["model.attn_heads=5"], "attn_heads"),
])
def test_a_size_that_does_not_divide_is_a_one_line_error_whose_fixes_work(model, overrides, setting):
    with pytest.raises(UserError) as caught:
        load_config(overrides=[f"model.key={model}", *overrides])
    message = str(caught.value)
    assert "\n" not in message and f"model.{setting}" in message
    fixes = message.split("; use ")[1].split(", or ")
    assert fixes
    for fix in fixes:  # every suggested alternative (one or more settings) builds the model
        settings = re.findall(r"(model\.\w+=[\d.]+)", fix)
        assert settings, fix
        config = load_config(overrides=[f"model.key={model}", *overrides, *settings])
        get_model(model, **config.model.settings)


def test_sizes_of_layers_a_model_does_not_use_are_not_checked():
    config = load_config(overrides=["model.key=GPT2", "model.hidden_size=30", "model.attn_heads=3"])
    assert get_model("GPT2", **config.model.settings).config.rwkv_heads == 2  # RWKV-6's heads do not divide 15


@pytest.mark.parametrize("override", ["model.dropout=1.0", "model.dropout=-0.1", "model.init=xavier",
                                      "model.mamba_expand=0", "model.rwkv_expand_v=0"])
def test_bad_dropout_init_and_expansions_are_one_line_errors(override):
    with pytest.raises(UserError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(overrides=[override])
