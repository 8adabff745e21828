"""lm-evaluation-harness: an exported model evaluates through lm-eval's ``hf`` model type on a local task.

No network: the task is a YAML file and a JSONL file written to a temporary folder. The log-likelihoods
lm-eval reports must be the ones our model computes, and its accuracy the one they imply.
"""
import json

import pytest
import torch

from extras import require_extra

require_extra("eval")
pytestmark = pytest.mark.extra("eval")
import lm_eval  # noqa: E402

from groundthink.hf import export_hf  # noqa: E402
from groundthink.inference import generate  # noqa: E402

from test_generate import CharTokenizer, tiny_model  # noqa: E402

DOCS = [
    {"context": "ROMEO: But, so", "choices": ["ft", "xq"], "label": 0},
    {"context": "what light thr", "choices": ["ough", "eee"], "label": 0},
    {"context": "It is the ea", "choices": ["st", "t!"], "label": 1},
]
TOKENIZER = CharTokenizer(sorted(set("ROMEO: But, soft! what light through yonder window breaks?\nIt is east xq.")))

TASK = """task: groundthink_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

GENERATION_TASK = """task: groundthink_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def loglikelihood(model, context: str, continuation: str) -> float:
    """Sum of log-probabilities of ``continuation`` after ``context``, from our model directly."""
    ctx, cont = TOKENIZER.encode(context), TOKENIZER.encode(continuation)
    with torch.no_grad():
        logprobs = model(torch.tensor([ctx + cont])).logits[0].double().log_softmax(-1)
    return sum(logprobs[len(ctx) - 1 + i, token].item() for i, token in enumerate(cont))


def test_exported_model_evaluates_through_lm_eval_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "groundthink_tiny.yaml").write_text(TASK.format(data=data))
    (tmp_path / "tasks" / "groundthink_tiny_gen.yaml").write_text(GENERATION_TASK.format(data=data))
    model = tiny_model("GF-MH", vocab_size=TOKENIZER.vocab_size)
    # Generation tasks stop at the tokenizer's end-of-text token: a character model names the newline.
    folder = export_hf(model, TOKENIZER, tmp_path / "hf", eos_token="\n")

    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=["groundthink_tiny", "groundthink_tiny_gen"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")), device="cpu", batch_size=1,
        log_samples=True)

    samples = sorted(results["samples"]["groundthink_tiny"], key=lambda s: s["doc_id"])
    correct = 0
    for sample, doc in zip(samples, DOCS):
        # lm-eval joins context and choice with its default target delimiter, a space.
        ours = [loglikelihood(model, doc["context"], " " + choice) for choice in doc["choices"]]
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx(ours, abs=1e-4)
        correct += int(max(range(len(ours)), key=ours.__getitem__) == doc["label"])
    assert results["results"]["groundthink_tiny"]["acc,none"] == pytest.approx(correct / len(DOCS))

    # generate_until: lm-eval's greedy continuation (through HF generate and our recurrent cache) is ours,
    # cut at the first stop string ("." from the task, "\n" from the EOS).
    generated = sorted(results["samples"]["groundthink_tiny_gen"], key=lambda s: s["doc_id"])
    for sample, doc in zip(generated, DOCS):
        ids = torch.tensor([TOKENIZER.encode(doc["context"])])
        text = TOKENIZER.decode(generate(model, ids, 6, temperature=0)[0, ids.shape[1]:].tolist())
        expected = text.split(".")[0].split("\n")[0]
        assert sample["resps"][0][0] == expected
