"""`chuan eval harness`: a local multiple-choice task run by lm-evaluation-harness on a tiny
chuan model gives the loglikelihoods and accuracies the test computes from the model's logits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from chuan.cli import eval_ppl, main
from chuan.infer.loading import load_model, load_saved_tokenizer
from helpers.corpus import write_jsonl
from helpers.serving import llama_vocab_model_dir

pytestmark = pytest.mark.interop  # CI runs these on the oldest supported transformers too

ITEMS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["four", "five", "twenty-two"], "answer": 0},
    {"question": "Water freezes at zero degrees", "choices": ["Celsius", "Kelvin"], "answer": 0},
    {"question": "中国的首都是", "choices": ["北京", "上海", "广州", "深圳"], "answer": 0},
    {"question": "一年有几个月？", "choices": ["十", "十二", "十四"], "answer": 1},
    {"question": "Cats are", "choices": ["birds", "mammals", "fish"], "answer": 1},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, test_data) -> Path:
    """A tiny random model with the LLaMA tokenizer."""
    return llama_vocab_model_dir(test_data, tmp_path_factory.mktemp("harness"))


def write_task(root: Path) -> Path:
    """A YAML task over a local JSONL file (lm-eval's `json` dataset builder)."""
    data = write_jsonl(root / "items.jsonl", ITEMS)
    task = {
        "task": "chuan_tiny_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(root / "cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    (root / "tasks").mkdir()
    (root / "tasks" / "chuan_tiny_mc.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    return root / "tasks"


def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context): the continuation's tokens are those of the joined text
    after the context's own tokens (lm-eval's split for causal models)."""
    whole = tokenizer.encode(context + continuation)
    start = len(tokenizer.encode(context))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(start, len(whole)))


def _cli(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="chuan eval")
    eval_ppl.register(parser.add_subparsers(dest="eval_verb", required=True))
    args = parser.parse_args(list(argv))
    args.func(args)


def test_local_task_matches_the_models_own_loglikelihoods(tmp_path, model_dir, capsys):
    tasks = write_task(tmp_path)
    out = tmp_path / "results.json"
    _cli(
        "harness", str(model_dir), "--tasks", "chuan_tiny_mc", "--include-path", str(tasks),
        "--no-builtin-tasks", "--device", "cpu", "--batch-size", "4", "--log-samples",
        "--json", str(out),
    )  # fmt: skip
    assert "chuan_tiny_mc" in capsys.readouterr().out  # lm-eval's table
    results = json.loads(out.read_text())
    model, tokenizer = load_model(model_dir, device="cpu"), load_saved_tokenizer(model_dir)
    samples = sorted(results["samples"]["chuan_tiny_mc"], key=lambda s: s["doc_id"])
    correct = correct_norm = 0
    for item, sample in zip(ITEMS, samples, strict=True):
        lls = [loglikelihood(model, tokenizer, item["question"], f" {c}") for c in item["choices"]]
        assert [ll for ll, _ in sample["filtered_resps"]] == pytest.approx(lls, abs=1e-4)
        correct += lls.index(max(lls)) == item["answer"]
        normed = [ll / len(c) for ll, c in zip(lls, item["choices"], strict=True)]
        correct_norm += normed.index(max(normed)) == item["answer"]
    metrics = results["results"]["chuan_tiny_mc"]
    assert metrics["acc,none"] == pytest.approx(correct / len(ITEMS))
    assert metrics["acc_norm,none"] == pytest.approx(correct_norm / len(ITEMS))
    assert results["config"]["model"] == str(model_dir)


def test_unknown_task_is_named(tmp_path, model_dir):
    with pytest.raises(ValueError, match="tasks not found: no_such_task"):
        _cli(
            "harness", str(model_dir), "--tasks", "no_such_task",
            "--include-path", str(write_task(tmp_path)), "--no-builtin-tasks",
        )  # fmt: skip


def test_missing_lm_eval_says_how_to_install(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails
    with pytest.raises(SystemExit, match=r"pip install 'chuan\[eval\]'"):
        main(["eval", "harness", str(model_dir), "--tasks", "mmlu"])
