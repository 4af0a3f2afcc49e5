"""lm-evaluation-harness pointed at `chuan serve`: its `local-completions` model (echo and
logprobs over HTTP) scores a local multiple-choice task exactly as `chuan eval harness` scores
it in process, and `local-chat-completions` gets the server's greedy chat answers."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

from chuan.eval.harness import run_harness, task_manager
from chuan.infer.chat import build_chat_input
from chuan.infer.generate import generate
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.infer.sampling import generation_defaults
from chuan.tokenizer.chat_templates import get_template, record_template
from helpers.corpus import write_jsonl
from helpers.serving import llama_vocab_model_dir, serving

pytestmark = pytest.mark.interop  # chuan through lm-eval, also on the oldest transformers

NAME = "tiny"
ITEMS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "中国的首都是", "choices": ["北京", "上海", "广州"], "answer": 0},
    {"question": "Cats are", "choices": ["birds", "mammals", "fish"], "answer": 1},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, test_data) -> Path:
    model_dir = llama_vocab_model_dir(test_data, tmp_path_factory.mktemp("served-harness"))
    # LLaMA's vocabulary has no Baichuan role tokens: chat in LLaMA 2's format.
    record_template(model_dir, get_template("llama2", load_saved_tokenizer(model_dir)))
    return model_dir


@pytest.fixture(scope="module")
def served(model_dir):
    with serving(model_dir, max_batch=4, model_name=NAME) as url:
        yield url, load_model(model_dir, device="cpu"), load_saved_tokenizer(model_dir)


def write_tasks(root: Path) -> Path:
    data = write_jsonl(root / "items.jsonl", ITEMS)
    dataset = {"dataset_path": "json", "test_split": "test",
               "dataset_kwargs": {"data_files": {"test": str(data)},
                                  "cache_dir": str(root / "cache")}}  # fmt: skip
    tasks = {
        "served_mc": {
            **dataset,
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc"}],
        },
        "served_gen": {
            **dataset,
            "output_type": "generate_until",
            "doc_to_text": "{{question}}",
            "doc_to_target": "{{choices[answer]}}",
            "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False},
            "metric_list": [{"metric": "exact_match"}],
        },
    }
    (root / "tasks").mkdir()
    for name, task in tasks.items():
        (root / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **task}))
    return root / "tasks"


def loglikelihoods(results: dict, task: str) -> list[float]:
    return [
        response[0][0]
        for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"])
        for response in sample["resps"]
    ]


def test_local_completions_scores_equal_chuan_eval_harness(served, model_dir, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    url, _, _ = served
    tasks = write_tasks(tmp_path)
    manager = task_manager(tasks, builtin_tasks=False)
    local = run_harness(model_dir, ["served_mc"], include_path=tasks, builtin_tasks=False,
                        device="cpu", dtype="fp32", log_samples=True)  # fmt: skip
    api = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model=NAME,
                              tokenizer=str(model_dir), tokenizer_backend="huggingface",
                              max_length=512)  # fmt: skip
    remote = simple_evaluate(model=api, tasks=["served_mc"], task_manager=manager,
                             log_samples=True)  # fmt: skip
    expected = loglikelihoods(local, "served_mc")
    assert len(expected) == sum(len(item["choices"]) for item in ITEMS)
    assert loglikelihoods(remote, "served_mc") == pytest.approx(expected, abs=1e-4)
    assert remote["results"]["served_mc"]["acc,none"] == local["results"]["served_mc"]["acc,none"]


def test_local_chat_completions_gets_the_greedy_chat_answers(served, model_dir, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalChatCompletion

    url, model, tokenizer = served
    manager = task_manager(write_tasks(tmp_path), builtin_tasks=False)
    api = LocalChatCompletion(base_url=f"{url}/v1/chat/completions", model=NAME)
    results = simple_evaluate(model=api, tasks=["served_gen"], task_manager=manager,
                              apply_chat_template=True, log_samples=True)  # fmt: skip
    samples = sorted(results["samples"]["served_gen"], key=lambda s: s["doc_id"])
    # What the server does with lm-eval's request: greedy, the model dir's other settings.
    cfg = dataclasses.replace(generation_defaults(model_dir), temperature=0.0, max_new_tokens=6)
    for item, sample in zip(ITEMS, samples, strict=True):
        prompt = build_chat_input(tokenizer, [{"role": "user", "content": item["question"]}],
                                  0, sys.maxsize)  # fmt: skip
        answer = tokenizer.decode(generate(model, [prompt], cfg)[0]).split("\n\n")[0]
        assert sample["resps"][0][0] == answer
