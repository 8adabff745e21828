"""``groundthink models``: the registry as a table, counted at a stated shape.

The shape is the registry's defaults (the seed design's char config), changed as for ``groundthink train``: a
``--config`` YAML's model section, then the size flags, then ``--set model.KEY=VALUE`` (same parsing and
validation). The header line names every field the counts depend on.
"""
from __future__ import annotations

from groundthink.errors import UserError

SIZE_FLAGS = ("vocab_size", "hidden_size", "n_layers")


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the registered models with parameter counts")
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="count at this run config's model settings (presets in configs/)")
    parser.add_argument("--vocab-size", "--vocab_size", type=int, default=None, help="default 65")
    parser.add_argument("--hidden-size", "--hidden_size", type=int, default=None, help="default 128")
    parser.add_argument("--n-layers", "--n_layers", type=int, default=None, help="default 8")
    parser.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE",
                        help="any model setting, as for groundthink train (repeatable)")
    parser.set_defaults(func=run)


def model_settings(args) -> dict:
    """The ModelConfig fields to count at, resolved and validated as ``groundthink train`` does."""
    from groundthink.models.registry import PER_KEY_FIELDS
    from groundthink.training.config import Config, ModelSection, load_config

    for item in args.set:
        if not item.strip().startswith("model."):
            raise UserError(f"--set {item!r}: groundthink models counts parameters, so only model settings "
                            f"apply; use --set model.KEY=VALUE (e.g. --set model.hidden_size=64)")
    flags = [f"model.{name}={getattr(args, name)}" for name in SIZE_FLAGS if getattr(args, name) is not None]
    # The registry's defaults underneath, not groundthink train's small default model.
    config = load_config(args.config, [*flags, *args.set], base=Config(model=ModelSection(settings={})))
    # A run's config.yaml names its own key's fusion / gate / layers: every key here keeps its own, unless
    # --set names them.
    named = {item.split("=", 1)[0].strip()[len("model."):] for item in args.set}
    settings = {name: value for name, value in config.model.settings.items()
                if name not in PER_KEY_FIELDS or name in named}
    if "vocab_size" not in settings and args.config and config.data.tokenizer == "bpe":
        settings["vocab_size"] = config.data.vocab_size  # the size the run's BPE tokenizer is trained to
    return settings


def run(args) -> int:
    from groundthink.models.registry import models_table

    settings = model_settings(args)
    try:
        print(models_table(**settings))
    except ValueError as err:
        raise UserError(str(err)) from None
    return 0
