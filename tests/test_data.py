"""Data: sources, the generated recall corpus, splits, the token cache and the seeded window sampler."""
import numpy as np
import pytest
import torch

from groundthink.data import DataConfig, RandomWindowSampler, eval_windows, load_data
from groundthink.data import sources
from groundthink.data.synthetic import answer_mask, recall_text
from groundthink.errors import UserError
from training_utils import SHAKESPEARE


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))


def one_line_error(func, *args, match=None):
    with pytest.raises(UserError, match=match) as err:
        func(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


# ---- the generated recall corpus ---------------------------------------------------------------

def test_recall_corpus_is_deterministic_and_well_formed():
    text = recall_text(20000, seed=3)
    assert text == recall_text(20000, seed=3) and text != recall_text(20000, seed=4)
    assert len(text) >= 20000 and text.endswith("\n")
    for line in text.splitlines():
        pairs, queries = line.split("|")
        keys = pairs[0::2]
        assert len(set(keys)) == len(keys) and 2 <= len(keys) <= 8
        as_pairs = lambda s: sorted(s[i:i + 2] for i in range(0, len(s), 2))  # noqa: E731
        assert as_pairs(pairs) == as_pairs(queries)  # every key asked once, with its own value


def test_answer_mask_marks_only_values_after_the_bar():
    text = "a1b2|b2a1\nc3|c3\n"
    assert "".join(ch for ch, m in zip(text, answer_mask(text)) if m) == "213"


class Oracle(torch.nn.Module):
    """Predicts the true next token (it is handed the full windows), or always one fixed token."""

    def __init__(self, windows, vocab_size, fixed=None):
        super().__init__()
        self.windows, self.vocab_size, self.fixed = windows, vocab_size, fixed

    def forward(self, ids):
        row = {tuple(w[:-1].tolist()): w[1:] for w in self.windows}
        nxt = torch.stack([row[tuple(r.tolist())] for r in ids])
        if self.fixed is not None:
            nxt = torch.full_like(nxt, self.fixed)
        return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, self.vocab_size).float()})()


def test_recall_accuracy_counts_answer_positions():
    bundle = load_data(DataConfig(recall_chars=5000))
    task = bundle.task(seq_len=32, n_windows=16)
    tok = bundle.tokenizer
    assert task.evaluate(Oracle(task.ids, tok.vocab_size), "cpu")["recall_acc"] == 1.0
    fixed = task.evaluate(Oracle(task.ids, tok.vocab_size, fixed=tok.encode("7")[0]), "cpu")["recall_acc"]
    assert 0.0 < fixed < 0.3  # right only where the answer happens to be 7


# ---- sources, splits, cache --------------------------------------------------------------------

