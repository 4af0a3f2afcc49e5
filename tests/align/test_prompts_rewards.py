"""RL inputs: prompts from every layout chuan reads, and reward functions."""

from __future__ import annotations

import json

import pytest

from chuan.align.prompts import read_prompts
from chuan.align.rewards import (
    call_reward_function,
    load_reward_function,
    reference_match,
    reference_overlap,
)
from chuan.errors import InputError


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def test_prompt_only_records_with_references_and_rejects(tmp_path):
    path = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "2+2?", "answer": 4},
            {"prompt": [{"role": "user", "content": "Hi"}], "system": "Be brief."},
            {"prompt": [{"role": "assistant", "content": "no user turn"}]},
            {"prompt": ""},
        ],
    )
    prompts, rejects = read_prompts(path)
    assert [(p.prompt, p.reference) for p in prompts] == [
        ((("user", "2+2?"),), "4"),
        ((("user", "Hi"),), None),
    ]
    assert prompts[1].messages()[0] == {"role": "system", "content": "Be brief."}
    assert prompts[0].origin == f"{path}:1"
    assert [(r.line, r.reason) for r in rejects] == [
        (3, "the prompt must end with a user turn: prompt[0] is 'assistant'"),
        (4, "empty prompt"),
    ]


def test_preference_pairs_give_their_prompt_and_the_chosen_answer(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    (prompt,), _ = read_prompts(path)
    assert (prompt.prompt, prompt.reference) == ((("user", "Q"),), "good")


def test_sft_conversations_give_all_but_the_last_answer(tmp_path):
    record = {
        "instruction": "Translate",
        "input": "你好",
        "output": "Hello",
        "history": [["a", "b"]],
    }
    (prompt,), _ = read_prompts(_write(tmp_path / "sft.jsonl", [record]))
    assert prompt.prompt == (("user", "a"), ("assistant", "b"), ("user", "Translate\n你好"))
    assert prompt.reference == "Hello"


def test_a_file_of_another_kind_names_the_layouts(tmp_path):
    path = _write(tmp_path / "text.jsonl", [{"text": "plain"}])
    with pytest.raises(InputError, match="text.jsonl.*prompt data format.*format:"):
        read_prompts(path)


def test_reference_rewards_by_hand():
    assert reference_match(None, [" a  b", "ab"], ["a b", None]) == [1.0, 0.0]
    # "abcd" vs "abce": bigrams ab bc cd / ab bc ce: 2 common of 3 each, F1 = 2/3
    got = reference_overlap(None, ["abcd", "你好世界", "x"], ["abce", "你好世界", None])
    assert got == pytest.approx([2 / 3, 1.0, 0.0])


def test_reward_functions_load_from_a_module_or_a_file_and_are_checked(tmp_path):
    assert load_reward_function("chuan.align.rewards:reference_match") is reference_match
    script = tmp_path / "my_reward.py"
    script.write_text(
        "def count(prompts, completions, **kw):\n    return [len(c) for c in completions]\n"
    )
    function = load_reward_function(f"{script}:count")
    got = call_reward_function(function, "count", prompts=["p"] * 2, completions=["ab", "c"])
    assert got.tolist() == [2.0, 1.0]
    with pytest.raises(InputError, match="module:function"):
        load_reward_function("no_colon")
    with pytest.raises(InputError, match="not found"):
        load_reward_function(f"{tmp_path / 'absent.py'}:f")
    with pytest.raises(InputError, match="returned 1 rewards for 2 completions"):
        call_reward_function(lambda **kw: [1.0], "one", prompts=["p"] * 2, completions=["a", "b"])
    with pytest.raises(InputError, match="reward nan for completion 1"):
        call_reward_function(
            lambda **kw: [1.0, float("nan")], "nan", prompts=["p"] * 2, completions=["a", "b"]
        )
