"""On-disk cache of tokenized text (memory-mapped arrays) and of trained BPE tokenizers.

Token arrays are keyed by the sha256 of the text and the tokenizer's fingerprint, so the same text with
the same tokenizer is tokenized once, and anything else gets a new entry. Beside each entry a small JSON
record (``NAME.record.json``) says what it was made from and what it holds: for token arrays the text's
length and hash, the tokenizer, the vocabulary size, the number of ids and their sha256; for tokenizers the
texts, the vocabulary size and the file's sha256. An entry that does not match its record (damaged,
truncated, edited, or written by an older version without one) is rebuilt, with one warning line naming
the file, so training never reads wrong ids. Files are written atomically, the record after the entry.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from groundthink.data.files import atomic_write_bytes, atomic_write_text
from groundthink.data.tokenizers import BPETokenizer

RECORD_VERSION = 1


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def encode_cached(text: str, tokenizer, cache: Path | None) -> np.ndarray:
    """``tokenizer.encode(text)`` as a read-only array, memory-mapped from the cache when possible."""
    if cache is None:
        return encode_array(text, tokenizer)
    path = Path(cache) / "tokens" / f"{text_hash(text)}-{tokenizer.kind}-{tokenizer.fingerprint}.npy"
    expected = {"version": RECORD_VERSION, "text_chars": len(text),
                "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "tokenizer": f"{tokenizer.kind}-{tokenizer.fingerprint}", "vocab_size": tokenizer.vocab_size,
                "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name}
    if path.is_file() or record_path(path).is_file():
        tokens, problem = load_tokens(path, expected)
        if problem is None:
            return tokens
        warn_rebuilt("token cache entry", path, problem)
    tokens = encode_array(text, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, tokens)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_text(record_path(path), json.dumps(
        {**expected, "n_tokens": int(tokens.size), "ids_sha256": ids_sha256(tokens)}, indent=1) + "\n")
    return np.load(path, mmap_mode="r")


def record_path(entry: Path) -> Path:
    return entry.with_name(f"{entry.stem}.record.json")


def ids_sha256(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens).data).hexdigest()


def read_record(entry: Path, expected: dict) -> tuple[dict | None, str | None]:
    """The JSON record beside a cache entry when it has the ``expected`` fields, else None and why not."""
    try:
        record = json.loads(record_path(entry).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"has no record {record_path(entry).name} (an older version or an interrupted write made it)"
    except (OSError, ValueError) as err:
        return None, f"has an unreadable record {record_path(entry).name} ({type(err).__name__})"
    if not isinstance(record, dict):
        return None, f"has an unreadable record {record_path(entry).name} (not a JSON object)"
    for key, value in expected.items():
        if record.get(key) != value:
            return None, f"was made for {key} {record.get(key)!r}, this run has {value!r}"
    return record, None


def load_tokens(path: Path, expected: dict) -> tuple[np.ndarray | None, str | None]:
    """The cached ids memory-mapped, or None and why the entry cannot be trusted (then it is rebuilt)."""
    record, problem = read_record(path, expected)
    if problem:
        return None, problem
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        return None, f"is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if tokens.ndim != 1 or tokens.dtype != np.dtype(expected["dtype"]):
        return None, f"holds a {tokens.dtype} array of shape {tokens.shape}, not {expected['dtype']} ids"
    if tokens.size != record.get("n_tokens"):
        return None, f"holds {tokens.size} ids, its record says {record.get('n_tokens')}"
    if tokens.size and int(tokens.max()) >= expected["vocab_size"]:
        return None, f"holds id {int(tokens.max())}, outside the vocabulary of {expected['vocab_size']}"
    if ids_sha256(tokens) != record.get("ids_sha256"):
        return None, "holds ids whose sha256 differs from its record's"
    return tokens, None


def warn_rebuilt(what: str, path: Path, problem: str) -> None:
    print(f"warning: {what} {path} {problem}; rebuilding it", file=sys.stderr, flush=True)


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
    if cache is None:
        return BPETokenizer.train(texts, vocab_size)
    path = Path(cache) / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    expected = {"version": RECORD_VERSION, "vocab_size": vocab_size, "texts": key}
    if path.is_file() or record_path(path).is_file():
        tokenizer, problem = load_bpe(path, expected)
        if problem is None:
            return tokenizer
        warn_rebuilt("tokenizer cache entry", path, problem)
    tokenizer = BPETokenizer.train(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = tokenizer.to_json()
    atomic_write_text(path, content)
    atomic_write_text(record_path(path), json.dumps(
        {**expected, "json_sha256": hashlib.sha256(content.encode("utf-8")).hexdigest()}, indent=1) + "\n")
    return tokenizer


def load_bpe(path: Path, expected: dict):
    """The cached BPE tokenizer, or None and why the entry cannot be trusted (then it is retrained)."""
    record, problem = read_record(path, expected)
    if problem:
        return None, problem
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, f"is unreadable ({type(err).__name__})"
    if hashlib.sha256(raw).hexdigest() != record.get("json_sha256"):
        return None, "differs from the sha256 in its record"
    try:
        return BPETokenizer.from_json(raw.decode("utf-8")), None
    except Exception as err:  # noqa: BLE001 - tokenizers raises its own Exception type
        return None, f"is unreadable ({type(err).__name__})"
