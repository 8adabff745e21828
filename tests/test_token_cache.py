"""The token cache never serves wrong ids: an entry that does not match its record is rebuilt, with a warning."""
import json
from pathlib import Path

import numpy as np
import pytest

from groundthink.data import DataConfig, load_data, split_corpus
from groundthink.data.cache import encode_array, record_path
from groundthink.data.sources import load_corpus

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 40


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def fresh(config: DataConfig, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation ids encoded now, with no cache involved."""
    train_text, val_text = split_corpus(load_corpus(config), config.val_fraction)
    return encode_array(train_text, tokenizer), encode_array(val_text, tokenizer)


def train_entry(cache) -> Path:
    """The training split's entry (the larger of the two)."""
    return max((cache / "tokens").glob("*.npy"), key=lambda p: p.stat().st_size)


def wrong_ids_same_length(path, vocab):
    ids = np.load(path)
    np.save(path, ((ids.astype(np.int64) + 1) % vocab).astype(ids.dtype))  # a valid .npy, every id shifted


def truncated(path, vocab):
    path.write_bytes(path.read_bytes()[:-40])


def out_of_range(path, vocab):
    ids = np.load(path)
    ids[3] = vocab
    np.save(path, ids)


def garbage(path, vocab):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def empty(path, vocab):
    path.write_bytes(b"")


def record_removed(path, vocab):  # as an entry written before records existed
    record_path(path).unlink()


def record_damaged(path, vocab):
    record_path(path).write_text("{not json")


def record_of_other_text(path, vocab):
    record = json.loads(record_path(path).read_text())
    record["text_chars"] += 1
    record_path(path).write_text(json.dumps(record))


TAMPERS = [wrong_ids_same_length, truncated, out_of_range, garbage, empty, record_removed, record_damaged,
           record_of_other_text]


@pytest.mark.parametrize("tamper", TAMPERS, ids=[t.__name__ for t in TAMPERS])
def test_a_tampered_entry_is_rebuilt_with_one_warning(corpus, tmp_path, capfd, tamper):
    config = DataConfig(source=str(corpus))
    first = load_data(config)
    want_train, want_val = fresh(config, first.tokenizer)
    assert np.array_equal(first.train, want_train) and np.array_equal(first.val, want_val)
    assert capfd.readouterr().err == ""
    entry = train_entry(tmp_path / "cache")
    tamper(entry, first.tokenizer.vocab_size)

    data = load_data(config)
    assert np.array_equal(data.train, want_train) and np.array_equal(data.val, want_val)
    warnings = capfd.readouterr().err.strip().splitlines()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: token cache entry {entry} ") and warnings[0].endswith("rebuilding it")
    again = load_data(config)  # rebuilt entry and record: served from the cache, silently
    assert np.array_equal(again.train, want_train) and capfd.readouterr().err == ""
    assert isinstance(again.train, np.memmap)


def test_the_record_states_what_the_entry_holds(corpus, tmp_path):
    data = load_data(DataConfig(source=str(corpus)))
    record = json.loads(record_path(train_entry(tmp_path / "cache")).read_text())
    assert record["n_tokens"] == data.train.size and record["vocab_size"] == data.tokenizer.vocab_size
    assert record["tokenizer"] == f"char-{data.tokenizer.fingerprint}" and record["dtype"] == "uint16"
    assert record["text_chars"] == len(split_corpus(load_corpus(DataConfig(source=str(corpus))), 0.1)[0])


def test_a_replaced_bpe_tokenizer_is_retrained(corpus, tmp_path, capfd):
    config = DataConfig(source=str(corpus), tokenizer="bpe", vocab_size=300)
    first = load_data(config)
    want_train, _ = fresh(config, first.tokenizer)
    capfd.readouterr()
    other = load_data(DataConfig(source=str(corpus), tokenizer="bpe", vocab_size=280)).tokenizer
    (entry,) = [p for p in (tmp_path / "cache" / "tokenizers").glob("bpe-300-*.json")
                if not p.name.endswith(".record.json")]
    entry.write_text(other.to_json())  # a valid tokenizer file, but not the one this text and size made
    capfd.readouterr()

    data = load_data(config)
    assert data.tokenizer.fingerprint == first.tokenizer.fingerprint
    assert np.array_equal(data.train, want_train)
    warnings = capfd.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: tokenizer cache entry {entry} "), warnings
