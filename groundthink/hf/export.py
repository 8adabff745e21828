"""Export a GroundThink model + tokenizer as a Hugging Face folder (safetensors, config, tokenizer).

The folder loads with ``AutoModelForCausalLM.from_pretrained(path)`` once ``groundthink.hf`` is imported,
and with ``trust_remote_code=True`` from any process where GroundThink is installed (a two-line module in
the folder imports the installed classes), e.g. ``lm_eval --model hf --model_args
pretrained=PATH,trust_remote_code=True``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from groundthink.data.files import give_usual_mode
from groundthink.errors import UserError
from groundthink.hf.modeling import GroundThinkForCausalLM
from groundthink.hf.tokenizer import to_hf_tokenizer

REMOTE_CODE_MODULE = "groundthink_hf"
REMOTE_CODE = '''"""Loads GroundThink's Hugging Face classes from the installed package: pip install "groundthink[hf]"."""
from groundthink.hf import GroundThinkConfig, GroundThinkForCausalLM  # noqa: F401
'''


def name_tokenizer_class(path: Path) -> None:
    """transformers 5 writes its new class name ``TokenizersBackend``; ``PreTrainedTokenizerFast`` is the
    name every version since 4.x loads (in 5.x it is the same class)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_hf(model, tokenizer, out_dir, eos_token: str | None = None, bos_token: str | None = None) -> Path:
    """Write ``out_dir`` (must not exist, or be empty). Returns its path.

    The folder is assembled beside ``out_dir`` and renamed into place, so a failure leaves nothing half
    written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"export folder {out_dir} is a file; choose a new folder name")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"export folder {out_dir} already exists and is not empty; choose a new folder")
    blocking = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"cannot create the export folder {out_dir}: {blocking} is a file; choose another place")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size}; export the tokenizer the model was trained with")
    hf_model = GroundThinkForCausalLM.from_groundthink(model)
    hf_model.config.auto_map = {"AutoConfig": f"{REMOTE_CODE_MODULE}.GroundThinkConfig",
                                "AutoModelForCausalLM": f"{REMOTE_CODE_MODULE}.GroundThinkForCausalLM"}
    hf_tokenizer = to_hf_tokenizer(tokenizer, eos_token=eos_token, bos_token=bos_token)
    if hf_tokenizer.bos_token_id is not None:
        hf_model.config.bos_token_id = hf_model.generation_config.bos_token_id = hf_tokenizer.bos_token_id
    if hf_tokenizer.eos_token_id is not None:
        hf_model.config.eos_token_id = hf_model.config.pad_token_id = hf_tokenizer.eos_token_id
        hf_model.generation_config.eos_token_id = hf_model.generation_config.pad_token_id = \
            hf_tokenizer.eos_token_id

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir: the folder gets the usual mode (0777 less the umask); tempfile.mkdtemp's 0700 would stay
    # on the exported folder after the rename.
    staging = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        hf_model.save_pretrained(staging)
        hf_tokenizer.save_pretrained(staging)
        name_tokenizer_class(staging / "tokenizer_config.json")
        (staging / f"{REMOTE_CODE_MODULE}.py").write_text(REMOTE_CODE, encoding="utf-8")
        for path in staging.iterdir():
            give_usual_mode(path)  # the weights: safetensors creates 0600 files
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
