"""Tokenizers: character level, and byte-level BPE trained with Hugging Face ``tokenizers``.

Both expose ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``, ``save(path)`` and a
``fingerprint`` (a hash of what they map, used as part of the token-cache key). A run folder keeps its
tokenizer as ``tokenizer.json``; ``load_tokenizer`` reads either kind back. The BPE file is Hugging Face's
own format, so other tools can load it directly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from groundthink.data.files import atomic_write_text
from groundthink.errors import UserError

TOKENIZER_KINDS = ("char", "bpe")


class CharTokenizer:
    """One id per distinct character of the text it was built from (65 for Tiny Shakespeare)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted(set(text) - set(self.stoi))
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            raise UserError(f"text has {len(unknown)} characters that the run's character vocabulary lacks "
                            f"({shown}); use text with the same characters as the training data") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)

    def save(self, path) -> None:
        atomic_write_text(path, self.to_json())

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


class BPETokenizer:
    """Byte-level BPE (GPT-2 style): any UTF-8 text encodes, nothing is ever unknown."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer

    @classmethod
    def train(cls, texts, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids))

    def to_json(self) -> str:
        return self.hf.to_str()

    def save(self, path) -> None:
        atomic_write_text(path, self.to_json())

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def tokenizer_from_json(text: str):
    data = json.loads(text)
    if data.get("type") == "char":
        return CharTokenizer(data["chars"])
    return BPETokenizer.from_json(text)


def load_tokenizer(path):
    """Read a ``tokenizer.json`` written by either tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found; a run folder keeps its tokenizer as tokenizer.json")
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, Exception) as err:  # tokenizers raises its own Exception type
        raise UserError(f"tokenizer file {path} is unreadable ({str(err).splitlines()[0]}); "
                        f"restore it from the run that wrote it") from None

