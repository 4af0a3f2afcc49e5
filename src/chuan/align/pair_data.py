"""Preference pairs as training rows: the prompt with the chosen answer and with the rejected
one, encoded by the chat template, cut to fit together, and batched chosen-then-rejected so
that one forward scores both.

Only the answer (and its end token) carries labels: the log-probability a preference loss
compares is the sum over those tokens. A pair longer than `max_length` loses its oldest
prompt rounds from both sides alike, so the two answers always follow the same prompt; a pair
whose last round alone does not fit is dropped; both are counted.

KTO's unpaired samples travel as pairs too (`kl_pairs`): the sample's answer is the chosen
row, and the rejected row is the same prompt with another sample's answer, the mismatched
row KTO estimates its KL term from, so the reference scores, batching and resume of pairs
serve it unchanged; a `desirable` column holds the labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from chuan.align.preferences import Preference, Unpaired
from chuan.align.sft_data import SFTDataStats, round_starts
from chuan.errors import InputError
from chuan.model.loss import IGNORE_INDEX
from chuan.tokenizer.chat_templates import ChatTemplate, Encoded
from chuan.train.data import Batch, PackedRows, padded_batch

_ENCODE_BATCH = 256  # pairs per tokenizer call
REFERENCE_COLUMNS = ("ref_chosen", "ref_rejected")


@dataclass
class PairBatch:
    """B pairs as one micro-batch of 2B rows (the B chosen, then the B rejected), with the
    reference log-probs `[2B]` (same order) when they were precomputed, the pairs' data
    margins `[B]` (NaN where a record gave none), and for KTO samples their labels `[B]`."""

    batch: Batch
    reference: torch.Tensor | None
    pairs: list[int]  # the row index of each pair, to score the reference one pair at a time
    margin: torch.Tensor
    desirable: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens

    @property
    def num_labels(self) -> int:
        return self.batch.num_labels

    def to(self, device: torch.device) -> PairBatch:
        reference, desirable = (
            None if t is None else t.to(device) for t in (self.reference, self.desirable)
        )
        return PairBatch(
            self.batch.to(device), reference, self.pairs, self.margin.to(device), desirable
        )


class PairRows(PackedRows):
    """The pairs one stage trains on, addressed by a global sample index like packed rows
    (same seeded per-epoch order, so resume is exact); KTO samples add a `desirable` column."""

    COLUMNS = ["chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels", "margin"]

    def __init__(self, data: Dataset, *, shuffle: bool = True, seed: int = 0):
        if len(data) == 0:
            raise InputError("no pairs to train on")
        optional = (*REFERENCE_COLUMNS, "desirable")
        columns = self.COLUMNS + [c for c in optional if c in data.column_names]
        self.data = data.with_format("numpy", columns=columns)
        self.has_reference = "ref_chosen" in data.column_names
        self.unpaired = "desirable" in data.column_names
        self.row_length = max(
            max(map(len, data["chosen_ids"])), max(map(len, data["rejected_ids"]))
        )
        self.shuffle = shuffle
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def batch(self, samples: range | list[int]) -> PairBatch:
        return self.rows_batch([self.row(k) for k in samples])

    def rows_batch(self, rows: list[int]) -> PairBatch:
        """The pairs at row indices `rows` (not sample indices) as one micro-batch."""
        data = self.data[rows]
        batch = padded_batch(
            list(data["chosen_ids"]) + list(data["rejected_ids"]),
            list(data["chosen_labels"]) + list(data["rejected_labels"]),
        )
        reference = None
        if self.has_reference:
            reference = torch.from_numpy(
                np.concatenate([data["ref_chosen"], data["ref_rejected"]]).astype(np.float64)
            )
        margin = torch.from_numpy(data["margin"].astype(np.float64))
        desirable = torch.from_numpy(data["desirable"].astype(bool)) if self.unpaired else None
        return PairBatch(batch, reference, list(rows), margin, desirable)

    def with_reference(self, scores: np.ndarray) -> PairRows:
        """These pairs with reference log-probs `scores[row] = (chosen, rejected)` kept
        beside them."""
        data = self.data.with_format(None)
        data = data.remove_columns([c for c in REFERENCE_COLUMNS if c in data.column_names])
        data = data.add_column("ref_chosen", scores[:, 0].tolist())
        data = data.add_column("ref_rejected", scores[:, 1].tolist())
        return PairRows(data, shuffle=self.shuffle, seed=self.seed)


def kl_pairs(samples: Sequence[Unpaired]) -> list[Preference]:
    """Each sample as a pair: its answer chosen, and as the rejected row the previous
    sample's answer (the first takes the last's) after its own prompt.

    The rejected rows are KTO's mismatched pairs (x_i, y_{i-1}), whose policy/reference
    log-ratio estimates the KL term z0 (Ethayarajh et al. 2024, arXiv:2402.01306),
    made as TRL's `_get_kl_dataset` (`trl/trainer/kto_trainer.py`) makes them, by rotating
    the answers one place; in a shuffled stage the previous sample is a random one.
    """
    return [
        Preference(
            s.prompt,
            s.completion,
            samples[i - 1].completion,
            s.system,
            origin=s.origin,
            desirable=s.desirable,
        )
        for i, s in enumerate(samples)
    ]


def _encode(template: ChatTemplate, pairs: Sequence[tuple[Preference, int]]) -> list[Encoded]:
    """Chosen and rejected of each (pair, first prompt turn kept), answer-only labels."""
    conversations = []
    for pair, start in pairs:
        for answer in (pair.chosen, pair.rejected):
            turns = (*pair.prompt[start:], ("assistant", answer))
            conversations.append((pair.system, turns))
    return template.encode(conversations, mask_history=True)


def encode_pairs(
    template: ChatTemplate,
    pairs: Sequence[Preference],
    max_length: int,
    stats: SFTDataStats,
) -> list[tuple[Preference, Encoded, Encoded]]:
    """Each pair's two samples within `max_length`, oldest prompt rounds cut from both."""
    out = []
    for first in range(0, len(pairs), _ENCODE_BATCH):
        chunk = pairs[first : first + _ENCODE_BATCH]
        encoded = _encode(template, [(p, 0) for p in chunk])
        for i, pair in enumerate(chunk):
            chosen, rejected = encoded[2 * i], encoded[2 * i + 1]
            if max(len(chosen.input_ids), len(rejected.input_ids)) > max_length:
                fitted = _cut_oldest_rounds(template, pair, max_length)
                if fitted is None:
                    stats.dropped_too_long += 1
                    continue
                stats.truncated += 1
                chosen, rejected = fitted
            out.append((pair, chosen, rejected))
    return out


