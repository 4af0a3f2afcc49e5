"""Preference readers: five record layouts to one `Preference`, the unpaired (KTO) layouts to
`Unpaired`, bad records to `Reject`s."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from chuan.align.conversations import Conversation
from chuan.align.preferences import (
    Preference,
    Unpaired,
    detect_format,
    read_preferences,
    read_unpaired,
)
from chuan.errors import InputError

ASSET = Path(__file__).resolve().parents[2] / "src" / "chuan" / "assets" / "preference"
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


def _m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


SYSTEM, QUESTION = _m("system", "Be brief."), _m("user", "2+2?")


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


@pytest.mark.parametrize("name", ["dpo_en_demo.json", "dpo_zh_demo.json"])
def test_llama_factory_sharegpt_pairs(test_data, name):
    """LLaMA-Factory's demo pairs: every record read, turns, system and answers as stored."""
    path = test_data / "preference" / name
    records = json.loads(path.read_text("utf-8"))
    pairs, rejects = read_preferences(path)
    assert rejects == [] and len(pairs) == len(records) == 40
    for i, (pair, record) in enumerate(zip(pairs, records, strict=True)):
        messages = record["conversations"]
        system = messages[0]["value"] if messages[0]["from"] == "system" else ""
        turns = [(SHAREGPT_ROLES[m["from"]], m["value"]) for m in messages if m["from"] != "system"]
        assert pair.system == system
        assert list(pair.prompt) == turns and pair.prompt[-1][0] == "user"
        assert (pair.chosen, pair.rejected) == (
            record["chosen"]["value"],
            record["rejected"]["value"],
        )
        assert pair.origin == f"{path}:{i + 1}"
    assert any(p.system for p in pairs)
    if name == "dpo_en_demo.json":
        assert sum(len(p.prompt) > 1 for p in pairs) >= 5  # multi-round prompts kept whole


def test_hh_rlhf_transcripts_split_at_the_last_assistant_turn(test_data):
    """Anthropic's transcripts: the turns and answer rebuild the stored transcript exactly;
    the record with an empty chosen answer (line 87) is a reject."""
    path = test_data / "preference" / "hh_rlhf_harmless_base_test_100.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    pairs, rejects = read_preferences(path)
    assert [(r.line, r.reason) for r in rejects] == [(87, "empty answer ('chosen')")]
    assert len(pairs) == 99
    speaker = {"user": "Human", "assistant": "Assistant"}
    for pair in pairs:
        record = records[int(pair.origin.rsplit(":", 1)[1]) - 1]
        prompt = "".join(f"\n\n{speaker[role]}: {text}" for role, text in pair.prompt)
        assert prompt + "\n\nAssistant: " + pair.chosen == record["chosen"]
        assert prompt + "\n\nAssistant: " + pair.rejected == record["rejected"]
        assert pair.system == ""
    first = pairs[0]
    assert first.prompt[0] == ("user", "what are some pranks with a pen i can do?")
    assert first.prompt[1] == ("assistant", "Are you looking for practical joke ideas?")


def test_bundled_translation_pairs_are_alpaca():
    pairs, rejects = read_preferences(ASSET / "translate_zh_en.jsonl")
    assert rejects == [] and len(pairs) == 300
    assert pairs[0].prompt == (
        ("user", "Translate into Chinese.\nThese boxes are made of plastic."),
    )
    assert (pairs[0].chosen, pairs[0].rejected) == ("这些箱子是由塑料制成的。", "我真是惊讶。")


