"""``groundthink models``: the registry as a table."""
from __future__ import annotations

from groundthink.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the registered models with parameter counts")
    parser.add_argument("--vocab-size", "--vocab_size", type=int, default=65)
    parser.add_argument("--hidden-size", "--hidden_size", type=int, default=128)
    parser.add_argument("--n-layers", "--n_layers", type=int, default=8)
    parser.set_defaults(func=run)


def run(args) -> int:
    from groundthink.models.registry import models_table

    try:
        print(models_table(vocab_size=args.vocab_size, hidden_size=args.hidden_size, n_layers=args.n_layers))
    except ValueError as err:
        raise UserError(str(err)) from None
    return 0
