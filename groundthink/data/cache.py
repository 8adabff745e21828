"""On-disk cache of tokenized text (memory-mapped arrays) and of trained BPE tokenizers.

Token arrays are keyed by the sha256 of the text and the tokenizer's fingerprint, so the same text with
the same tokenizer is tokenized once, and anything else gets a new entry. Files are written atomically.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from groundthink.data.files import atomic_write_bytes
from groundthink.data.tokenizers import BPETokenizer


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def encode_cached(text: str, tokenizer, cache: Path | None) -> np.ndarray:
    """``tokenizer.encode(text)`` as a read-only array, memory-mapped from the cache when possible."""
    if cache is None:
        return encode_array(text, tokenizer)
    path = Path(cache) / "tokens" / f"{text_hash(text)}-{tokenizer.kind}-{tokenizer.fingerprint}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            pass  # an unreadable entry is rebuilt below
    tokens = encode_array(text, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, tokens)
    atomic_write_bytes(path, buffer.getvalue())
    return np.load(path, mmap_mode="r")


def encode_array(text: str, tokenizer) -> np.ndarray:
    if tokenizer.kind == "char":
        # Vectorized: map code points through a lookup table instead of a Python loop per character.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(int(codes.max()) + 1 if codes.size else 1, -1, dtype=np.int64)
        for ch, i in tokenizer.stoi.items():
            if ord(ch) < table.size:
                table[ord(ch)] = i
        ids = table[codes]
        if (ids < 0).any():
            tokenizer.encode(text)  # raises the UserError naming the unknown characters
        return ids.astype(token_dtype(tokenizer.vocab_size))
    # BPE: encode line groups in parallel (Hugging Face tokenizers uses its own threads).
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i:i + 256]) for i in range(0, len(lines), 256)]
    ids = [i for chunk in tokenizer.encode_batch(chunks) for i in chunk]
    return np.asarray(ids, dtype=token_dtype(tokenizer.vocab_size))


def cached_bpe(texts: list[str], vocab_size: int, cache: Path | None):
    """A byte-level BPE trained on ``texts`` — loaded from the cache when trained before on the same text."""
    key = hashlib.sha256("".join(text_hash(t) for t in texts).encode()).hexdigest()[:20]
    path = None if cache is None else Path(cache) / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    if path is not None and path.is_file():
        try:
            return BPETokenizer.from_json(path.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - a damaged cache entry is simply retrained
            pass
    tokenizer = BPETokenizer.train(texts, vocab_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(path)
    return tokenizer