def test_each_layout(tmp_path):
    """One record of every layout and variant, to the same pair."""
    expected = Preference((("user", "2+2?"),), "4", "5", system="Be brief.")
    cases = {
        "pairwise": [
            {"prompt": [SYSTEM, QUESTION], "chosen": [_m("assistant", "4")],
             "rejected": [_m("assistant", "5")]},
            {"system": "Be brief.", "prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"chosen": [SYSTEM, QUESTION, _m("assistant", "4")],
             "rejected": [SYSTEM, QUESTION, _m("assistant", "5")]},
        ],
        "alpaca": [
            {"instruction": "2+2?", "input": "", "system": "Be brief.", "chosen": "4",
             "rejected": "5"}
        ],
        "sharegpt": [
            {"conversations": [{"from": "system", "value": "Be brief."},
                               {"from": "human", "value": "2+2?"}],
             "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}}
        ],
        "colossal": [
            {"context": [{"from": "human", "content": "2+2?"}], "system": "Be brief.",
             "chosen": {"from": "assistant", "content": "4"},
             "rejected": [{"from": "assistant", "content": "5"}]}
        ],
    }  # fmt: skip
    for format, records in cases.items():
        path = _jsonl(tmp_path / f"{format}.jsonl", records)
        for given in (None, format):
            pairs, rejects = read_preferences(path, given)
            assert rejects == [], (format, rejects)
            assert [(p.prompt, p.chosen, p.rejected, p.system) for p in pairs] == [
                (expected.prompt, "4", "5", "Be brief.")
            ] * len(records), format
            assert {detect_format(r) for r in records} == {format}


def test_alpaca_history_becomes_earlier_rounds(tmp_path):
    record = {
        "instruction": "and 3+3?",
        "input": "",
        "history": [["2+2?", "4"]],
        "chosen": "6",
        "rejected": "7",
    }
    (pair,), _ = read_preferences(_jsonl(tmp_path / "a.jsonl", [record]))
    assert pair.prompt == (("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"))
    assert pair.conversation(pair.rejected) == Conversation(
        (*pair.prompt, ("assistant", "7")), "", pair.origin
    )


BAD = [
    ({"prompt": "q", "chosen": "same", "rejected": "same"},
     "chosen and rejected are the same answer"),
    ({"prompt": "q", "chosen": "a"}, "'rejected' must be a non-empty answer, got nothing"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "empty answer ('chosen')"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"prompt": [_m("user", "q"), _m("assistant", "a")], "chosen": "a", "rejected": "b"},
     "the prompt must end with a user turn: prompt[1] is 'assistant'"),
    ({"prompt": "q", "chosen": [_m("user", "a")], "rejected": "b"},
     "'chosen' must be an assistant message, got role 'user'"),
    ({"prompt": "q", "chosen": [_m("assistant", "a")] * 2, "rejected": "b"},
     "'chosen' must hold exactly one assistant message, got 2"),
    ({"chosen": [_m("user", "q"), _m("assistant", "a")],
      "rejected": [_m("user", "other q"), _m("assistant", "b")]},
     "must be the same conversation up to their last"),
    ({"prompt": [_m("user", "q"), _m("tool", "42")], "chosen": "a", "rejected": "b"},
     "tool turns"),
    ({"prompt": [_m("assistant", "hi"), _m("user", "q")], "chosen": "a", "rejected": "b"},
     "expected a user turn at prompt[0]"),
    ([1, 2], "expected a JSON object, got list"),
]  # fmt: skip


def test_bad_records_are_rejected_with_line_and_reason(tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = _jsonl(tmp_path / "p.jsonl", [good] + [record for record, _ in BAD])
    pairs, rejects = read_preferences(path)
    assert len(pairs) == 1
    assert [r.line for r in rejects] == list(range(2, 2 + len(BAD)))
    for reject, (_, reason) in zip(rejects, BAD, strict=True):
        assert reason in reject.reason, (reject.reason, reason)
        assert reject.path == str(path)


def test_bad_hh_records(tmp_path):
    records = [
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"},
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q"},
        {"chosen": "preamble\n\nHuman: q\n\nAssistant: a",
         "rejected": "preamble\n\nHuman: q\n\nAssistant: b"},
    ]  # fmt: skip
    pairs, rejects = read_preferences(_jsonl(tmp_path / "hh.jsonl", records))
    assert [p.chosen for p in pairs] == ["a"]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "'chosen' and 'rejected' continue different conversations"),
        (3, "'rejected' has no '\\n\\nAssistant:' turn"),
        (4, "the transcript must start with '\\n\\nHuman:'"),
    ]


def test_a_record_of_another_layout_is_a_reject_once_the_file_layout_is_known(tmp_path):
    records = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"instruction": "q", "chosen": "a", "rejected": "b"},
    ]
    pairs, rejects = read_preferences(_jsonl(tmp_path / "p.jsonl", records))
    assert len(pairs) == 1 and [r.line for r in rejects] == [2]


def test_files_that_hold_no_pairs(tmp_path, test_data):
    with pytest.raises(InputError, match="unknown preference data format 'rlhf'"):
        read_preferences(ASSET / "translate_zh_en.jsonl", "rlhf")
    with pytest.raises(InputError, match="looks like a known preference data format"):
        read_preferences(test_data / "sft" / "alpaca_zh_demo.json")
    for kto in ("sft/kto_en_demo.messages.jsonl.gz", "preference/kto_en_demo.json"):
        with pytest.raises(InputError, match="not preference pairs.*`loss: kto`"):
            read_preferences(test_data / kto)
    sft = _jsonl(tmp_path / "sft.jsonl", [{"conversations": [{"from": "human", "value": "q"}]}])
    pairs, rejects = read_preferences(sft)  # sharegpt without answers: every record a reject
    assert pairs == [] and "'chosen' must be a non-empty answer" in rejects[0].reason


