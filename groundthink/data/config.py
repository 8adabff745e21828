"""The ``data`` section of a run's configuration."""
from __future__ import annotations

from dataclasses import dataclass

from groundthink.data.tokenizers import TOKENIZER_KINDS


@dataclass
class DataConfig:
    # "recall" (offline generated corpus, the default), "shakespeare", "wikitext-2", "wikitext-103",
    # or a path to a text file / a folder of .txt files.
    source: str = "recall"
    # A separate validation file; without it the source's own split is used, or the last 10% of the text.
    val_source: str | None = None
    tokenizer: str = "char"          # "char" or "bpe" (byte-level BPE trained on the training text)
    vocab_size: int = 16000          # BPE only
    val_fraction: float = 0.1
    cache_dir: str | None = None     # default: $GROUNDTHINK_CACHE or ~/.cache/groundthink
    # The generated recall corpus (source "recall"): its seed, size in characters, pairs per record. One or
    # two pairs: a small model learns the recall within the 300 steps of the default run (measured: ~80% of
    # the answers right at step 200, from 10% chance); every extra pair makes it much slower to appear.
    seed: int = 0
    recall_chars: int = 1_000_000
    recall_min_pairs: int = 1
    recall_max_pairs: int = 2

    def validate(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"data.tokenizer {self.tokenizer!r} is unknown; valid: {', '.join(TOKENIZER_KINDS)}")
        if not 256 < self.vocab_size <= 1_000_000:
            raise ValueError(f"data.vocab_size must be in (256, 1000000] for byte-level BPE, got {self.vocab_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.source:
            raise ValueError("data.source is empty; pass a file, a folder, or one of: recall, shakespeare, "
                             "wikitext-2, wikitext-103")
        if self.recall_chars < 1000:
            raise ValueError(f"data.recall_chars must be at least 1000, got {self.recall_chars}")
        if not 1 <= self.recall_min_pairs <= self.recall_max_pairs <= 26:
            raise ValueError(f"data.recall_min_pairs / recall_max_pairs must satisfy 1 <= min <= max <= 26, "
                             f"got {self.recall_min_pairs} / {self.recall_max_pairs}")
