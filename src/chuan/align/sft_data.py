"""SFT rows: conversations mixed by weight, encoded with the chat template, cut to fit, and
packed first-fit decreasing into rows whose segment ids keep samples apart.

A packed row is several conversations side by side; the model reads its segment ids as the
attention mask (causal within a segment, positions restarting per segment), so each
conversation trains exactly as if it were alone, with no cross-sample attention. (TRL's
packing marks boundaries with position-id resets, which chuan's attention does not read.)
First-fit decreasing keeps padding small; rows are only as long as their samples, and a batch
pads to its longest row.

Truncation never cuts an answer: a conversation longer than `max_length` loses its oldest
rounds (system text kept) until it fits, and one whose last round alone does not fit is
dropped; both are counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset

from chuan.align.conversations import Conversation, Reject, read_conversations
from chuan.align.sft_config import DataSource
from chuan.errors import InputError
from chuan.model.loss import IGNORE_INDEX
from chuan.tokenizer.chat_templates import ChatTemplate, Encoded
from chuan.train.data import PackedRows

_ENCODE_BATCH = 512  # conversations per tokenizer call


@dataclass
class SFTDataStats:
    """What the data preparation did, for the report (per source and in total)."""

    read: Counter = field(default_factory=Counter)  # path -> valid conversations
    rejects: list[Reject] = field(default_factory=list)
    mixed: Counter = field(default_factory=Counter)  # path -> samples in the mixtures
    truncated: int = 0  # conversations that lost their oldest rounds to fit
    dropped_too_long: int = 0  # conversations whose last round alone does not fit
    samples: int = 0
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    row_capacity: int = 0  # rows x max_length

    def as_dict(self) -> dict:
        return {
            "read": dict(self.read),
            "rejected": len(self.rejects),
            "rejects_by_reason": dict(Counter(r.reason for r in self.rejects).most_common(10)),
            "mixed": dict(self.mixed),
            "truncated": self.truncated,
            "dropped_too_long": self.dropped_too_long,
            "samples": self.samples,
            "rows": self.rows,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "trained_fraction": self.trained_tokens / max(self.tokens, 1),
            "fill": self.tokens / max(self.row_capacity, 1),
        }


def read_source(source, stats: SFTDataStats, reader=read_conversations) -> list:
    """The valid records of one source (`reader(path, format)` gives them and the rejects),
    counted in `stats`; a source with none is an error."""
    conversations, rejects = reader(source.path, source.format)
    stats.read[source.path] += len(conversations)
    stats.rejects += rejects
    if not conversations:
        raise InputError(
            f"{source.path}: no valid record ({len(rejects)} rejected, e.g. "
            f"{rejects[0].reason if rejects else 'the file is empty'}); fix the data or its "
            "`format`"
        )
    return conversations


def draw(items: Sequence, count: int, rng: np.random.Generator) -> list:
    """`count` items drawn without replacement, starting over with a fresh permutation
    whenever all have been drawn."""
    out: list = []
    while len(out) < count:
        order = rng.permutation(len(items))[: count - len(out)]
        out += [items[i] for i in order]
    return out


def mix(
    sources: Sequence[DataSource], loaded: Sequence[list[Conversation]], seed: int
) -> list[Conversation]:
    """One stage's conversations (see `DataSource` for what weights mean), in a seeded order."""
    rng = np.random.default_rng(seed)
    if all(s.weight is None for s in sources):
        mixed = [c for conversations in loaded for c in conversations]
    else:
        weights = [1.0 if s.weight is None else s.weight for s in sources]
        anchor = len(loaded[0]) / weights[0]
        mixed = []
        for conversations, weight in zip(loaded, weights, strict=True):
            mixed += draw(conversations, round(anchor * weight), rng)
    return [mixed[i] for i in rng.permutation(len(mixed))]


def round_starts(turns: Sequence[tuple[str, str]]) -> list[int]:
    """Indices where each round (a user turn and its answer) starts."""
    return [i for i, (role, _) in enumerate(turns) if role == "user"]


def encode_fitting(
    template: ChatTemplate,
    conversations: Sequence[Conversation],
    max_length: int,
    *,
    mask_history: bool,
    stats: SFTDataStats,
) -> list[tuple[Conversation, Encoded]]:
    """Each conversation's ids and labels within `max_length`, oldest rounds cut first."""
    out = []
    for start in range(0, len(conversations), _ENCODE_BATCH):
        chunk = conversations[start : start + _ENCODE_BATCH]
        encoded = template.encode(
            [(c.system, c.messages) for c in chunk], mask_history=mask_history
        )
        for conversation, sample in zip(chunk, encoded, strict=True):
            if len(sample.input_ids) > max_length:
                sample = _cut_oldest_rounds(template, conversation, max_length, mask_history)
                if sample is None:
                    stats.dropped_too_long += 1
                    continue
                stats.truncated += 1
            out.append((conversation, sample))
    return out


