"""Supervised fine-tuning data: four public record layouts read into one `Conversation`.

Every later stage (chat templates, loss masks, packing, `--inspect`) sees only a
`Conversation`: optional system text, then user/assistant turns that start with the user, end
with an answer and strictly alternate. The layouts:

- `alpaca`: `{instruction, input?, output, system?, history?}`, hiyouga/LLaMA-Factory
  `data/README.md`. The user turn is `instruction` and `input` joined by "\\n", each only when
  non-empty, as in LLaMA-Factory's `AlpacaDatasetConverter`
  (`src/llamafactory/data/converter.py`); `history` holds earlier `[query, response]` pairs.
- `sharegpt`: `{conversations: [{from, value}], system?}`, LLaMA-Factory's sharegpt layout and
  the one of baichuan-inc/Baichuan2 `fine-tune/fine-tune.py` (its sample
  `fine-tune/data/belle_chat_ramdon_10k.json`). Baichuan 2 takes every `from` other than
  "human" for the assistant, so a typo'd tag trains as an answer; chuan accepts the common
  tags (`human`/`user`, `gpt`/`assistant`/`model`/`chatgpt`/`bing`/`bard`) and rejects any
  other, naming it.
- `messages`: OpenAI chat `{messages: [{role, content}]}` with string content (multi-part
  content lists are rejected).
- `colossal`: hpcaitech/ColossalAI `applications/Colossal-LLaMA-2/` `{source, target}`: one
  question, one answer.

In both message-list layouts the system text is a first message with role `system` or a
top-level `system` string; both at once is a reject, not a silent choice of one.

Where LLaMA-Factory skips a malformed example with a log line, chuan makes it a `Reject` with
file, line and reason, so a data set that loses records says how many and why. Bad records are
never fatal; a file that cannot be read through (a broken JSON array, corrupt compression) is,
with the error `chuan.documents` raises. Content is kept verbatim, whitespace included: the
template decides what separates turns.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chuan.documents import RecordError, format_of, iter_records
from chuan.errors import InputError, MissingError

ROLES = ("user", "assistant")
FORMATS = ("alpaca", "sharegpt", "messages", "colossal")

# sharegpt `from` tags -> roles. `system` is read apart (first message only).
SHAREGPT_TAGS = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
MESSAGES_ROLES = {"user": "user", "assistant": "assistant"}
# Tool calls and their results have no place in a user/assistant conversation yet.
TOOL_TAGS = {"sharegpt": ("observation", "function_call"), "messages": ("tool", "function")}
TOOL_REASON = "tool turns (observation/function_call) are not supported"
# What marks each layout (as `detect_format` reads it), for the error when nothing matches.
_SIGNS = {
    "alpaca": "'instruction' and 'output'",
    "sharegpt": "a 'conversations' list",
    "messages": "a 'messages' list",
    "colossal": "'source' and 'target'",
}


@dataclass(frozen=True)
class Conversation:
    """System text ("" when none) and the turns: user, assistant, user, assistant, ... (starts
    with user, ends with assistant, strictly alternating).

    `messages` holds `(role, content)` pairs, role one of `ROLES`; `origin` is "path:line" of
    the record it came from, for reports and `--inspect` ("" when built from a bare record).
    """

    messages: tuple[tuple[str, str], ...]
    system: str = ""
    origin: str = ""


@dataclass(frozen=True)
class Reject:
    """A record that did not become a conversation.

    `line` is the 1-based line of a JSONL file (also `.json` written as JSON Lines), and the
    1-based record index in a JSON array file or the 1-based row of a Parquet file.
    """

    path: str
    line: int
    reason: str

    def as_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "reason": self.reason}


class RecordRejected(ValueError):
    """A record that is not a usable conversation; `reason` says why (and where in the record)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def detect_format(record: dict) -> str | None:
    """The layout a record looks like, from its keys alone (the first match in `FORMATS`
    order), or None. Whether the record is valid is `to_conversation`'s question."""
    if not isinstance(record, dict):
        return None
    if "instruction" in record and "output" in record:
        return "alpaca"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if isinstance(record.get("messages"), list):
        return "messages"
    if "source" in record and "target" in record:
        return "colossal"
    return None


def to_conversation(record: dict, format: str) -> Conversation:
    """Read one record of the given layout; raises `RecordRejected` for a record that is not
    one valid conversation, and `InputError` for a format name chuan does not know."""
    SFT_LAYOUTS.check_format(format)
    if not isinstance(record, dict):
        raise RecordRejected(f"expected a JSON object, got {type(record).__name__}")
    return _READERS[format](record)


