"""Hugging Face integration: exact save/load round trip, Auto classes, recurrent ``generate``, tokenizers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from extras import require_extra

require_extra("hf")
pytestmark = pytest.mark.extra("hf")
import transformers  # noqa: E402

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from groundthink.errors import UserError  # noqa: E402
from groundthink.hf import GroundThinkCache, GroundThinkConfig, GroundThinkForCausalLM, export_hf  # noqa: E402
from groundthink.hf.tokenizer import to_hf_tokenizer  # noqa: E402
from groundthink.inference import generate  # noqa: E402

from test_generate import CharTokenizer, tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = "ROMEO: But, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
TOKENIZER = CharTokenizer(sorted(set(TEXT + "xyzqpcv;-'.")))
VOCAB = TOKENIZER.vocab_size


@pytest.fixture(scope="module", params=["GF-MH", "GPT2"])
def exported(request, tmp_path_factory):
    """(key, GroundThink model, folder it was exported to)."""
    model = tiny_model(request.param, vocab_size=VOCAB)
    folder = export_hf(model, TOKENIZER, tmp_path_factory.mktemp(request.param) / "hf")
    return request.param, model, folder


def prompt_ids(text="ROMEO: But"):
    return torch.tensor([TOKENIZER.encode(text)])


def test_export_writes_a_hugging_face_folder(exported):
    _, _, folder = exported
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "groundthink" and config.get("tie_word_embeddings", True) is True
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    # The tied head is stored once, as the embedding.
    assert "model.embed.weight" in keys and "model.head.weight" not in keys


def test_round_trip_is_exact_and_auto_classes_load_it(exported):
    key, model, folder = exported
    assert isinstance(AutoConfig.from_pretrained(folder), GroundThinkConfig)
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(loaded, GroundThinkForCausalLM)
    assert loaded.model.config == model.config
    ours, theirs = model.state_dict(), loaded.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.model.head.weight is loaded.model.embed.weight
    ids = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_hf_generate_equals_our_greedy_generate_and_decodes_recurrently(exported):
    _, model, folder = exported
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    seen_lengths = []
    hook = loaded.model.register_forward_pre_hook(lambda module, args: seen_lengths.append(args[0].shape[1]))
    try:
        out = loaded.generate(prompt_ids(), max_new_tokens=12, do_sample=False,
                              return_dict_in_generate=True)
    finally:
        hook.remove()
    assert torch.equal(out.sequences, generate(model, prompt_ids(), 12, temperature=0))
    # One prefill over the prompt, then one token per call: the cache carries the states.
    assert seen_lengths == [prompt_ids().shape[1]] + [1] * 11
    cache = out.past_key_values
    assert isinstance(cache, GroundThinkCache) and cache.seen_tokens == prompt_ids().shape[1] + 11


def test_beam_search_with_the_cache_equals_recomputing_without_it():
    model = GroundThinkForCausalLM.from_groundthink(tiny_model("HGF", vocab_size=VOCAB)).eval()
    settings = dict(max_new_tokens=8, num_beams=3, do_sample=False, early_stopping=True)
    cached = model.generate(prompt_ids(), use_cache=True, **settings)
    recomputed = model.generate(prompt_ids(), use_cache=False, **settings)
    assert torch.equal(cached, recomputed)


def test_labels_loss_and_padding():
    core = tiny_model("SEQ-RMMR", vocab_size=VOCAB)
    model = GroundThinkForCausalLM.from_groundthink(core).eval()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, labels=ids)
        reference = core(ids[:, :-1], targets=ids[:, 1:]).loss
        torch.testing.assert_close(out.loss, reference)
        # Right padding leaves the real positions alone (causal); left padding is refused.
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        padded = model(ids, attention_mask=mask)
        assert torch.equal(padded.logits, out.logits) and padded.state is None
        with pytest.raises(ValueError, match="right padding"):
            model(ids, attention_mask=mask.flip(-1))


def test_char_tokenizer_round_trip(exported):
    _, _, folder = exported
    tok = AutoTokenizer.from_pretrained(folder)
    assert isinstance(tok, PreTrainedTokenizerFast)
    for text in (TEXT, "  spaced  out .\n\n", "ROMEO ."):
        ids = TOKENIZER.encode(text)
        assert tok.encode(text) == ids and tok.decode(ids) == text
    # lm-eval conditions empty contexts on BOS: the newline is named BOS, and encoding is unchanged by it.
    assert tok.bos_token == "\n" and tok.eos_token is None


def test_bpe_tokenizer_round_trip(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TEXT * 3, "naïve café — ünïcödé"], trainer=trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = to_hf_tokenizer(bpe)
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in (TEXT, "naïve café, 日本語 — ok?", " leading space"):
        ids = bpe.encode(text).ids
        assert reloaded.encode(text) == ids and reloaded.decode(ids) == text


def test_export_refuses_a_non_empty_folder_and_a_mismatched_tokenizer(tmp_path):
    model = tiny_model("RWKV6", vocab_size=VOCAB)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_hf(model, TOKENIZER, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="tokenizer has"):
        export_hf(tiny_model("RWKV6", vocab_size=10), TOKENIZER, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_export_to_or_under_a_file_is_one_line_and_keeps_the_file(tmp_path):
    model = tiny_model("RWKV6", vocab_size=VOCAB)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt is a file; choose a new folder name"):
        export_hf(model, TOKENIZER, tmp_path / "notes.txt")
    with pytest.raises(UserError, match="notes.txt is a file; choose another place"):
        export_hf(model, TOKENIZER, tmp_path / "notes.txt" / "hf")
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def test_folder_loads_with_trust_remote_code_in_a_fresh_process(tmp_path):
    """Without importing groundthink first (as lm-eval's CLI does): the folder's auto_map finds the classes."""
    model = tiny_model("GF-MH", vocab_size=VOCAB)
    folder = export_hf(model, TOKENIZER, tmp_path / "hf")
    script = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        f"print(type(m).__name__, m.generate(torch.tensor([{prompt_ids()[0].tolist()}]), max_new_tokens=5, "
        "do_sample=False)[0].tolist())\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = generate(model, prompt_ids(), 5, temperature=0)[0].tolist()
    assert result.stdout.strip().splitlines()[-1] == f"GroundThinkForCausalLM {expected}"
