"""Data: text sources, tokenizers, the token cache and the batch sampler.

``load_data(config.data)`` is the one entry point: it returns the train / validation token arrays and the
tokenizer (built from the training text, or the one passed in when a run is resumed or evaluated).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from groundthink.data.cache import cached_bpe, encode_cached
from groundthink.data.config import DataConfig
from groundthink.data.sampler import RandomWindowSampler, check_window, eval_windows
from groundthink.data.sources import NAMED_SOURCES, Corpus, cache_root, load_corpus
from groundthink.data.synthetic import RecallTask
from groundthink.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer


@dataclass
class DataBundle:
    train: np.ndarray           # token ids (memory-mapped from the cache)
    val: np.ndarray
    tokenizer: CharTokenizer | BPETokenizer
    name: str                   # the source, for logs and the summary
    val_text: str = ""
    synthetic: bool = False

    def task(self, seq_len: int, n_windows: int = 64):
        """The source's own metric (recall accuracy for the generated corpus), or None."""
        if not self.synthetic:
            return None
        return RecallTask(self.val_text, self.tokenizer, seq_len, n_windows)


def load_data(data_config: DataConfig, tokenizer=None) -> DataBundle:
    corpus = load_corpus(data_config)
    train_text, val_text = split_corpus(corpus, data_config.val_fraction)
    if tokenizer is None:
        tokenizer = build_tokenizer(data_config, train_text, val_text)
    cache = cache_root(data_config)
    train = encode_cached(train_text, tokenizer, cache)
    val = encode_cached(val_text, tokenizer, cache)
    return DataBundle(train, val, tokenizer, corpus.name, val_text, corpus.synthetic)


def split_corpus(corpus: Corpus, val_fraction: float) -> tuple[str, str]:
    """The source's own split, or the first (1 - val_fraction) of the text for training, the rest for validation."""
    if corpus.val_text is not None:
        return corpus.train_text, corpus.val_text
    cut = int(len(corpus.train_text) * (1.0 - val_fraction))
    return corpus.train_text[:cut], corpus.train_text[cut:]


def build_tokenizer(data_config: DataConfig, train_text: str, val_text: str):
    if data_config.tokenizer == "char":
        # The symbol set of all the text, so validation never meets an unknown character.
        return CharTokenizer.from_text(train_text + val_text)
    return cached_bpe([train_text], data_config.vocab_size, cache_root(data_config))


__all__ = ["DataBundle", "DataConfig", "RandomWindowSampler", "RecallTask", "CharTokenizer", "BPETokenizer",
           "NAMED_SOURCES", "load_data", "load_tokenizer", "check_window", "eval_windows", "split_corpus"]
