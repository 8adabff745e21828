"""Text sources: a local file or folder, Tiny Shakespeare (downloaded and checked), WikiText through
Hugging Face ``datasets``, and the offline generated recall corpus.

``load_corpus(data_config)`` returns a ``Corpus``: the training text and, when the source has its own
validation split (or ``data.val_source`` names one), the validation text. Otherwise the caller splits.
"""
from __future__ import annotations

import hashlib
import importlib.util
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from groundthink.data.files import atomic_write_bytes, read_text_file, text_files_in
from groundthink.data.synthetic import recall_text
from groundthink.errors import UserError
from groundthink.ops.backend import cache_root as machine_cache_root

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# The Hugging Face configs of the same releases as the local WikiText files (word-level, <unk> kept).
WIKITEXT_CONFIGS = {"wikitext-2": "wikitext-2-v1", "wikitext-103": "wikitext-103-v1"}
NAMED_SOURCES = ("recall", "shakespeare", *WIKITEXT_CONFIGS)
# Folders with their own splits: train file and validation file names we recognise.
TRAIN_NAMES = ("train.txt",)
VAL_NAMES = ("valid.txt", "val.txt", "validation.txt")


@dataclass
class Corpus:
    name: str
    train_text: str
    val_text: str | None = None  # None: the caller splits train_text 90/10
    synthetic: bool = False


def cache_root(data_config=None) -> Path:
    """``data.cache_dir``, else the machine's cache root (``ops.backend.cache_root``: ``$GROUNDTHINK_CACHE``,
    else ``~/.cache/groundthink``)."""
    configured = getattr(data_config, "cache_dir", None)
    return Path(configured).expanduser() if configured else machine_cache_root()


def load_corpus(data_config) -> Corpus:
    source = data_config.source
    if source == "recall":
        corpus = Corpus("recall", recall_text(data_config.recall_chars, data_config.seed,
                                              data_config.recall_min_pairs, data_config.recall_max_pairs),
                        synthetic=True)
        # The validation records come from a different seed: recall must generalize, not memorize.
        corpus.val_text = recall_text(max(data_config.recall_chars // 9, 4096), data_config.seed + 1_000_003,
                                      data_config.recall_min_pairs, data_config.recall_max_pairs)
    elif source == "shakespeare":
        corpus = Corpus("shakespeare", read_text_file(shakespeare_path(cache_root(data_config))))
    elif source in WIKITEXT_CONFIGS:
        corpus = load_wikitext(source, cache_root(data_config))
    else:
        corpus = load_local(source)
    if data_config.val_source:
        if corpus.synthetic:
            raise UserError("data.val_source cannot be combined with the generated recall corpus; "
                            "drop data.val_source or pass a text file as data.source")
        corpus.val_text = load_local(data_config.val_source).train_text
    return corpus


def load_local(source: str) -> Corpus:
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"data {source!r} not found; pass an existing file or folder with --data, or a named "
                        f"source ({', '.join(NAMED_SOURCES)})")
    if path.is_file():
        return Corpus(str(path), read_text_file(path))
    # A folder: its own train/validation files when it has them, else all its text files joined.
    train = next((path / n for n in TRAIN_NAMES if (path / n).is_file()), None)
    val = next((path / n for n in VAL_NAMES if (path / n).is_file()), None)
    if train and val:
        return Corpus(str(path), read_text_file(train), read_text_file(val))
    return Corpus(str(path), "\n".join(read_text_file(f) for f in text_files_in(path)))


def shakespeare_path(cache: Path) -> Path:
    """The cached Tiny Shakespeare, downloaded once from its canonical address and checked by sha256."""
    target = cache / "downloads" / "tinyshakespeare.txt"
    if target.is_file() and sha256_file(target) == SHAKESPEARE_SHA256:
        return target
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=20) as response:
            data = response.read()
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"could not download Tiny Shakespeare from {SHAKESPEARE_URL} ({reason}); without "
                        f"network pass a local copy: --data path/to/tinyshakespeare.txt") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise UserError(f"the download from {SHAKESPEARE_URL} has sha256 {digest[:12]}..., expected "
                        f"{SHAKESPEARE_SHA256[:12]}...; pass a verified local copy: --data path/to/tinyshakespeare.txt")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return target


def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A quick TCP probe, so that an offline machine fails in seconds rather than after long retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_wikitext(name: str, cache: Path) -> Corpus:
    """WikiText through Hugging Face ``datasets`` (its train and validation splits)."""
    if importlib.util.find_spec("datasets") is None:
        raise UserError(f"the {name} source needs Hugging Face datasets: pip install 'groundthink[datasets]' "
                        f"(or pass local files: --data train.txt --set data.val_source=valid.txt)")
    if not reachable("huggingface.co"):
        raise UserError(f"could not load {name}: huggingface.co is unreachable (no network?); pass local files: "
                        f"--data train.txt --set data.val_source=valid.txt")
    import datasets

    try:
        splits = datasets.load_dataset("Salesforce/wikitext", WIKITEXT_CONFIGS[name],
                                       cache_dir=str(cache / "hf-datasets"))
    except Exception as err:  # datasets raises many types (ConnectionError, its own offline errors)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load {name} through Hugging Face datasets ({first_line}); without network "
                        f"pass local files: --data train.txt --set data.val_source=valid.txt") from None
    return Corpus(name, "".join(splits["train"]["text"]), "".join(splits["validation"]["text"]))
