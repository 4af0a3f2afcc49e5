"""SFT data readers: four record layouts to one `Conversation`, bad records to `Reject`s."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chuan.align.conversations import (
    FORMATS,
    ROLES,
    Conversation,
    RecordRejected,
    Reject,
    detect_format,
    read_conversations,
    to_conversation,
)
from chuan.documents import RecordError
from chuan.errors import InputError, MissingError

ASSET = Path(__file__).resolve().parents[2] / "src" / "chuan" / "assets" / "sft"


def _jsonl(path: Path, lines: list) -> Path:
    """Write records (or raw strings, written as they are) one per line."""
    text = "".join(
        (x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines
    )
    path.write_text(text, encoding="utf-8")
    return path


def _alternates(conversation: Conversation) -> bool:
    roles = [role for role, _ in conversation.messages]
    return len(roles) % 2 == 0 and roles == [ROLES[i % 2] for i in range(len(roles))]


# --- each layout, to the exact conversation ---------------------------------------------------


def test_alpaca_with_input_joins_instruction_and_input_by_a_newline():
    record = {
        "instruction": "Translate into Chinese.",
        "input": "Good morning.",
        "output": "早上好。",
    }
    assert to_conversation(record, "alpaca") == Conversation(
        (("user", "Translate into Chinese.\nGood morning."), ("assistant", "早上好。"))
    )


@pytest.mark.parametrize("extra", [{"input": ""}, {"input": None}, {}])
def test_alpaca_without_input_is_the_instruction_alone(extra):
    record = {"instruction": "Name a prime number.", "output": " 7 ", **extra}
    assert to_conversation(record, "alpaca") == Conversation(
        (("user", "Name a prime number."), ("assistant", " 7 "))  # content kept verbatim
    )


def test_alpaca_system_and_history_become_the_system_text_and_earlier_turns():
    record = {
        "system": "你是一个翻译助手。",
        "history": [["你好", "你好！有什么可以帮你？"], ["翻译：猫", "cat"]],
        "instruction": "翻译：",
        "input": "狗",
        "output": "dog",
    }
    assert to_conversation(record, "alpaca") == Conversation(
        messages=(
            ("user", "你好"),
            ("assistant", "你好！有什么可以帮你？"),
            ("user", "翻译：猫"),
            ("assistant", "cat"),
            ("user", "翻译：\n狗"),
            ("assistant", "dog"),
        ),
        system="你是一个翻译助手。",
    )


def test_alpaca_with_only_an_input_asks_the_input():
    record = {"instruction": "", "input": "2+2=?", "output": "4"}
    assert to_conversation(record, "alpaca").messages == (("user", "2+2=?"), ("assistant", "4"))


def test_sharegpt_with_a_system_message_first():
    record = {
        "id": "identity_0",
        "conversations": [
            {"from": "system", "value": "Answer briefly."},
            {"from": "human", "value": "Capital of France?"},
            {"from": "gpt", "value": "Paris."},
            {"from": "human", "value": "And of Italy?"},
            {"from": "gpt", "value": "Rome."},
        ],
    }
    assert to_conversation(record, "sharegpt") == Conversation(
        messages=(
            ("user", "Capital of France?"),
            ("assistant", "Paris."),
            ("user", "And of Italy?"),
            ("assistant", "Rome."),
        ),
        system="Answer briefly.",
    )


def test_sharegpt_reads_a_top_level_system_and_the_other_common_tags():
    record = {
        "system": "You are helpful.",
        "conversations": [
            {"from": "user", "value": "a"},
            {"from": "assistant", "value": "b"},
            {"from": "human", "value": "c"},
            {"from": "model", "value": "d"},
            {"from": "human", "value": "e"},
            {"from": "chatgpt", "value": "f"},
            {"from": "human", "value": "g"},
            {"from": "bing", "value": "h"},
            {"from": "human", "value": "i"},
            {"from": "bard", "value": "j"},
        ],
    }
    conversation = to_conversation(record, "sharegpt")
    assert conversation.system == "You are helpful."
    assert [content for _, content in conversation.messages] == list("abcdefghij")
    assert _alternates(conversation)


def test_messages_with_a_system_message():
    record = {
        "messages": [
            {"role": "system", "content": "你是百川。"},
            {"role": "user", "content": "你是谁？"},
            {"role": "assistant", "content": "我是百川。\n"},
        ],
        "label": True,
    }
    assert to_conversation(record, "messages") == Conversation(
        (("user", "你是谁？"), ("assistant", "我是百川。\n")), system="你是百川。"
    )


def test_colossal_is_one_question_and_one_answer():
    record = {"source": "问题：1+1=", "target": "2", "category": "math"}
    assert to_conversation(record, "colossal") == Conversation(
        (("user", "问题：1+1="), ("assistant", "2"))
    )


# --- format detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"instruction": "q", "input": "", "output": "a"}, "alpaca"),
        ({"instruction": "q", "output": "a", "history": []}, "alpaca"),
        ({"conversations": [], "id": 3}, "sharegpt"),
        ({"messages": [{"role": "user", "content": "q"}]}, "messages"),
        ({"source": "q", "target": "a", "category": "x"}, "colossal"),
        ({"text": "a document"}, None),
        ({"instruction": "q"}, None),  # no output: not alpaca-shaped
        ({"conversations": "not a list"}, None),
        ({"target": "a"}, None),  # a Colossal pretraining record without source
        (["a", "list"], None),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_a_file_is_read_in_the_layout_of_its_first_record_that_has_one(tmp_path):
    path = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"text": "no layout"},
            "{broken",  # reported while reading, before line 1 is judged: rejects are sorted
            {"source": "q", "target": "a"},
            {"instruction": "q", "output": "a"},  # another layout: a reject in this file
        ],
    )
    conversations, rejects = read_conversations(path)
    assert [c.origin for c in conversations] == [f"{path}:3"]
    assert [(r.line, r.reason.split(" (")[0]) for r in rejects] == [
        (1, "missing field 'source'"),
        (2, "invalid JSON"),
        (4, "missing field 'source'"),
    ]


def test_a_file_with_no_known_layout_asks_for_the_format(tmp_path):
    path = _jsonl(tmp_path / "corpus.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(InputError) as error:
        read_conversations(path)
    message = str(error.value)
    assert str(path) in message and "`format:`" in message
    assert all(name in message for name in FORMATS)


def test_an_empty_file_has_no_conversations(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    assert read_conversations(path) == ([], [])


def test_a_given_format_is_not_second_guessed(tmp_path):
    path = _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "q", "output": "a"}])
    conversations, rejects = read_conversations(path, "sharegpt")
    assert conversations == []
    assert rejects == [Reject(str(path), 1, "field 'conversations' must be a list of messages, "
                                            "got nothing (missing or null)")]  # fmt: skip


# --- rejects ----------------------------------------------------------------------------------


def _turns(*pairs: tuple[str, str], key=("from", "value")) -> list[dict]:
    return [{key[0]: tag, key[1]: text} for tag, text in pairs]


BAD_RECORDS = [
    # (format, record, the reason holds)
    ("alpaca", {"instruction": "q"}, "missing field 'output'"),
    ("alpaca", {"output": "a"}, "missing field 'instruction'"),
    ("alpaca", {"instruction": 1, "output": "a"}, "field 'instruction' must be a string, got int"),
    ("alpaca", {"instruction": "q", "output": " \n"}, "empty answer ('output')"),
    ("alpaca", {"instruction": "", "input": "", "output": "a"}, "empty question"),
    ("alpaca", {"instruction": " ", "output": "a"}, "empty question"),
    ("alpaca", {"instruction": "q", "output": "a", "system": ["s"]}, "field 'system'"),
    ("alpaca", {"instruction": "q", "output": "a", "history": "x"}, "malformed history"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["x"]]},
     "malformed history: history[0]"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["x", 1]]}, "malformed history"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["x", "y"], ["z", ""]]},
     "malformed history: empty answer (history[1][1])"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["", "y"]]},
     "empty question (history[0][0])"),
    ("sharegpt", {"conversations": []}, "no user or assistant turns"),
    ("sharegpt", {"conversations": _turns(("human", "q"), ("human", "q2"), ("gpt", "a"))},
     "expected an assistant turn at conversations[1], got 'human' (a user turn)"),
    ("sharegpt", {"conversations": _turns(("gpt", "a"), ("human", "q"))},
     "expected a user turn at conversations[0], got 'gpt' (an assistant turn)"),
    ("sharegpt", {"conversations": _turns(("human", "q"), ("gpt", "a"), ("human", "q2"))},
     "must end with an answer: conversations[2] ('human')"),
    ("sharegpt", {"conversations": _turns(("human", "q"), ("gpt", "  "))},
     "empty answer (conversations[1])"),
    ("sharegpt", {"conversations": _turns(("human", ""), ("gpt", "a"))},
     "empty question (conversations[0])"),
    ("sharegpt", {"conversations": _turns(("human", "q"), ("robot", "a"))},
     "unknown role tag 'robot' at conversations[1]"),
    ("sharegpt", {"conversations": _turns(("human", "q"), ("system", "s"), ("gpt", "a"))},
     "a system message is allowed only first: conversations[1]"),
    ("sharegpt", {"conversations": _turns(("human", "q"), ("function_call", "{}"),
                                          ("observation", "{}"), ("gpt", "a"))},
     "tool turns (observation/function_call) are not supported: conversations[1]"),
    ("sharegpt", {"system": "s1", "conversations": _turns(("system", "s2"), ("human", "q"),
                                                          ("gpt", "a"))},
     "two system texts"),
    ("sharegpt", {"conversations": ["q", "a"]}, "conversations[0] must be an object"),
    ("sharegpt", {"conversations": [{"value": "q"}]}, "conversations[0]: 'from' must be a string"),
    ("sharegpt", {"conversations": _turns(("human", None), ("gpt", "a"))},
     "conversations[0]: 'value' must be a string, got nothing"),
    ("messages", {"messages": _turns(("user", "q"), ("assistant", "a"), ("system", "s"),
                                     key=("role", "content"))},
     "a system message is allowed only first: messages[2]"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                               {"role": "assistant", "content": "a"}]},
     "messages[0]: 'content' must be a string, got list"),
    ("messages", {"messages": _turns(("user", "q"), ("tool", "{}"), key=("role", "content"))},
     "tool turns (observation/function_call) are not supported: messages[1]"),
    ("messages", {"messages": _turns(("user", "q"), ("gpt", "a"), key=("role", "content"))},
     "unknown role tag 'gpt' at messages[1]"),
    ("colossal", {"source": "q"}, "missing field 'target'"),
    ("colossal", {"source": "", "target": "a"}, "empty question (empty source)"),
    ("colossal", {"source": "q", "target": ""}, "empty answer ('target')"),
    ("colossal", {"source": "q", "target": None}, "missing field 'target'"),
]  # fmt: skip


@pytest.mark.parametrize(("format", "record", "reason"), BAD_RECORDS)
def test_a_bad_record_is_rejected_with_its_reason(format, record, reason):
    with pytest.raises(RecordRejected) as error:
        to_conversation(record, format)
    assert reason in error.value.reason
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("record", [["a", "list"], "text", 3, None])
def test_a_record_that_is_not_an_object_is_rejected(format, record):
    with pytest.raises(RecordRejected, match="expected a JSON object, got"):
        to_conversation(record, format)


def test_rejects_name_path_and_line_and_reading_goes_on(tmp_path):
    good = {"conversations": _turns(("human", "q"), ("gpt", "a"))}
    lines = [
        good,  # 1
        {"conversations": _turns(("human", "q"), ("human", "q2"), ("gpt", "a"))},  # 2
        "",  # 3: blank lines are skipped, not rejected, and still counted
        {"conversations": _turns(("human", "q"), ("gpt", ""))},  # 4
        good,  # 5
        {"conversations": _turns(("human", "q"), ("robot", "a"))},  # 6
        {"conversations": _turns(("human", "q"), ("gpt", "a"), ("system", "s"))},  # 7
        {"conversations": _turns(("human", "q"), ("observation", "{}"), ("gpt", "a"))},  # 8
        '["not", "an object"]',  # 9
        "{not json",  # 10
        {"id": 1},  # 11: a missing field
        good,  # 12
    ]
    path = _jsonl(tmp_path / "sft.jsonl", lines)
    conversations, rejects = read_conversations(path)
    assert [c.origin for c in conversations] == [f"{path}:{n}" for n in (1, 5, 12)]
    assert all(c == Conversation((("user", "q"), ("assistant", "a")), origin=c.origin)
               for c in conversations)  # fmt: skip
    assert {r.path for r in rejects} == {str(path)}
    got = [(r.line, r.reason) for r in rejects]
    expected = [
        (2, "expected an assistant turn at conversations[1], got 'human'"),
        (4, "empty answer (conversations[1])"),
        (6, "unknown role tag 'robot'"),
        (7, "a system message is allowed only first: conversations[2]"),
        (8, "tool turns (observation/function_call) are not supported"),
        (9, "expected a JSON object, got list"),
        (10, "invalid JSON"),
        (11, "field 'conversations' must be a list of messages"),
    ]
    assert [line for line, _ in got] == [line for line, _ in expected]
    for (_, reason), (_, part) in zip(got, expected, strict=True):
        assert part in reason
    assert rejects[0].as_dict() == {"path": str(path), "line": 2, "reason": rejects[0].reason}


# --- files ------------------------------------------------------------------------------------


def test_a_json_array_file_numbers_its_records_not_its_lines(tmp_path):
    records = [
        {"instruction": "q1", "output": "a1"},
        {"instruction": "q2", "output": ""},
        {"instruction": "q3", "input": "x", "output": "a3"},
    ]
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")  # 14 lines
    conversations, rejects = read_conversations(path)
    assert [c.origin for c in conversations] == [f"{path}:1", f"{path}:3"]
    assert conversations[1].messages == (("user", "q3\nx"), ("assistant", "a3"))
    assert rejects == [Reject(str(path), 2, "empty answer ('output')")]


def test_a_broken_json_array_is_the_error_of_chuan_documents(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text('[\n  {"instruction": "q", "output": "a"},\n  {"instruction": \n', "utf-8")
    with pytest.raises(RecordError) as error:
        read_conversations(path, "alpaca")
    assert error.value.path == str(path) and error.value.line is not None
    assert "invalid JSON array" in str(error.value)


def test_a_gzipped_jsonl_file_with_a_bad_line(tmp_path):
    path = tmp_path / "sft.jsonl.gz"
    lines = [
        {"source": "q", "target": "a"},
        {"source": "q", "target": " "},
        {"source": "r", "target": "b"},
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    conversations, rejects = read_conversations(path)
    assert [c.messages[0][1] for c in conversations] == ["q", "r"]
    assert rejects == [Reject(str(path), 2, "empty answer ('target')")]


def test_a_parquet_file_numbers_its_rows(tmp_path):
    path = tmp_path / "sft.parquet"
    rows = [
        {"conversations": _turns(("human", "q"), ("gpt", "a")), "system": None},
        {"conversations": _turns(("human", "q"), ("gpt", "a"), ("human", "q")), "system": "s"},
        {"conversations": _turns(("human", "q"), ("gpt", "a")), "system": "s"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    conversations, rejects = read_conversations(path)
    assert [(c.origin, c.system) for c in conversations] == [(f"{path}:1", ""), (f"{path}:3", "s")]
    assert [r.line for r in rejects] == [2]


def test_an_unknown_format_name_lists_the_known_ones(tmp_path):
    path = _jsonl(tmp_path / "sft.jsonl", [{"instruction": "q", "output": "a"}])
    for call in (lambda: read_conversations(path, "openai"), lambda: to_conversation({}, "openai")):
        with pytest.raises(InputError) as error:
            call()
        assert "'openai'" in str(error.value)
        assert all(name in str(error.value) for name in FORMATS)


def test_a_missing_file(tmp_path):
    with pytest.raises(MissingError, match="nothing.jsonl"):
        read_conversations(tmp_path / "nothing.jsonl")
    with pytest.raises(MissingError):
        read_conversations(tmp_path / "nothing.jsonl", "alpaca")


def test_a_text_file_is_not_sft_data(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("q\ta\n", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported SFT data file"):
        read_conversations(path, "alpaca")


# --- real data --------------------------------------------------------------------------------


def test_the_bundled_translation_set():
    path = ASSET / "translate_zh_en.jsonl"
    conversations, rejects = read_conversations(path)
    assert (len(conversations), rejects) == (1000, [])
    assert conversations[0] == Conversation(
        (
            ("user", "Translate into Chinese.\nThe weather is unusually cold."),
            ("assistant", "天气非常寒冷。"),
        ),
        origin=f"{path}:1",
    )
    assert conversations[1].messages[0] == (
        "user",
        "把下面的句子翻译成英文。\n我不明白为什么你这么批评他。",
    )
    assert all(len(c.messages) == 2 and c.system == "" for c in conversations)


def test_llama_factory_alpaca_zh(test_data):
    path = test_data / "sft" / "alpaca_zh_demo.json"
    conversations, rejects = read_conversations(path)
    assert (len(conversations), rejects) == (30, [])
    second = conversations[1]
    assert second == Conversation(
        (
            (
                "user",
                "输入三支篮球队的名称并生成一个适当的口号。\n输入：俄克拉荷马城雷霆队，芝加哥公牛队，布鲁克林网队。",
            ),
            ("assistant", '输出： "雷霆，公牛和网队：各显神通，角逐群雄!"'),
        ),
        origin=f"{path}:2",
    )
    assert conversations[0].messages[0] == (
        "user",
        "识别并解释给定列表中的两个科学理论：细胞理论和日心说。",
    )
    assert sum("\n" in c.messages[0][1] for c in conversations) >= 5  # the 5 with an input


def test_llama_factory_sharegpt(test_data):
    path = test_data / "sft" / "dpo_en_demo_chosen.sharegpt.jsonl"
    conversations, rejects = read_conversations(path)
    assert (len(conversations), rejects) == (10, [])
    assert [c.origin.rsplit(":", 1)[1] for c in conversations if c.system] == ["2", "6", "9"]
    assert conversations[1].system.startswith("You are a teacher. Given a task, you explain")
    assert (
        conversations[5].system == "Explain how you used the definition to come up with the answer."
    )
    assert [len(c.messages) for c in conversations] == [2, 2, 2, 2, 6, 2, 2, 2, 2, 6]
    assert conversations[9].messages[0] == ("user", "Summarize how quantum computing works.")
    assert all(_alternates(c) for c in conversations)


def test_llama_factory_messages_gzipped(test_data):
    path = test_data / "sft" / "kto_en_demo.messages.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        assert detect_format(json.loads(f.readline())) == "messages"
    conversations, rejects = read_conversations(path)
    assert (len(conversations), rejects) == (10, [])
    assert [len(c.messages) for c in conversations] == [2, 6, 6, 2, 6, 6, 2, 4, 2, 2]
    assert conversations[0].messages[0][1].startswith("The Federal Trade Commission is going after")
    assert conversations[0].messages[1][1].endswith("*cheer* Woohoo!")
    assert all(_alternates(c) and c.system == "" for c in conversations)