def test_local_file_splits_90_10_and_is_cached(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello world, this is a small corpus. " * 50)
    cfg = DataConfig(source=str(path))
    bundle = load_data(cfg)
    text = path.read_text()
    cut = int(len(text) * 0.9)
    assert bundle.tokenizer.decode(bundle.train.tolist()) == text[:cut]
    assert bundle.tokenizer.decode(bundle.val.tolist()) == text[cut:]
    again = load_data(cfg)
    assert isinstance(again.train, np.memmap) and np.array_equal(again.train, bundle.train)
    cached = list((tmp_path / "cache" / "tokens").glob("*.npy"))
    assert len(cached) == 2  # train and val, keyed by content + tokenizer
    load_data(DataConfig(source=str(path), tokenizer="bpe", vocab_size=300))
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npy"))) == 4  # another tokenizer, other entries


def test_val_source_and_folder_splits(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.txt").write_text("abc " * 100)
    (tmp_path / "d" / "valid.txt").write_text("cab " * 30)
    bundle = load_data(DataConfig(source=str(tmp_path / "d")))
    assert len(bundle.train) == 400 and len(bundle.val) == 120
    bundle = load_data(DataConfig(source=str(tmp_path / "d" / "train.txt"),
                                  val_source=str(tmp_path / "d" / "valid.txt")))
    assert bundle.tokenizer.decode(bundle.val[:4].tolist()) == "cab "
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_text("first " * 20)
    (tmp_path / "e" / "b.txt").write_text("second " * 20)
    bundle = load_data(DataConfig(source=str(tmp_path / "e")))
    assert len(bundle.train) + len(bundle.val) == 120 + 1 + 140  # files joined by a newline


def test_tiny_shakespeare_local_copy():
    if not SHAKESPEARE.is_file():
        pytest.skip("Tiny Shakespeare not found beside the repository")
    bundle = load_data(DataConfig(source=str(SHAKESPEARE)))
    assert bundle.tokenizer.vocab_size == 65
    assert len(bundle.train) == int(1115394 * 0.9) and len(bundle.train) + len(bundle.val) == 1115394


def test_shakespeare_download_is_checked_and_offline_fails_in_one_line(tmp_path, monkeypatch):
    if not SHAKESPEARE.is_file():
        pytest.skip("Tiny Shakespeare not found beside the repository")
    monkeypatch.setattr(sources, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")  # nothing listens there
    message = one_line_error(load_data, DataConfig(source="shakespeare"), match="could not download")
    assert "--data" in message
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not shakespeare")
    monkeypatch.setattr(sources, "SHAKESPEARE_URL", wrong.as_uri())
    one_line_error(load_data, DataConfig(source="shakespeare"), match="sha256")
    monkeypatch.setattr(sources, "SHAKESPEARE_URL", SHAKESPEARE.as_uri())
    assert load_data(DataConfig(source="shakespeare")).tokenizer.vocab_size == 65
    monkeypatch.setattr(sources, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    assert load_data(DataConfig(source="shakespeare")).tokenizer.vocab_size == 65  # served from the cache now


def test_wikitext_without_datasets_or_network_is_a_one_line_error():
    message = one_line_error(load_data, DataConfig(source="wikitext-2"))
    assert "--data" in message


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"caf\xe9 au lait " * 10, "not UTF-8"),
    (b"tiny", "fewer than one window"),
])
def test_bad_data_files(tmp_path, content, match):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    one_line_error(lambda: RandomWindowSampler(load_data(DataConfig(source=str(path))).train, 2, 8), match=match)


def test_empty_folder_is_refused(tmp_path):
    one_line_error(load_data, DataConfig(source=str(tmp_path)), match="no text files")


# ---- the sampler ---------------------------------------------------------------------------------

def test_sampler_is_seeded_and_resumes_exactly():
    tokens = np.arange(1000, dtype=np.uint16)
    a, b = RandomWindowSampler(tokens, 4, 8, seed=1), RandomWindowSampler(tokens, 4, 8, seed=1)
    x, y = a.next_batch()
    assert torch.equal(x, b.next_batch()[0])
    assert not torch.equal(x, RandomWindowSampler(tokens, 4, 8, seed=2).next_batch()[0])
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.long))
    state = a.state_dict()
    expected = [a.next_batch()[0] for _ in range(3)]
    restored = RandomWindowSampler(tokens, 4, 8, seed=99)
    restored.load_state_dict(state)
    assert all(torch.equal(restored.next_batch()[0], e) for e in expected)


def test_ranks_draw_disjoint_rows_of_one_global_batch():
    tokens = np.arange(1000, dtype=np.uint16)
    single = RandomWindowSampler(tokens, 4, 8, seed=1).next_batch()[0]
    rank0 = RandomWindowSampler(tokens, 2, 8, seed=1, rank=0, world_size=2).next_batch()[0]
    rank1 = RandomWindowSampler(tokens, 2, 8, seed=1, rank=1, world_size=2).next_batch()[0]
    assert torch.equal(single[0::2], rank0) and torch.equal(single[1::2], rank1)


def test_eval_windows_are_fixed_and_cover_the_split():
    tokens = np.arange(500, dtype=np.uint16)
    w = eval_windows(tokens, 16, 10)
    assert w.shape == (10, 17) and int(w[0, 0]) == 0 and int(w[-1, -1]) == 499
    assert torch.equal(w, eval_windows(tokens, 16, 10))
