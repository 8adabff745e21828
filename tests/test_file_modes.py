"""What GroundThink writes gets the usual permissions: 0777 / 0666 less the umask (0755 / 0644 under 022).

Temporary-file helpers (tempfile.mkstemp / mkdtemp) create 0600 / 0700, which would stay on a file or folder
renamed into place: nobody else could read a run folder or an exported model.
"""
import os
import stat
from pathlib import Path

import pytest

from groundthink.fileio import atomic_write_bytes, atomic_write_text, current_umask
from groundthink.training import Trainer
from training_utils import tiny_config


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and of everything under it, by relative path."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in paths if not p.is_symlink()}


def assert_usual_modes(root: Path, umask: int) -> None:
    found = modes(root)
    assert len(found) > 1, found
    for name, mode in found.items():
        want = (0o777 if (root / name).is_dir() else 0o666) & ~umask
        assert mode == want, f"{name}: {oct(mode)}, want {oct(want)} under umask {oct(umask)}"


def test_atomic_writes_respect_the_umask(tmp_path, umask):
    folder = tmp_path / "out"  # pytest's own tmp_path is 0700
    folder.mkdir()
    atomic_write_bytes(folder / "a.bin", b"\x00\x01")
    atomic_write_text(folder / "b.txt", "text")
    atomic_write_text(folder / "b.txt", "replaced")  # the rename keeps the new file's usual mode
    assert current_umask() == umask
    assert_usual_modes(folder, umask)


def test_a_run_folder_is_readable_by_others_under_the_usual_umask(tmp_path, umask):
    run_dir = tmp_path / "run"
    Trainer(tiny_config(steps=4, eval_every=2, save_every=2), run_dir).fit()
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "metrics.jsonl").is_file()
    assert_usual_modes(run_dir, umask)


@pytest.mark.extra("hf")
def test_an_exported_folder_has_the_usual_modes(tmp_path, umask):
    from groundthink.hf import export_hf
    from test_generate import CharTokenizer, tiny_model

    tokenizer = CharTokenizer("abcdefgh \n")
    folder = export_hf(tiny_model("GF-MH", vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "hf")
    assert (folder / "model.safetensors").is_file()
    assert_usual_modes(folder, umask)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no staging folder left beside it


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    target.write_text("old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
