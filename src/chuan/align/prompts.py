"""Prompts for RL (`chuan ppo`, `chuan grpo`): what the policy answers during rollouts.

Any chat data chuan reads gives prompts, so the SFT and preference files of the earlier
stages serve again:

- `prompt`: TRL's prompt-only layout `{prompt, system?, reference?}` (`trl` docs, "Dataset
  formats"), `prompt` a string (one user turn) or a list of `{role, content}` messages
  ending with a user turn; `reference` (or `answer`, GSM8K's name) is an optional gold
  answer handed to reward functions.
- `preference`: any layout `chuan.align.preferences` reads (the pair's prompt; its chosen
  answer is the reference);
- `alpaca`, `sharegpt`, `messages`, `colossal`: SFT conversations (everything before the
  last answer; that answer is the reference).

Bad records are `Reject`s with file, line and reason, as everywhere in `chuan.align`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chuan.align import conversations, preferences
from chuan.align.conversations import Layouts, RecordRejected, Reject, read_records

FORMATS = ("prompt", "preference", *conversations.FORMATS)
_SIGNS = {
    "prompt": "a 'prompt' and no 'chosen' / 'completion'",
    "preference": "a preference pair (see `chuan dpo --help`)",
    **conversations.SFT_LAYOUTS.signs,
}
_REFERENCE_FIELDS = ("reference", "answer")


@dataclass(frozen=True)
class PromptRecord:
    """A prompt (user/assistant turns ending with a user turn), its system text ("" when
    none), a reference answer (None when the record has none) and "path:line"."""

    prompt: tuple[tuple[str, str], ...]
    system: str = ""
    reference: str | None = None
    origin: str = ""

    def messages(self) -> list[dict]:
        """The prompt as chat messages for a template."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": role, "content": text} for role, text in self.prompt]


def detect_format(record: dict) -> str | None:
    """The layout a record looks like, from its keys alone, or None."""
    if "prompt" in record and not {"chosen", "rejected", "completion"} & record.keys():
        return "prompt"
    found = preferences.detect_format(record)
    if found is not None and found != "kto":
        return "preference"
    return conversations.detect_format(record)


def to_prompt(record: dict, format: str) -> PromptRecord:
    """Read one record of the given layout; raises `RecordRejected` for one that gives no
    valid prompt."""
    if format == "prompt":
        prompt = preferences.trl_prompt(record.get("prompt"), record.get("system"))
        reference = next((record[f] for f in _REFERENCE_FIELDS if f in record), None)
        if reference is not None and not isinstance(reference, str):
            reference = str(reference)  # a number (GSM8K-style) compares as its text
        return PromptRecord(prompt.messages[:-1], prompt.system, reference)
    if format == "preference":
        layout = preferences.detect_format(record)
        if layout is None or layout == "kto":
            raise RecordRejected("not a preference pair (unlike the file's first record)")
        pair = preferences.to_record(record, layout)
        return PromptRecord(pair.prompt, pair.system, pair.chosen)
    conversation = conversations.to_conversation(record, format)
    return PromptRecord(
        conversation.messages[:-1], conversation.system, conversation.messages[-1][1]
    )


LAYOUTS = Layouts("prompt data", FORMATS, detect_format, to_prompt, _SIGNS)


def read_prompts(
    path: str | Path, format: str | None = None
) -> tuple[list[PromptRecord], list[Reject]]:
    """Every prompt of one data file and a `Reject` for every bad record (the reading rules
    of `chuan.align.conversations.read_records`)."""
    return read_records(path, format, LAYOUTS)