@dataclass(frozen=True)
class Layouts:
    """The record layouts of one kind of data file, for `read_records`: `detect(record)`
    names a record's layout (or None), `convert(record, format)` reads it or raises
    `RecordRejected`; `signs` says what marks each layout, for the error when none matches."""

    kind: str
    formats: tuple[str, ...]
    detect: Callable[[dict], str | None]
    convert: Callable[[dict, str], Any]
    signs: dict[str, str]

    def check_format(self, format: str) -> None:
        if format not in self.formats:
            raise InputError(
                f"unknown {self.kind} format {format!r}; expected one of {', '.join(self.formats)}"
            )


def read_records(
    path: str | Path, format: str | None, layouts: Layouts
) -> tuple[list, list[Reject]]:
    """Every record of one data file read by `layouts.convert` (with `origin` "path:line"),
    and a `Reject` for every bad record, in file order (bad records never stop the read).

    Files are read by `chuan.documents.iter_records`: `.jsonl`, `.json` (JSON Lines or one
    array), `.parquet`, the text ones optionally `.gz` / `.zst`. With `format` None the layout
    is taken from the first record that looks like one (`layouts.detect`) and applies to the
    whole file, so a record of another layout is a reject; a file where no record looks like
    any layout is an `InputError`, a file without records gives nothing.
    """
    if format is not None:
        layouts.check_format(format)
    path = Path(path)
    _check_file(path, layouts.kind)
    rejects: list[Reject] = []

    def unparseable(error: RecordError) -> None:
        rejects.append(Reject(str(path), error.line or 0, error.reason))

    records = iter_records(path, on_error=unparseable)
    seen: list[tuple[int, Any]] = []  # records read while looking for the layout
    if format is None:
        format = _detect(records, seen, layouts.detect)
        if format is None:
            if seen or rejects:
                raise InputError(_undetected(path, len(seen), len(rejects), layouts))
            return [], rejects
    items = []
    for line, record in itertools.chain(seen, records):
        try:
            if not isinstance(record, dict):
                raise RecordRejected(f"expected a JSON object, got {type(record).__name__}")
            item = layouts.convert(record, format)
        except RecordRejected as error:
            rejects.append(Reject(str(path), line, error.reason))
        else:
            items.append(replace(item, origin=f"{path}:{line}"))
    rejects.sort(key=lambda r: r.line)  # records read for detection are judged late
    return items, rejects


def read_conversations(
    path: str | Path, format: str | None = None
) -> tuple[list[Conversation], list[Reject]]:
    """Every conversation of one SFT data file and a `Reject` for every bad record
    (`read_records`)."""
    return read_records(path, format, SFT_LAYOUTS)


def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise MissingError(f"{path} not found")
    if path.is_dir():
        raise InputError(f"{path} is a dir: name the {kind} files in it")
    suffix = format_of(path)
    if suffix is None or suffix.startswith(".txt"):
        raise InputError(
            f"{path}: unsupported {kind} file; expected .jsonl, .json or .parquet "
            "(the first two optionally .gz or .zst)"
        )


def _detect(
    records: Iterable[tuple[int, Any]],
    seen: list[tuple[int, Any]],
    detect: Callable[[dict], str | None],
) -> str | None:
    """The layout of the first record that has one; every record read is kept in `seen`."""
    for numbered in records:
        seen.append(numbered)
        found = detect(numbered[1]) if isinstance(numbered[1], dict) else None
        if found is not None:
            return found
    return None


def _undetected(path: Path, records: int, unparseable: int, layouts: Layouts) -> str:
    signs = "; ".join(f"{name}: {sign}" for name, sign in layouts.signs.items())
    read = f"{records} records" + (f" and {unparseable} unparseable lines" if unparseable else "")
    return (
        f"{path}: none of its {read} looks like a known {layouts.kind} format ({signs}); "
        f"name the format with `format:` (one of {', '.join(layouts.formats)})"
    )


# Reading the layouts. A turn under construction is (where, tag, role, content): `where` names
# its place in the record for reject reasons, `tag` is the role as the record spells it.
_Turn = tuple[str, str, str, str]


def _string(record: dict, field: str, *, optional: bool = False) -> str | None:
    """`record[field]` when it is a string; None for an optional one absent or null."""
    value = record.get(field)
    if value is None:
        if optional:
            return None
        raise RecordRejected(f"missing field {field!r}")
    if not isinstance(value, str):
        raise RecordRejected(f"field {field!r} must be a string, {describe_value(value)}")
    return value


def describe_value(value: Any) -> str:
    """What a value of the wrong type is, for a reason: "got list", "got nothing"."""
    return "got nothing (missing or null)" if value is None else f"got {type(value).__name__}"


_A = {"user": "a user", "assistant": "an assistant"}


