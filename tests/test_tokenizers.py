"""Tokenizers: character level and byte-level BPE, saved with a run and reloaded identically."""
import json

import pytest
from tokenizers import Tokenizer

from groundthink.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from groundthink.errors import UserError
from training_utils import SHAKESPEARE

TEXT = "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs!\n" * 40


def test_char_tokenizer_vocabulary_and_round_trip(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    assert tok.vocab_size == len(set(TEXT))
    assert tok.chars == sorted(set(TEXT))
    ids = tok.encode("lazy fox\n")
    assert tok.decode(ids) == "lazy fox\n"
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    assert again.encode(TEXT) == tok.encode(TEXT) and again.fingerprint == tok.fingerprint


def test_char_tokenizer_has_65_symbols_on_tiny_shakespeare():
    if not SHAKESPEARE.is_file():
        pytest.skip("Tiny Shakespeare not found beside the repository")
    assert CharTokenizer.from_text(SHAKESPEARE.read_text(encoding="utf-8")).vocab_size == 65


def test_char_tokenizer_names_unknown_characters():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match=r"'z'") as err:
        tok.encode("abz")
    assert "\n" not in str(err.value)


def test_bpe_trains_to_the_requested_size_and_round_trips_any_text(tmp_path):
    tok = BPETokenizer.train([TEXT], vocab_size=300)
    assert 256 < tok.vocab_size <= 300
    ids = tok.encode(TEXT[:200])
    assert len(ids) < 200  # merges make it shorter than bytes
    weird = "naïve café — 東京 🙂 tab\tnewline\n"
    assert tok.decode(tok.encode(weird)) == weird  # byte level: nothing is unknown
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, BPETokenizer) and again.encode(TEXT) == tok.encode(TEXT)
    # The file is Hugging Face's own format: other tools load it directly.
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(weird).ids == tok.encode(weird)


def test_bpe_training_is_deterministic():
    a = BPETokenizer.train([TEXT], vocab_size=320)
    b = BPETokenizer.train([TEXT], vocab_size=320)
    assert a.to_json() == b.to_json()


def test_load_tokenizer_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "nonsense"}))
    with pytest.raises(UserError, match="unreadable") as err:
        load_tokenizer(bad)
    assert "\n" not in str(err.value)
