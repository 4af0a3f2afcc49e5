"""Packed rows for training, addressed by a global sample index so that resuming is exact.

A stage reads the rows of one or more `chuan data pack` outputs (optionally only some of their
buckets). Sample `k` of a stage is row `order(k // n)[k % n]`: with `shuffle` the order of each
epoch is a permutation drawn from `(seed, epoch)`, otherwise the stored order (the packer's
bucket order). The data position of a run is therefore one integer, and any rank can find its
rows of any step without replaying a sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk

from chuan.data.pack import labels_from_row
from chuan.errors import InputError, MissingError
from chuan.model.loss import IGNORE_INDEX


@dataclass
class Batch:
    """One micro-batch: token ids, segment ids (the model's 2-D attention mask) and labels,
    with its counts taken on the host so that no step waits on the device for them."""

    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    labels: torch.Tensor
    num_tokens: int  # non-padding tokens
    num_labels: int  # positions the shifted loss predicts
    one_segment: bool = False  # every row one document, no padding: plain causal attention

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """Segment ids for the model, or None when plain causal attention is the same thing
        (SDPA's fast causal path instead of an explicit mask)."""
        return None if self.one_segment else self.segment_ids

    @classmethod
    def of(cls, input_ids, segment_ids, labels) -> Batch:
        return cls(
            input_ids,
            segment_ids,
            labels,
            num_tokens=int((segment_ids != 0).sum()),
            num_labels=int((labels[:, 1:] != IGNORE_INDEX).sum()),
            one_segment=bool((segment_ids == 1).all()),
        )

    def to(self, device: torch.device) -> Batch:
        move = [
            t.to(device, non_blocking=True) for t in (self.input_ids, self.segment_ids, self.labels)
        ]
        return Batch(*move, self.num_tokens, self.num_labels, self.one_segment)

    def without_labels(self) -> Batch:
        """The same rows with nothing to predict (a rank that only joins the collectives)."""
        return Batch(
            self.input_ids,
            self.segment_ids,
            torch.full_like(self.labels, IGNORE_INDEX),
            num_tokens=0,
            num_labels=0,
            one_segment=self.one_segment,
        )


def load_packed(path: str | Path) -> Dataset:
    """A packed dataset dir, with an error that says how to make one."""
    path = Path(path)
    if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
        raise MissingError(
            f"{path} is not a packed dataset; make one with "
            "`chuan data pack INPUT... --tokenizer DIR --out DIR --max-length N`"
        )
    dataset = load_from_disk(str(path))
    missing = {"input_ids", "segment_ids", "loss_mask"} - set(dataset.column_names)
    if missing:
        raise InputError(f"{path}: packed dataset lacks column(s) {sorted(missing)}; re-run pack")
    return dataset


class PackedRows:
    """The rows one stage trains on (or the held-out rows), read as numpy views.

    Rows carry `input_ids` and `segment_ids`, and either `loss_mask` (packed corpora: the
    label is the token itself) or `labels` (chat data, whose labels may differ from the
    ids: Baichuan 2 labels each user marker after an answer with EOS). Rows may differ in
    length (unpacked chat samples); a batch is padded to its longest row with segment id 0.
    """

    def __init__(
        self,
        data: Dataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        row_length: int | None = None,
    ):
        """`row_length` is the longest row (the first row's length when not given)."""
        if len(data) == 0:
            raise InputError("no rows to train on")
        self.target = "labels" if "labels" in data.column_names else "loss_mask"
        # Rows stay memory-mapped Arrow; a batch is one `take`, so a corpus larger than RAM works.
        self.data = data.with_format("numpy", columns=["input_ids", "segment_ids", self.target])
        self.row_length = row_length or len(self.data[0]["input_ids"])
        self.shuffle = shuffle
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    @classmethod
    def from_disk(
        cls,
        paths: list[str],
        *,
        buckets: list[int] | None = None,
        holdout: dict[str, int] | None = None,
        take_holdout: bool = False,
        shuffle: bool = True,
        seed: int = 0,
    ) -> PackedRows:
        """The rows of `chuan data pack` outputs. `holdout` maps a dataset path to a count of
        rows at its end that are held out: excluded from training, or (with `take_holdout`)
        the only rows taken."""
        parts = []
        for path in paths:
            dataset = load_packed(path)
            held = (holdout or {}).get(str(Path(path).resolve()), 0)
            if held >= len(dataset) and held:
                raise InputError(f"{path}: holdout of {held} rows leaves no training rows")
            keep = (
                range(len(dataset) - held, len(dataset))
                if take_holdout
                else range(len(dataset) - held)
            )
            if buckets is not None:
                if "bucket" not in dataset.column_names:
                    raise InputError(f"{path}: `buckets` given but the dataset has no buckets")
                rows = np.arange(keep.start, keep.stop)
                keep = rows[np.isin(np.asarray(dataset["bucket"])[rows], buckets)]
            parts.append(dataset.select(keep))
        data = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        if len(data) == 0:
            raise InputError(f"no rows to read in {', '.join(paths)} (buckets {buckets})")
        return cls(data, shuffle=shuffle, seed=seed)

    def __len__(self) -> int:
        return len(self.data)

    def row(self, sample: int) -> int:
        """The row index of global sample `sample` (epochs wrap with a fresh permutation)."""
        epoch, index = divmod(sample, len(self))
        if not self.shuffle:
            return index
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self))}
        return int(self._orders[epoch][index])

    def batch(self, samples: range | list[int]) -> Batch:
        rows = self.data[[self.row(k) for k in samples]]
        ids, segments, target = (
            stack_rows(rows[c], fill)
            for c, fill in (
                ("input_ids", 0),
                ("segment_ids", 0),
                (self.target, IGNORE_INDEX if self.target == "labels" else 0),
            )
        )
        if self.target == "labels":
            return Batch.of(ids, segments, target)
        return Batch.of(ids, segments, torch.as_tensor(labels_from_row(ids, segments, target)))


def padded_batch(ids: list, labels: list) -> Batch:
    """Samples of different lengths as one right-padded micro-batch: segment id 1 on each
    sample's tokens, 0 on the padding (label `IGNORE_INDEX`)."""
    input_ids = stack_rows(ids, 0)
    lengths = torch.tensor([len(row) for row in ids])
    segments = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    return Batch.of(input_ids, segments, stack_rows(labels, IGNORE_INDEX))


def stack_rows(rows, fill: int) -> torch.Tensor:
    """`[B, T]` int64 from equal rows (one array) or ragged ones (padded on the right)."""
    rows = np.asarray(rows) if not isinstance(rows, list) else rows
    if isinstance(rows, np.ndarray) and rows.dtype != object:
        return torch.from_numpy(rows.astype(np.int64, copy=False))
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)