def _cut_oldest_rounds(
    template: ChatTemplate, pair: Preference, max_length: int
) -> tuple[Encoded, Encoded] | None:
    for start in round_starts(pair.prompt)[1:]:
        chosen, rejected = _encode(template, [(pair, start)])
        if max(len(chosen.input_ids), len(rejected.input_ids)) <= max_length:
            return chosen, rejected
    return None


def to_pair_rows(
    encoded: Sequence[tuple[Preference, Encoded, Encoded]],
    *,
    shuffle: bool,
    seed: int,
    stats: SFTDataStats | None = None,
) -> PairRows:
    """Trainable pairs; a sample's first token has nothing to be predicted from."""
    if not encoded:
        raise InputError("no preference pair fits; raise max_length or check the data")
    columns: dict[str, list] = {c: [] for c in PairRows.COLUMNS}
    if encoded[0][0].desirable is not None:
        columns["desirable"] = [pair.desirable for pair, _, _ in encoded]
    for pair, chosen, rejected in encoded:
        columns["margin"].append(math.nan if pair.margin is None else pair.margin)
        for side, sample in (("chosen", chosen), ("rejected", rejected)):
            columns[f"{side}_ids"].append(sample.input_ids)
            columns[f"{side}_labels"].append([IGNORE_INDEX, *sample.labels[1:]])
    if stats is not None:
        samples = [s for _, c, r in encoded for s in (c, r)]
        stats.samples += len(encoded)
        stats.rows += len(samples)
        stats.tokens += sum(len(s.input_ids) for s in samples)
        stats.trained_tokens += sum(
            sum(label != IGNORE_INDEX for label in s.labels[1:]) for s in samples
        )
        stats.row_capacity += sum(len(s.input_ids) for s in samples)
    return PairRows(Dataset.from_dict(columns), shuffle=shuffle, seed=seed)