def test_margins_from_margin_or_scores(tmp_path):
    records = [
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2},
        {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 8.5, "score_rejected": 6},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 8.5},
    ]
    pairs, rejects = read_preferences(_jsonl(tmp_path / "m.jsonl", records))
    assert [p.margin for p in pairs] == [2.0, 2.5, None]
    assert [(r.line, r.reason) for r in rejects] == [
        (4, "field 'margin' must be a finite number, got str"),
        (5, "field 'score_rejected' must be a finite number, got nothing (missing or null)"),
    ]


def test_llama_factory_kto_demo(test_data):
    """LLaMA-Factory's KTO demo: 300 `{messages, label}` records, the last message the
    answer, half of them desirable; multi-round prompts kept whole."""
    path = test_data / "preference" / "kto_en_demo.json"
    records = json.loads(path.read_text("utf-8"))
    samples, rejects = read_unpaired(path)
    assert rejects == [] and len(samples) == len(records) == 300
    for i, (sample, record) in enumerate(zip(samples, records, strict=True)):
        turns = [(m["role"], m["content"]) for m in record["messages"]]
        assert (sample.prompt, sample.completion) == (tuple(turns[:-1]), turns[-1][1])
        assert sample.desirable is record["label"] and sample.origin == f"{path}:{i + 1}"
    assert sum(s.desirable for s in samples) == 150
    assert sum(len(s.prompt) > 1 for s in samples) == 77
    assert {detect_format(r) for r in records} == {"kto"}


def test_each_unpaired_layout(tmp_path):
    """LLaMA-Factory's messages and TRL's prompt/completion (strings or messages) read to the
    same labelled answer."""
    expected = Unpaired((("user", "2+2?"),), "4", False, system="Be brief.")
    records = [
        {"messages": [SYSTEM, QUESTION, _m("assistant", "4")], "label": False},
        {"system": "Be brief.", "prompt": "2+2?", "completion": "4", "label": False},
        {"prompt": [SYSTEM, QUESTION], "completion": [_m("assistant", "4")], "label": False},
        {"prompt": [SYSTEM, QUESTION], "completion": _m("assistant", "4"), "label": False},
    ]
    path = _jsonl(tmp_path / "kto.jsonl", records)
    for given in (None, "kto"):
        samples, rejects = read_unpaired(path, given)
        assert rejects == []
        assert samples == [replace(expected, origin=f"{path}:{i + 1}") for i in range(len(records))]


def test_pairs_are_unpaired_chosen_desirable_then_rejected_undesirable():
    """TRL's `unpair_preference_dataset`: every chosen answer desirable, then every rejected
    one undesirable, with the pair's prompt, system and origin."""
    pairs, _ = read_preferences(ASSET / "translate_zh_en.jsonl")
    samples, rejects = read_unpaired(ASSET / "translate_zh_en.jsonl")
    assert rejects == [] and len(samples) == 2 * len(pairs) == 600
    for pair, good, bad in zip(pairs, samples[:300], samples[300:], strict=True):
        assert good == Unpaired(pair.prompt, pair.chosen, True, pair.system, pair.origin)
        assert bad == Unpaired(pair.prompt, pair.rejected, False, pair.system, pair.origin)


def test_bad_unpaired_records_are_rejected_with_line_and_reason(tmp_path):
    records = [
        {"prompt": "q", "completion": "a", "label": True},
        {"prompt": "q", "completion": "a", "label": "yes"},
        {"prompt": "q", "completion": "a", "label": 1},
        {"prompt": "q", "completion": "a"},
        {"messages": [_m("user", "q"), _m("assistant", "a")], "label": None},
        {"messages": [_m("user", "q")], "label": True},
        {"prompt": "q", "completion": [_m("user", "a")], "label": False},
        {"prompt": "", "completion": "a", "label": False},
        {"prompt": "q", "completion": "  ", "label": False},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    path = _jsonl(tmp_path / "kto.jsonl", records)
    samples, rejects = read_unpaired(path)
    assert [(s.completion, s.desirable) for s in samples] == [("a", True)]
    assert {r.path for r in rejects} == {str(path)}
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "field 'label' must be true or false, got str"),
        (3, "field 'label' must be true or false, got int"),
        (4, "field 'label' must be true or false, got nothing (missing or null)"),
        (5, "field 'label' must be true or false, got nothing (missing or null)"),
        (6, "the conversation must end with an answer: messages[0] ('user') is a user turn "
            "with no answer after it"),
        (7, "'completion' must be an assistant message, got role 'user'"),
        (8, "empty prompt"),
        (9, "empty answer ('completion')"),
        (10, "field 'label' must be true or false, got nothing (missing or null)"),
    ]  # fmt: skip