def _conversation(turns: list[_Turn], system: str) -> Conversation:
    """Check order and content of the turns and build the conversation."""
    if not turns:
        raise RecordRejected("no user or assistant turns")
    for number, (where, tag, role, content) in enumerate(turns):
        expected = ROLES[number % 2]
        if role != expected:
            raise RecordRejected(
                "turns must alternate user, assistant, starting with user: expected "
                f"{_A[expected]} turn at {where}, got {tag!r} ({_A[role]} turn)"
            )
        if not content.strip():
            raise RecordRejected(f"empty {'question' if role == 'user' else 'answer'} ({where})")
    if turns[-1][2] != "assistant":
        raise RecordRejected(
            f"the conversation must end with an answer: {turns[-1][0]} ({turns[-1][1]!r}) "
            "is a user turn with no answer after it"
        )
    return Conversation(tuple((role, content) for _, _, role, content in turns), system)


def _alpaca(record: dict) -> Conversation:
    instruction = _string(record, "instruction")
    output = _string(record, "output")
    query = _string(record, "input", optional=True)
    system = _string(record, "system", optional=True) or ""
    turns = _history(record.get("history"))
    question = "\n".join(part for part in (instruction, query) if part)
    turns.append(("'instruction' and 'input'", "instruction", "user", question))
    turns.append(("'output'", "output", "assistant", output))
    return _conversation(turns, system)


def _history(history: Any) -> list[_Turn]:
    """The earlier turns of an alpaca record: `[[query, response], ...]`, each a non-empty
    answer (an empty one would train the model to answer with nothing)."""
    if history is None:
        return []
    if not isinstance(history, list):
        raise RecordRejected(
            f"malformed history: 'history' must be a list of [query, response] pairs, "
            f"{describe_value(history)}"
        )
    turns: list[_Turn] = []
    for i, pair in enumerate(history):
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(text, str) for text in pair)
        ):
            raise RecordRejected(
                f"malformed history: history[{i}] must be a [query, response] pair of strings"
            )
        if not pair[1].strip():
            raise RecordRejected(f"malformed history: empty answer (history[{i}][1])")
        turns.append((f"history[{i}][0]", "history", "user", pair[0]))
        turns.append((f"history[{i}][1]", "history", "assistant", pair[1]))
    return turns


def message_list(
    record: dict,
    field: str,
    keys: tuple[str, str],
    tags: dict[str, str],
    tool_tags: tuple[str, ...],
) -> Conversation:
    """A sharegpt or OpenAI message list (`keys`: the role and content keys of a message): an
    optional system message first, or a top-level `system` string but not both, then the
    turns."""
    role_key, content_key = keys
    messages = record.get(field)
    if not isinstance(messages, list):
        raise RecordRejected(
            f"field {field!r} must be a list of messages, {describe_value(messages)}"
        )
    system = _string(record, "system", optional=True)
    turns: list[_Turn] = []
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RecordRejected(
                f"{where} must be an object {{{role_key}, {content_key}}}, got "
                f"{type(message).__name__}"
            )
        tag = message.get(role_key)
        if not isinstance(tag, str):
            raise RecordRejected(f"{where}: {role_key!r} must be a string, {describe_value(tag)}")
        if tag in tool_tags:
            raise RecordRejected(f"{TOOL_REASON}: {where} is {tag!r}")
        if tag != "system" and tag not in tags:
            known = ", ".join([*tags, "system"])
            raise RecordRejected(f"unknown role tag {tag!r} at {where} (known: {known})")
        content = message.get(content_key)
        if not isinstance(content, str):
            raise RecordRejected(
                f"{where}: {content_key!r} must be a string, {describe_value(content)}"
            )
        if tag == "system":
            if i:
                raise RecordRejected(f"a system message is allowed only first: {where} is 'system'")
            if system is not None:
                raise RecordRejected(
                    f"two system texts: a top-level 'system' field and {where}; keep one"
                )
            system = content
            continue
        turns.append((where, tag, tags[tag], content))
    return _conversation(turns, system or "")


def _sharegpt(record: dict) -> Conversation:
    return message_list(
        record, "conversations", ("from", "value"), SHAREGPT_TAGS, TOOL_TAGS["sharegpt"]
    )


def _messages(record: dict) -> Conversation:
    return message_list(
        record, "messages", ("role", "content"), MESSAGES_ROLES, TOOL_TAGS["messages"]
    )


def _colossal(record: dict) -> Conversation:
    source = _string(record, "source")
    target = _string(record, "target")
    if not source.strip():
        raise RecordRejected("empty question (empty source)")
    return _conversation(
        [("'source'", "source", "user", source), ("'target'", "target", "assistant", target)], ""
    )


_READERS: dict[str, Callable[[dict], Conversation]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "messages": _messages,
    "colossal": _colossal,
}


SFT_LAYOUTS = Layouts("SFT data", FORMATS, detect_format, to_conversation, _SIGNS)
