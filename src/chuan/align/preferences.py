"""Preference data: five public record layouts read into one `Preference` (a prompt, a
chosen and a rejected answer), and one of unpaired data read into `Unpaired` (a prompt and
one answer labelled desirable or not), for KTO.

- `pairwise`: TRL's preference layout (`trl` docs, "Dataset formats"): `{prompt, chosen,
  rejected}` as strings, or conversational (`prompt` a list of `{role, content}` messages,
  `chosen`/`rejected` one assistant message each, as a one-element list or a bare object), or
  with an implicit prompt (no `prompt`: `chosen` and `rejected` are whole conversations that
  share every message but the last).
- `alpaca`: LLaMA-Factory's alpaca preference layout (`data/README.md`): `{instruction,
  input?, chosen, rejected, system?, history?}`.
- `sharegpt`: LLaMA-Factory's sharegpt preference layout (its `dpo_en_demo.json`):
  `{conversations: [{from, value}], chosen: {from, value}, rejected: {from, value}}`.
- `colossal`: ColossalChat's (`applications/ColossalChat`, `tokenize_rlhf`) `{context: [{from,
  content}], chosen, rejected}`, each answer one `{from: assistant, content}` message or a
  one-element list of it.
- `hh`: Anthropic hh-rlhf: `chosen` and `rejected` are whole transcripts
  `"\\n\\nHuman: ...\\n\\nAssistant: ..."`; the prompt is everything before the last
  `"\\n\\nAssistant:"`, and must be the same in both.
- `kto` (unpaired): LLaMA-Factory's `{messages: [{role, content}], label}` (its
  `kto_en_demo.json`; the last message is the answer), or TRL's unpaired preference layout
  `{prompt, completion, label}` (strings, or a prompt message list and one assistant message);
  `label` is true (a desirable answer) or false.

Any layout may carry how much better the chosen answer is: `margin` (a number), or
`score_chosen` and `score_rejected` (UltraFeedback's fields; the margin is their difference).
Reward models can train on it and report accuracy by it. A prompt starts and ends with a user
turn and alternates; the answers are non-empty and differ. A record that breaks any of this is
a `Reject` with file, line and reason, never fatal, as in `chuan.align.conversations`, whose
message checks these readers share.

Pairs and unpaired answers are different data: `read_preferences` refuses a `kto` file (a
pair loss has nothing to compare its one answer with), and `read_unpaired` reads both, each
pair as two labelled answers, as TRL's `unpair_preference_dataset` does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chuan.align.conversations import (
    MESSAGES_ROLES,
    SHAREGPT_TAGS,
    TOOL_TAGS,
    Conversation,
    Layouts,
    RecordRejected,
    Reject,
    describe_value,
    message_list,
    read_records,
    to_conversation,
)
from chuan.errors import InputError

FORMATS = ("pairwise", "alpaca", "sharegpt", "colossal", "hh", "kto")

_SIGNS = {
    "pairwise": "'prompt', 'chosen' and 'rejected' (or 'chosen' and 'rejected' message lists)",
    "alpaca": "'instruction', 'chosen' and 'rejected'",
    "sharegpt": "a 'conversations' list with 'chosen' and 'rejected'",
    "colossal": "a 'context' list with 'chosen' and 'rejected'",
    "hh": "'chosen' and 'rejected' transcripts with '\\n\\nHuman:' / '\\n\\nAssistant:'",
    "kto": "a 'messages' list with a 'label', or 'prompt', 'completion' and 'label'",
}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class Preference:
    """A prompt (user/assistant turns that start and end with a user turn), the preferred
    and the dispreferred answer to it, the system text ("" when none), how much better the
    chosen answer is (None when the record does not say), and "path:line" of the record.

    A KTO sample is carried as a pair too (`chuan.align.pair_data.kl_pairs`): `chosen` is its
    answer, `desirable` its label, and `rejected` another sample's answer (the KL row);
    `desirable` is None for a true pair."""

    prompt: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str
    system: str = ""
    margin: float | None = None
    origin: str = ""
    desirable: bool | None = None

    def conversation(self, answer: str) -> Conversation:
        """The prompt answered with `answer`, as SFT data would hold it."""
        return Conversation((*self.prompt, ("assistant", answer)), self.system, self.origin)


@dataclass(frozen=True)
class Unpaired:
    """A prompt (as in `Preference`), one answer to it, whether that answer is desirable,
    the system text ("" when none) and "path:line" of the record."""

    prompt: tuple[tuple[str, str], ...]
    completion: str
    desirable: bool
    system: str = ""
    origin: str = ""


def detect_format(record: dict) -> str | None:
    """The layout a record looks like, from its keys alone, or None."""
    if "completion" in record or (isinstance(record.get("messages"), list) and "label" in record):
        return "kto"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if "instruction" in record and "chosen" in record:
        return "alpaca"
    if isinstance(record.get("context"), list):
        return "colossal"
    chosen = record.get("chosen")
    if "prompt" in record or (isinstance(chosen, list) and "rejected" in record):
        return "pairwise"
    if isinstance(chosen, str) and "\n\nAssistant:" in chosen:
        return "hh"
    return None


def to_record(record: dict, format: str) -> Preference | Unpaired:
    """Read one record of the given layout (`kto`: an `Unpaired`, else a `Preference`);
    raises `RecordRejected` for one that is not valid."""
    if format == "kto":
        return _kto(record)
    return replace(_READERS[format](record), margin=_margin(record))


def _margin(record: dict) -> float | None:
    if "margin" in record:
        return _number(record, "margin")
    if "score_chosen" in record or "score_rejected" in record:
        return _number(record, "score_chosen") - _number(record, "score_rejected")
    return None


def _number(record: dict, field: str) -> float:
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordRejected(f"field {field!r} must be a finite number, {describe_value(value)}")
    return float(value)


LAYOUTS = Layouts("preference data", FORMATS, detect_format, to_record, _SIGNS)


def read_preferences(
    path: str | Path, format: str | None = None
) -> tuple[list[Preference], list[Reject]]:
    """Every pair of one preference file and a `Reject` for every bad record (the reading
    rules of `chuan.align.conversations.read_records`); a file of unpaired answers is an
    `InputError`."""
    records, rejects = read_records(path, format, LAYOUTS)
    if records and isinstance(records[0], Unpaired):
        raise InputError(
            f"{path}: unpaired records (one answer with a 'label' each, format kto), not "
            "preference pairs; `chuan dpo` trains on them with `loss: kto`"
        )
    return records, rejects


def read_unpaired(
    path: str | Path, format: str | None = None
) -> tuple[list[Unpaired], list[Reject]]:
    """Every labelled answer of one file (`kto`, or any pair layout) and a `Reject` for every
    bad record. Pairs become two answers each, every chosen one desirable and then every
    rejected one undesirable (TRL's `unpair_preference_dataset`, `trl/data_utils.py`), so
    the two answers to one prompt are not neighbours."""
    records, rejects = read_records(path, format, LAYOUTS)
    if records and isinstance(records[0], Preference):
        records = [
            *(_unpaired(pair, pair.chosen, True) for pair in records),
            *(_unpaired(pair, pair.rejected, False) for pair in records),
        ]
    return records, rejects


def _unpaired(pair: Preference, answer: str, desirable: bool) -> Unpaired:
    return Unpaired(pair.prompt, answer, desirable, pair.system, pair.origin)


# -- checks shared by the layouts ------------------------------------------------------------


def _pair(prompt: Conversation, chosen: str, rejected: str) -> Preference:
    """`prompt` is a checked conversation whose last message is a placeholder answer."""
    if chosen == rejected:
        raise RecordRejected("chosen and rejected are the same answer")
    return Preference(prompt.messages[:-1], chosen, rejected, prompt.system)


def _answer(value: Any, field: str, keys: tuple[str, str], tags: dict[str, str]) -> str:
    """The text of one answer: a string, or one assistant message (bare or in a list)."""
    role_key, content_key = keys
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordRejected(
                f"{field!r} must hold exactly one assistant message, got {len(value)}"
            )
        value = value[0]
    if isinstance(value, dict):
        tag = value.get(role_key)
        if tags.get(tag) != "assistant":
            raise RecordRejected(f"{field!r} must be an assistant message, got {role_key} {tag!r}")
        value = value.get(content_key)
    if not isinstance(value, str):
        raise RecordRejected(f"{field!r} must be a non-empty answer, {describe_value(value)}")
    if not value.strip():
        raise RecordRejected(f"empty answer ({field!r})")
    return value


def _prompt(
    record: dict,
    field: str,
    keys: tuple[str, str],
    tags: dict[str, str],
    tool_tags: tuple[str, ...] = (),
) -> Conversation:
    """A prompt message list checked as a conversation, with a placeholder answer after its
    last (user) message so the conversation checks apply unchanged."""
    role_key, content_key = keys
    messages = record.get(field)
    if not isinstance(messages, list) or not messages:
        raise RecordRejected(f"field {field!r} must be a non-empty list of messages")
    last = messages[-1]
    tag = last.get(role_key) if isinstance(last, dict) else None
    if tags.get(tag) != "user" and tag not in tool_tags:
        raise RecordRejected(
            f"the prompt must end with a user turn: {field}[{len(messages) - 1}] is {tag!r}"
        )
    answer_tag = next(t for t, role in tags.items() if role == "assistant")
    placeholder = {role_key: answer_tag, content_key: "·"}
    return message_list({**record, field: [*messages, placeholder]}, field, keys, tags, tool_tags)


# -- the layouts -----------------------------------------------------------------------------


def _sharegpt(record: dict) -> Preference:
    keys = ("from", "value")
    chosen = _answer(record.get("chosen"), "chosen", keys, SHAREGPT_TAGS)
    rejected = _answer(record.get("rejected"), "rejected", keys, SHAREGPT_TAGS)
    prompt = _prompt(record, "conversations", keys, SHAREGPT_TAGS, TOOL_TAGS["sharegpt"])
    return _pair(prompt, chosen, rejected)


def _colossal(record: dict) -> Preference:
    keys = ("from", "content")
    chosen = _answer(record.get("chosen"), "chosen", keys, SHAREGPT_TAGS)
    rejected = _answer(record.get("rejected"), "rejected", keys, SHAREGPT_TAGS)
    return _pair(_prompt(record, "context", keys, SHAREGPT_TAGS), chosen, rejected)


def _alpaca(record: dict) -> Preference:
    keys = ("role", "content")
    chosen = _answer(record.get("chosen"), "chosen", keys, MESSAGES_ROLES)
    rejected = _answer(record.get("rejected"), "rejected", keys, MESSAGES_ROLES)
    fields = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    return _pair(to_conversation({**fields, "output": chosen}, "alpaca"), chosen, rejected)


def _pairwise(record: dict) -> Preference:
    prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
    if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
    answers = (
        _answer(chosen, "chosen", _TRL_KEYS, MESSAGES_ROLES),
        _answer(rejected, "rejected", _TRL_KEYS, MESSAGES_ROLES),
    )
    return _pair(trl_prompt(prompt, record.get("system")), *answers)


_TRL_KEYS = ("role", "content")


def trl_prompt(prompt: Any, system: Any) -> Conversation:
    """TRL's `prompt`: a string (one user turn) or a message list, checked by `_prompt`."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RecordRejected("empty prompt")
        prompt = [{"role": "user", "content": prompt}]
    fields = {"system": system, "prompt": prompt}
    return _prompt(fields, "prompt", _TRL_KEYS, MESSAGES_ROLES, TOOL_TAGS["messages"])


def _split_implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL's implicit prompt: the messages both conversations share, then one answer each."""
    if len(chosen) != len(rejected) or chosen[:-1] != rejected[:-1]:
        raise RecordRejected(
            "with no 'prompt', 'chosen' and 'rejected' must be the same conversation up to "
            "their last (assistant) message"
        )
    return chosen[:-1], chosen[-1:], rejected[-1:]


def _kto(record: dict) -> Unpaired:
    label = record.get("label")
    if not isinstance(label, bool):
        raise RecordRejected(f"field 'label' must be true or false, {describe_value(label)}")
    if "messages" in record:  # LLaMA-Factory: the whole conversation, the answer last
        conversation = message_list(
            record, "messages", _TRL_KEYS, MESSAGES_ROLES, TOOL_TAGS["messages"]
        )
        *prompt, (_, completion) = conversation.messages
        return Unpaired(tuple(prompt), completion, label, conversation.system)
    completion = _answer(record.get("completion"), "completion", _TRL_KEYS, MESSAGES_ROLES)
    prompt = trl_prompt(record.get("prompt"), record.get("system"))
    return Unpaired(prompt.messages[:-1], completion, label, prompt.system)


def _hh(record: dict) -> Preference:
    prompts, answers = [], []
    for field in ("chosen", "rejected"):
        transcript = record.get(field)
        if not isinstance(transcript, str):
            raise RecordRejected(f"field {field!r} must be a transcript string")
        cut = transcript.rfind("\n\nAssistant:")
        if cut < 0:
            raise RecordRejected(f"{field!r} has no '\\n\\nAssistant:' turn")
        prompts.append(transcript[:cut])
        answers.append(_answer(_hh_text(transcript[cut + 12 :]), field, ("", ""), {}))
    if prompts[0] != prompts[1]:
        raise RecordRejected("'chosen' and 'rejected' continue different conversations")
    return _pair(_prompt({"turns": _hh_turns(prompts[0])}, "turns", *_HH_KEYS), *answers)


_HH_KEYS = (("role", "content"), MESSAGES_ROLES)


def _hh_text(text: str) -> str:
    """A turn's text: the space after the speaker's colon belongs to the transcript layout."""
    return text.removeprefix(" ")


def _hh_turns(transcript: str) -> list[dict]:
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise RecordRejected("the transcript must start with '\\n\\nHuman:'")
    return [
        {"role": _HH_ROLES[speaker], "content": _hh_text(text)}
        for speaker, text in zip(parts[1::2], parts[2::2], strict=True)
    ]


_READERS = {
    "pairwise": _pairwise,
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "colossal": _colossal,
    "hh": _hh,
}
