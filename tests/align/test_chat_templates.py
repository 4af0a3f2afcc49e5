"""Chat templates: what each format trains on, token by token, for every reader; the Jinja
template written into the tokenizer dir gives the same ids and the same assistant mask."""

from __future__ import annotations

import json

import pytest

from chuan.align.conversations import read_conversations
from chuan.errors import InputError
from chuan.model.loss import IGNORE_INDEX
from chuan.tokenizer.chat_templates import (
    TEMPLATE_NAMES,
    get_template,
    record_template,
    template_for,
)
from chuan.tokenizer.hf import load_tokenizer

SYSTEM = "You translate."
ROUNDS = [("起初神创造天地", "In the beginning God created"), ("And God said", "神说要有光")]
EOS = 2

# The same conversation (a system message and two rounds) in each reader's layout.
RECORDS = {
    "alpaca": {
        "instruction": ROUNDS[1][0],
        "output": ROUNDS[1][1],
        "system": SYSTEM,
        "history": [list(ROUNDS[0])],
    },
    "sharegpt": {
        "conversations": [
            {"from": "system", "value": SYSTEM},
            {"from": "human", "value": ROUNDS[0][0]},
            {"from": "gpt", "value": ROUNDS[0][1]},
            {"from": "human", "value": ROUNDS[1][0]},
            {"from": "gpt", "value": ROUNDS[1][1]},
        ]
    },
    "messages": {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": ROUNDS[0][0]},
            {"role": "assistant", "content": ROUNDS[0][1]},
            {"role": "user", "content": ROUNDS[1][0]},
            {"role": "assistant", "content": ROUNDS[1][1]},
        ]
    },
}
MESSAGES = RECORDS["messages"]["messages"]

# Each format's text, written out by hand (markers as the test vocabulary has them).
EXPECTED_TEXT = {
    "baichuan2": "You translate.<reserved_106>起初神创造天地<reserved_107>In the beginning God "
    "created<reserved_106>And God said<reserved_107>神说要有光</s>",
    "chatml": "<reserved_108>system\nYou translate.<reserved_109>\n"
    "<reserved_108>user\n起初神创造天地<reserved_109>\n"
    "<reserved_108>assistant\nIn the beginning God created<reserved_109>\n"
    "<reserved_108>user\nAnd God said<reserved_109>\n"
    "<reserved_108>assistant\n神说要有光<reserved_109>\n",
    "llama2": "<s>[INST] <<SYS>>\nYou translate.\n<</SYS>>\n\n起初神创造天地 [/INST] In the "
    "beginning God created </s><s>[INST] And God said [/INST] 神说要有光 </s>",
    "plain": "You translate.\n起初神创造天地\nIn the beginning God created</s>And God said\n"
    "神说要有光</s>",
}
# What the loss teaches, per answer: the labels of each trained run, decoded.
EXPECTED_TARGETS = {
    "baichuan2": ["In the beginning God created</s>", "神说要有光</s>"],
    "chatml": ["In the beginning God created<reserved_109>", "神说要有光<reserved_109>"],
    "llama2": ["In the beginning God created </s>", "神说要有光 </s>"],
    "plain": ["In the beginning God created</s>", "神说要有光</s>"],
}


def _trained_runs(tokenizer, labels: list[int]) -> list[str]:
    """The labels of each run of trained positions, decoded (special tokens kept)."""
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False).strip())
            current = []
    return runs


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    """The conversation as each reader returns it from a file."""
    root = tmp_path_factory.mktemp("readers")
    out = {}
    for fmt, record in RECORDS.items():
        path = root / f"{fmt}.jsonl"
        path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        (conversation,), rejects = read_conversations(path)
        assert not rejects
        out[fmt] = conversation
    return out


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_reader_gives_the_same_training_sample(sft_tokenizer, conversations, name):
    template = get_template(name, sft_tokenizer)
    samples = template.encode([(c.system, c.messages) for c in conversations.values()])
    first = samples[0]
    assert all(s == first for s in samples[1:])
    assert template.text(MESSAGES, add_generation_prompt=False) == EXPECTED_TEXT[name]
    expected_ids = sft_tokenizer(EXPECTED_TEXT[name], add_special_tokens=False)["input_ids"]
    assert first.input_ids == expected_ids
    assert _trained_runs(sft_tokenizer, first.labels) == EXPECTED_TARGETS[name]


