"""GroundThink tokenizers as Hugging Face ``PreTrainedTokenizerFast`` (saved as ``tokenizer.json``).

Byte-level BPE is already a ``tokenizers.Tokenizer``; the character tokenizer becomes one: a word-level
vocabulary of single characters, every character split off on its own, and a decoder that joins them.
"""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def char_backend(chars: list[str]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` with id i = ``chars[i]``, equal to GroundThink's character tokenizer."""
    tok = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(chars)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every code point
    tok.decoder = decoders.Fuse()  # join with no separator
    return tok


def backend_tokenizer(tokenizer) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` for a GroundThink tokenizer (char or BPE) or a ``tokenizers.Tokenizer``."""
    if isinstance(tokenizer, Tokenizer):
        return Tokenizer.from_str(tokenizer.to_str())
    if isinstance(getattr(tokenizer, "hf", None), Tokenizer):          # BPETokenizer
        return Tokenizer.from_str(tokenizer.hf.to_str())
    if getattr(tokenizer, "chars", None) is not None:                   # CharTokenizer
        return char_backend(list(tokenizer.chars))
    raise TypeError(f"cannot convert {type(tokenizer).__name__} to a Hugging Face tokenizer: expected a "
                    f"GroundThink char / BPE tokenizer or a tokenizers.Tokenizer")


def single_token(backend: Tokenizer, text: str) -> str | None:
    """The token that encodes ``text`` alone, if there is exactly one."""
    try:
        ids = backend.encode(text).ids
    except Exception:  # tokenizers' own error type: text outside a character vocabulary
        return None
    return backend.id_to_token(ids[0]) if len(ids) == 1 else None


def to_hf_tokenizer(tokenizer, eos_token: str | None = None, bos_token: str | None = None
                    ) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` that encodes and decodes exactly as ``tokenizer`` does.

    Special tokens are only *named*, never added: encode gives the same ids as GroundThink's tokenizer.
    GroundThink's tokenizers have none, but tools need a BOS (lm-eval conditions empty contexts on it);
    without ``bos_token`` the newline token is named BOS when there is one — the separator of the
    training text, so "after a newline" is what a start of text means to the model. ``eos_token`` stops
    ``generate``; it is unset unless given.
    """
    backend = backend_tokenizer(tokenizer)
    bos_token = bos_token if bos_token is not None else single_token(backend, "\n")
    special = {}
    for name, token in (("bos_token", bos_token), ("eos_token", eos_token)):
        if token is not None:
            if backend.token_to_id(token) is None:
                raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
            special[name] = token
    if eos_token is not None:
        special["pad_token"] = eos_token
    # No space clean-up: decode must return the exact text (" ." stays " .").
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                   model_max_length=int(1e30), **special)