def _cut_oldest_rounds(
    template: ChatTemplate, conversation: Conversation, max_length: int, mask_history: bool
) -> Encoded | None:
    turns = conversation.messages
    for start in round_starts(turns)[1:]:
        (sample,) = template.encode(
            [(conversation.system, turns[start:])], mask_history=mask_history
        )
        if len(sample.input_ids) <= max_length:
            return sample
    return None


class _FirstFit:
    """Bins of capacity `size`; `place(n)` returns the leftmost bin with room for `n`,
    opening one when none has (a max segment tree over the bins' free space)."""

    def __init__(self, size: int, max_bins: int):
        self.size = size
        self.leaves = 1 << max(1, (max_bins - 1).bit_length())
        self.free = np.zeros(2 * self.leaves, dtype=np.int64)
        self.opened = 0

    def place(self, n: int) -> int:
        if self.free[1] < n:
            self._set(self.opened, self.size)
            self.opened += 1
        node = 1
        while node < self.leaves:
            node = 2 * node if self.free[2 * node] >= n else 2 * node + 1
        index = node - self.leaves
        self._set(index, int(self.free[node]) - n)
        return index

    def _set(self, index: int, value: int) -> None:
        node = index + self.leaves
        self.free[node] = value
        while node > 1:
            node //= 2
            self.free[node] = max(self.free[2 * node], self.free[2 * node + 1])


def pack_first_fit(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Sample indices per row, first-fit decreasing (ties kept in input order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins = _FirstFit(max_length, len(lengths) or 1)
    rows: list[list[int]] = []
    for i in order:
        index = bins.place(lengths[i])
        if index == len(rows):
            rows.append([])
        rows[index].append(i)
    return rows


def to_rows(
    samples: Sequence[Encoded],
    max_length: int,
    *,
    packing: bool,
    shuffle: bool,
    seed: int,
    stats: SFTDataStats | None = None,
) -> PackedRows:
    """Trainable rows: packed (several samples per row, segment ids 1, 2, ...) or one each."""
    if not samples:
        raise InputError("no conversation fits; raise max_length or check the data")
    lengths = [len(s.input_ids) for s in samples]
    groups = pack_first_fit(lengths, max_length) if packing else [[i] for i in range(len(samples))]
    columns: dict[str, list] = {"input_ids": [], "segment_ids": [], "labels": []}
    for group in groups:
        ids, segments, labels = [], [], []
        for segment, i in enumerate(group, start=1):
            sample = samples[i]
            ids += sample.input_ids
            segments += [segment] * len(sample.input_ids)
            # A segment's first token has nothing of its own to be predicted from.
            labels += [IGNORE_INDEX, *sample.labels[1:]]
        columns["input_ids"].append(ids)
        columns["segment_ids"].append(segments)
        columns["labels"].append(labels)
    if stats is not None:
        stats.samples += len(samples)
        stats.rows += len(groups)
        stats.tokens += sum(lengths)
        stats.trained_tokens += sum(
            sum(label != IGNORE_INDEX for label in s.labels[1:]) for s in samples
        )
        stats.row_capacity += len(groups) * max_length
    return PackedRows(
        Dataset.from_dict(columns), shuffle=shuffle, seed=seed, row_length=max(lengths)
    )


def padding_tokens(rows: PackedRows, batch_size: int) -> int:
    """Pad tokens in one epoch of batches of `batch_size` rows in the training order."""
    lengths = [len(rows.data[rows.row(k)]["input_ids"]) for k in range(len(rows))]
    pad = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        pad += max(batch) * len(batch) - sum(batch)
    return pad


def render_sample(template: ChatTemplate, conversation: Conversation, sample: Encoded) -> str:
    """A sample as the model sees it: the text with trained spans in ⟦ ⟧, then per token its
    id, its label and the token (`--inspect`)."""
    tokenizer = template.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(sample.input_ids)
    trained = [False, *(label != IGNORE_INDEX for label in sample.labels[1:])]
    text, start = [], 0
    for end in range(1, len(trained) + 1):  # decode whole runs: a character may span bytes
        if end == len(trained) or trained[end] != trained[start]:
            run = tokenizer.decode(sample.input_ids[start:end], skip_special_tokens=False)
            text.append(f"⟦{run}⟧" if trained[start] else run)
            start = end
    lines = [
        f"── {conversation.origin or 'sample'}: {len(tokens)} tokens, {sum(trained)} trained "
        f"(template {template.name}) ──",
        "".join(text),
        "",
        f"{'pos':>5} {'id':>7} {'label':>7}  token",
    ]
    for pos, (token_id, label, token) in enumerate(
        zip(sample.input_ids, [IGNORE_INDEX, *sample.labels[1:]], tokens, strict=True)
    ):
        shown = "-" if label == IGNORE_INDEX else str(label)
        note = "" if label in (IGNORE_INDEX, token_id) else f"  (label {tokenizer.decode([label])})"
        lines.append(f"{pos:>5} {token_id:>7} {shown:>7}  {token!r}{note}")
    return "\n".join(lines)