def test_baichuan2_is_id_concatenation_with_eos_labels(sft_tokenizer):
    """baichuan-inc/Baichuan2 fine-tune.py, position by position: [195] + question with the
    label EOS at the 195 after an answer, [196] + answer labelled as itself, EOS at the end;
    no EOS between turns in the input."""

    def enc(text: str) -> list[int]:
        return sft_tokenizer.encode(text, add_special_tokens=False)

    (q1, a1), (q2, a2) = ((enc(q), enc(a)) for q, a in ROUNDS)
    ids = enc(SYSTEM) + [195, *q1, 196, *a1, 195, *q2, 196, *a2, EOS]
    no = [IGNORE_INDEX]
    labels = (
        no * len(enc(SYSTEM))
        + no * (1 + len(q1) + 1)
        + a1
        + [EOS]
        + no * (len(q2) + 1)
        + a2
        + [EOS]
    )
    (sample,) = get_template("baichuan2", sft_tokenizer).encode([(SYSTEM, _turns())])
    assert sample.input_ids == ids
    assert sample.labels == labels
    assert ids.count(EOS) == 1


def _turns():
    return tuple((role, text) for q, a in ROUNDS for role, text in (("user", q), ("assistant", a)))


@pytest.mark.interop
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_jinja_template_gives_the_same_ids_and_assistant_mask(sft_tokenizer, name):
    template = get_template(name, sft_tokenizer)
    for mask_history in (False, True):
        (sample,) = template.encode([(SYSTEM, _turns())], mask_history=mask_history)
        out = sft_tokenizer.apply_chat_template(
            MESSAGES,
            chat_template=template.jinja(),
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert out["input_ids"] == sample.input_ids
        trained = [int(label != IGNORE_INDEX) for label in sample.labels]
        if not mask_history:
            assert out["assistant_masks"] == trained
        else:  # only the last answer: a suffix of the Jinja mask
            last = trained.index(1)
            assert sum(trained) < sum(out["assistant_masks"])
            assert trained[last:] == out["assistant_masks"][last:]
            assert len(_trained_runs(sft_tokenizer, sample.labels)) == 1
    # The generation prompt: the conversation without its last answer, then the header.
    prompt = sft_tokenizer.apply_chat_template(
        MESSAGES[:-1], chat_template=template.jinja(), add_generation_prompt=True
    )["input_ids"]
    assert prompt == template.prompt_ids(MESSAGES[:-1])


def test_template_recorded_in_a_dir_is_what_chat_uses(sft_tokenizer, bible, tmp_path):
    import shutil

    for name in ("chatml", "baichuan2"):
        target = tmp_path / name
        shutil.copytree(bible["tokenizer"], target)
        record_template(target, get_template(name, sft_tokenizer))
        reloaded = load_tokenizer(target)
        assert template_for(reloaded).name == name
        assert reloaded.apply_chat_template(MESSAGES[:-1], add_generation_prompt=True)[
            "input_ids"
        ] == get_template(name, sft_tokenizer).prompt_ids(MESSAGES[:-1])
    # A dir that records none is a Baichuan base model: Baichuan 2's format.
    assert template_for(load_tokenizer(bible["tokenizer"])).name == "baichuan2"


def test_stop_ids_and_markers(sft_tokenizer):
    chatml = get_template("chatml", sft_tokenizer)
    # chuan's vocabulary has no <|im_start|>: two reserved pieces stand in, no new rows.
    assert (chatml.start, chatml.end) == ("<reserved_108>", "<reserved_109>")
    assert chatml.stop_ids == [EOS, sft_tokenizer.convert_tokens_to_ids("<reserved_109>")]
    assert get_template("baichuan2", sft_tokenizer).stop_ids == [EOS]


def test_bad_template_choices_are_clear(sft_tokenizer, test_data):
    with pytest.raises(InputError, match="unknown chat template 'alpaca'; choose one of"):
        get_template("alpaca", sft_tokenizer)
    llama = load_tokenizer(test_data / "tokenizers" / "llama" / "tokenizer.model")
    with pytest.raises(InputError, match="id 195 is '<0xC0>', not a <reserved_N> piece"):
        get_template("baichuan2", llama)
    with pytest.raises(InputError, match="needs the token '<reserved_108>'"):
        get_template("chatml", llama)
    # LLaMA's own format works with LLaMA's vocabulary.
    assert get_template("llama2", llama).prompt_ids(MESSAGES[:2])[0] == llama.bos_token_id
