"""`chuan data pack`: tokenize documents and splice them into fixed-length rows, bins -> buckets.

The Colossal-LLaMA-2 recipe (hpcaitech/ColossalAI `applications/Colossal-LLaMA-2/`:
`prepare_pretrain_dataset.py`, `colossal_llama2/dataset/spliced_and_tokenized_dataset.py`)
without its known faults:

- No token is lost. Per (category, bin) the documents are concatenated and cut into rows of
  exactly `max_length`; a document that does not fit continues in the next row, and only the
  last row of each (category, bin) is padded. Colossal's packer drops the last partial pack of
  every buffer, 3.6-8% of the tokens (`ClosedToConstantLengthSplicedDataset.__iter__`).
- `bins` bins per category, always: cut at document boundaries to near-equal token counts, in
  input order. Colossal's `ceil(100/N)`% slices (`prepare_pretrain_dataset.py`) give 25 bins
  for N=30. Bucket i is bin i of every category, so training bucket by bucket sees every
  category each time.
- Colossal records `{source, target}` tokenize source and target separately and concatenate
  the ids, so the loss mask cannot slip at a merge across the boundary (Colossal's
  `spliced_and_tokenized_dataset.py` encodes source and source+target apart, so its can).
- Padding is marked by segment id 0 and loss targets by `loss_mask`, never by comparing ids
  with the pad id, so a genuine `</s>` or `<unk>` keeps its loss (Colossal's collator in
  `colossal_llama2/dataset/loader.py` masks `input_ids != pad`, and its pad may be `</s>`;
  baichuan-inc/Baichuan2 `fine-tune/fine-tune.py` pads and masks with id 0, `<unk>`).
- Row shuffles are seeded, one numpy Generator per bucket.

Every row carries segment ids (1, 2, ... per document piece, 0 = padding) that the model
reads as its 2-D `attention_mask`: causal attention within a piece only, positions restarting
per piece, so a packed row trains like its documents run one by one (`labels_from_row`).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.table import InMemoryTable

from chuan.data.executor import Executor, LocalExecutor
from chuan.data.shards import claim_output, dir_fingerprint, run_record
from chuan.documents import (
    STAGE_RUN_FILE,
    RecordError,
    UnreadableFileError,
    as_paths,
    corpus_files,
    iter_records,
    to_document,
)
from chuan.errors import InputError
from chuan.fileio import atomic_dir, write_report
from chuan.model.loss import IGNORE_INDEX
from chuan.tokenizer.hf import load_tokenizer

DEFAULT_CATEGORY = "default"
REJECTS_FILE = "rejects.jsonl"
# Documents per tokenizer call. The Rust tokenizer encodes a batch on all cores; a process
# pool of 2 measured no faster on 2 cores (9,900 docs: 0.72-0.84 s vs 0.80-0.84 s).
_BATCH_DOCS = 1024


@dataclass(frozen=True)
class Sample:
    """One valid record: a plain document (`source` is None) or a Colossal record, whose
    `text` is the target."""

    text: str
    source: str | None
    category: str


def parse_record(record: Any, *, path: str | Path, line: int) -> Sample:
    """Check a record and tell its kind: `{"text", "category"?}` or Colossal
    `{"source"?, "target", "category"?}`; raises `RecordError` naming file, line and field.

    A missing or null `source` is empty (no loss masking). An empty text or target is
    rejected: it would train on nothing but an EOS.
    """
    is_colossal = isinstance(record, dict) and "target" in record
    if isinstance(record, dict) and ("text" in record) == is_colossal:
        problem = (
            "ambiguous: both 'text' and 'target' given"
            if is_colossal
            else "missing: a record needs 'text' (a document) or 'target' (a Colossal record)"
        )
        raise RecordError(path, line, problem, "text")
    text_field = "target" if is_colossal else "text"
    doc = to_document(record, source=path, line=line, text_field=text_field)
    if not doc.text:
        raise RecordError(path, line, "empty", text_field)
    source = record.get("source") if is_colossal else None
    if is_colossal and source is None:
        source = ""
    elif is_colossal and not isinstance(source, str):
        kind = type(source).__name__
        raise RecordError(path, line, f"expected a string, got {kind}", "source")
    return Sample(doc.text, source, doc.category or DEFAULT_CATEGORY)


class Rejects:
    """Counts rejected records and appends each to a JSONL file with file, line, field and
    reason (and the record itself when it was parsed)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.count = 0
        self.reasons: Counter[str] = Counter()

    def add(self, error: RecordError, record: Any = None) -> None:
        entry = {
            "file": error.path,
            "line": error.line,
            "field": error.field,
            "reason": error.reason,
        }
        if record is not None:
            entry["record"] = record
        self.stream.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        self.count += 1
        self.reasons[error.summary] += 1


def read_samples(files: Iterable[Path], rejects: Rejects) -> Iterator[Sample]:
    """Every valid record of `files`, in order; every invalid one goes to `rejects`.

    An error raised while reading (a file that stops decoding as UTF-8, a broken JSON array)
    ends that file: it is rejected once and reading goes on with the next file. A file that
    cannot be read through at all (truncated, corrupt or binary: `UnreadableFileError`) stops
    the run instead, naming the file: packing what was read of it would lose the rest silently.
    """
    for path in files:
        try:
            for line, record in iter_records(path, on_error=rejects.add):
                try:
                    sample = parse_record(record, path=path, line=line)
                except RecordError as error:
                    rejects.add(error, record)
                    continue
                yield sample
        except UnreadableFileError:
            raise
        except RecordError as error:
            rejects.add(error)


class SampleEncoder:
    """Samples to token ids with the tokenizer dir's fast tokenizer, a batch per call.

    A document is `[bos]? ids(text) [eos]`, all loss targets; a Colossal record is
    `[bos] ids(source) ids(target) [eos]` with loss on the target and EOS only (nothing masked
    when the source is empty, as in Colossal). Special-token strings inside the text (a
    literal "</s>" in a web page) are encoded as text, as SentencePiece itself does.
    """

    def __init__(self, tokenizer_dir: str | Path, *, add_bos: bool):
        tokenizer = load_tokenizer(tokenizer_dir)
        if tokenizer.eos_token_id is None:
            raise InputError(f"{tokenizer_dir}: the tokenizer has no EOS token to end documents")
        self.backend = tokenizer.backend_tokenizer
        self.backend.encode_special_tokens = True
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (tokenizer.unk_token_id or 0)
        self.tokenizer_dir = tokenizer_dir
        self.add_bos = add_bos
        if add_bos:
            self._bos()  # fail before reading any input

    def _bos(self) -> list[int]:
        if self.bos is None:
            raise InputError(
                f"{self.tokenizer_dir}: the tokenizer has no BOS token, which --add-bos and "
                "Colossal records need"
            )
        return [self.bos]

    def encode(self, samples: list[Sample]) -> list[tuple[list[int], int]]:
        """`(ids, number of leading tokens without loss)` for each sample."""
        texts = [s.text for s in samples] + [s.source for s in samples if s.source]
        encoded = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        targets, sources = encoded[: len(samples)], iter(encoded[len(samples) :])
        out = []
        for sample, target in zip(samples, targets, strict=True):
            if sample.source is None:
                prefix = self._bos() if self.add_bos else []
                out.append((prefix + target.ids + [self.eos], 0))
            else:
                source = next(sources).ids if sample.source else []
                masked = 1 + len(source) if source else 0
                out.append((self._bos() + source + target.ids + [self.eos], masked))
        return out


@dataclass
class CategoryTokens:
    """The tokenized documents of one category in input order: flat ids plus, per document,
    its length and how many leading tokens carry no loss."""

    lengths: list[int] = field(default_factory=list)
    masked: list[int] = field(default_factory=list)
    _chunks: list[np.ndarray] = field(default_factory=list)
    _pending: list[int] = field(default_factory=list)

    def add(self, ids: list[int], masked: int) -> None:
        self._pending.extend(ids)
        self.lengths.append(len(ids))
        self.masked.append(masked)

    def flush(self) -> None:
        """Move the pending ids into a compact int32 chunk (4 bytes a token, not 28)."""
        if self._pending:
            self._chunks.append(np.asarray(self._pending, dtype=np.int32))
            self._pending = []

    def extend(self, other: CategoryTokens) -> None:
        """Append `other`'s documents after these."""
        self.flush()
        other.flush()
        self.lengths += other.lengths
        self.masked += other.masked
        self._chunks += other._chunks

    def ids(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int32)


@dataclass(frozen=True)
class FileTokens:
    """What one input file contributes: its categories' tokens (in first-appearance order)
    and its rejects (JSON lines, counts and reasons)."""

    corpus: dict[str, CategoryTokens]
    rejects: str
    rejected: int
    reasons: Counter


def tokenize_file(task: tuple[Path, str | Path, bool]) -> FileTokens:
    """Read and tokenize one file in batches (a task of `tokenize_corpus`)."""
    path, tokenizer_dir, add_bos = task
    encoder = _encoder(str(tokenizer_dir), add_bos)
    corpus: dict[str, CategoryTokens] = {}
    stream = io.StringIO()
    rejects = Rejects(stream)
    samples = read_samples([path], rejects)
    while batch := list(itertools.islice(samples, _BATCH_DOCS)):
        for sample, (ids, masked) in zip(batch, encoder.encode(batch), strict=True):
            corpus.setdefault(sample.category, CategoryTokens()).add(ids, masked)
        for tokens in corpus.values():
            tokens.flush()
    return FileTokens(corpus, stream.getvalue(), rejects.count, rejects.reasons)


@functools.lru_cache(maxsize=2)
def _encoder(tokenizer_dir: str, add_bos: bool) -> SampleEncoder:
    return SampleEncoder(tokenizer_dir, add_bos=add_bos)


def tokenize_corpus(
    files: list[Path], encoder: SampleEncoder, rejects: Rejects, executor: Executor
) -> dict[str, CategoryTokens]:
    """Every file tokenized on `executor` (a task per file), then joined in input order into
    per-category token streams: the same streams whatever runs the tasks."""
    tasks = [(path, encoder.tokenizer_dir, encoder.add_bos) for path in files]
    corpus: dict[str, CategoryTokens] = {}
    for part in executor.map(tokenize_file, tasks, desc="tokenizing"):
        for category, tokens in part.corpus.items():
            corpus.setdefault(category, CategoryTokens()).extend(tokens)
        rejects.stream.write(part.rejects)
        rejects.count += part.rejected
        rejects.reasons.update(part.reasons)
    return corpus


def bin_bounds(lengths: list[int] | np.ndarray, bins: int) -> np.ndarray:
    """Document indices `0 = b[0] <= ... <= b[bins] = n` that cut documents, in order, into
    exactly `bins` contiguous bins of near-equal token counts.

    Cut k is the document boundary nearest to k/bins of the tokens, so a bin holds total/bins
    tokens give or take the longest document, except where that would leave a bin empty: then
    it gets one document. With fewer documents than bins, each document is a bin
    and the last bins are empty.
    """
    n = len(lengths)
    if n < bins:
        return np.minimum(np.arange(bins + 1), n)
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    bounds = [0]
    for k in range(1, bins):
        target = cumulative[-1] * k / bins
        after = int(np.searchsorted(cumulative, target))  # cumulative[after - 1] < target
        before_is_nearer = target - cumulative[after - 1] < cumulative[after] - target
        nearest = after - 1 if before_is_nearer else after
        bounds.append(min(max(nearest, bounds[-1] + 1), n - (bins - k)))
    bounds.append(n)
    return np.asarray(bounds)


class Rows(NamedTuple):
    """`[rows, max_length]` matrices: token ids (int32), segment ids (int32, 0 = padding),
    loss mask (int8)."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    loss_mask: np.ndarray


def splice(
    ids: np.ndarray, lengths: np.ndarray, masked: np.ndarray, max_length: int, pad_id: int
) -> Rows:
    """Concatenate documents and cut them into rows of exactly `max_length`.

    Only the last row is right-padded. Each row numbers the document pieces it holds 1, 2, ...
    (a document continued from the previous row starts at 1), so no attention and no position
    crosses a document boundary.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    n_rows = -(-total // max_length)
    padding = n_rows * max_length - total
    document = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    is_target = position >= np.repeat(np.asarray(masked, dtype=np.int64), lengths)

    def rows(values: np.ndarray, fill: int, dtype: type) -> np.ndarray:
        padded = np.concatenate([values.astype(dtype), np.full(padding, fill, dtype)])
        return padded.reshape(n_rows, max_length)

    doc_rows = rows(document, -1, np.int64)
    segments = np.where(doc_rows >= 0, doc_rows - doc_rows[:, :1] + 1, 0)
    return Rows(rows(ids, pad_id, np.int32), segments.astype(np.int32), rows(is_target, 0, np.int8))


def labels_from_row(
    input_ids: torch.Tensor | np.ndarray,
    segment_ids: torch.Tensor | np.ndarray,
    loss_mask: torch.Tensor | np.ndarray,
) -> torch.Tensor | np.ndarray:
    """Training labels for packed rows `[B, T]`: a torch long tensor for torch inputs, else an
    int64 numpy array (lists are read as numpy).

    A label is the token id where `loss_mask` is 1 and the token is not the first of its
    segment, else -100. The model predicts `labels[:, 1:]` from positions `[:, :-1]`, and the
    first token of a segment has no earlier token of its own document to be predicted from,
    so with this masking a packed row's loss is exactly the loss of its documents run alone.
    """
    if not isinstance(input_ids, torch.Tensor):
        input_ids, segment_ids, loss_mask = map(np.asarray, (input_ids, segment_ids, loss_mask))
    first = segment_ids == segment_ids  # all True, in the input's own array type
    first[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
    keep = (loss_mask == 1) & ~first
    if isinstance(input_ids, torch.Tensor):
        return torch.where(keep, input_ids.long(), IGNORE_INDEX)
    return np.where(keep, input_ids, IGNORE_INDEX).astype(np.int64)


@dataclass
class PackReport:
    """What `pack_corpus` did; written to `OUT/report.json` (and summarised in `report.md`).

    `tokens` counts real tokens (BOS/EOS included, padding not), `loss_tokens` those with
    `loss_mask` 1; `fill` = tokens / (rows * max_length). The per-bucket lists are indexed by
    bucket.
    """

    documents: int
    rejected: int
    tokens: int
    rows: int
    max_length: int
    padding_tokens: int
    fill: float
    tokens_per_category: dict[str, int]
    documents_per_category: dict[str, int]
    rows_per_bucket: list[int]
    tokens_per_bucket_per_category: list[dict[str, int]]
    seed: int
    tokenizer: str
    inputs: list[str]
    bins: int
    add_bos: bool
    loss_tokens: int
    rejected_by_reason: dict[str, int]
    seconds: float

    def to_markdown(self) -> str:
        """A short summary for people: totals, then tokens per category and rows per bucket."""
        lines = [
            "# Packed dataset",
            "",
            f"{self.documents:,} documents ({self.rejected:,} rejected, see `{REJECTS_FILE}`) "
            f"-> {self.tokens:,} tokens ({self.loss_tokens:,} with loss) -> {self.rows:,} rows "
            f"of {self.max_length:,} tokens; fill {self.fill:.2%} "
            f"({self.padding_tokens:,} padding tokens); {self.bins} bins, seed {self.seed}.",
            "",
            "| category | documents | tokens |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {c} | {self.documents_per_category[c]:,} | {n:,} |"
            for c, n in self.tokens_per_category.items()
        ]
        lines += ["", "| bucket | rows | tokens |", "|---:|---:|---:|"]
        lines += [
            f"| {b} | {rows:,} | {sum(self.tokens_per_bucket_per_category[b].values()):,} |"
            for b, rows in enumerate(self.rows_per_bucket)
        ]
        if self.rejected_by_reason:
            lines += ["", "| rejected because | records |", "|---|---:|"]
            lines += [f"| {r} | {n:,} |" for r, n in self.rejected_by_reason.items()]
        return "\n".join(lines) + "\n"


@dataclass
class Bucket:
    """The rows of one bucket (bin i of every category) before shuffling."""

    parts: list[tuple[str, Rows]] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)

    def table(self, index: int, seed: int) -> pa.Table:
        """The bucket as an Arrow table, rows shuffled by a Generator seeded `(seed, index)`."""
        counts = [len(rows.input_ids) for _, rows in self.parts]
        order = np.random.default_rng((seed, index)).permutation(sum(counts))
        columns = {
            name: _fixed_size_lists(np.concatenate([rows[i] for _, rows in self.parts])[order])
            for i, name in enumerate(Rows._fields)
        }
        category = np.repeat([c for c, _ in self.parts], counts)[order]
        columns["category"] = pa.array(category.tolist(), pa.string())
        columns["bucket"] = pa.array(np.full(len(order), index, np.int32))
        return pa.table(columns)


def _fixed_size_lists(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def bucketize(
    corpus: dict[str, CategoryTokens], *, bins: int, max_length: int, pad_id: int
) -> list[Bucket]:
    """Split every category into `bins` bins and splice each; bucket i gets bin i of each."""
    buckets = [Bucket() for _ in range(bins)]
    for category in sorted(corpus):
        tokens = corpus[category]
        ids = tokens.ids()
        lengths = np.asarray(tokens.lengths, dtype=np.int64)
        masked = np.asarray(tokens.masked, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        bounds = itertools.pairwise(bin_bounds(lengths, bins))
        for bucket, (first, end) in zip(buckets, bounds, strict=True):
            span = ids[offsets[first] : offsets[end]]
            rows = splice(span, lengths[first:end], masked[first:end], max_length, pad_id)
            bucket.parts.append((category, rows))
            bucket.tokens[category] = len(span)
    return buckets


@contextmanager
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """Show or hide `datasets`' own progress bars for a while (the switch is global)."""
    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def _check_settings(max_length: int, bins: int) -> None:
    if max_length < 2:
        raise InputError(f"max_length must be at least 2 tokens, got {max_length}")
    if bins < 1:
        raise InputError(f"bins must be at least 1, got {bins}")


def _report(
    corpus: dict[str, CategoryTokens],
    buckets: list[Bucket],
    rejects: Rejects,
    *,
    max_length: int,
    **settings,
) -> PackReport:
    """The counts of a finished pack, plus `settings` (the other `PackReport` fields)."""
    tokens = {c: int(sum(corpus[c].lengths)) for c in sorted(corpus)}
    rows = [sum(len(r.input_ids) for _, r in b.parts) for b in buckets]
    total = sum(tokens.values())
    return PackReport(
        documents=sum(len(t.lengths) for t in corpus.values()),
        rejected=rejects.count,
        tokens=total,
        rows=sum(rows),
        max_length=max_length,
        padding_tokens=sum(rows) * max_length - total,
        fill=round(total / (sum(rows) * max_length), 6),
        tokens_per_category=tokens,
        documents_per_category={c: len(corpus[c].lengths) for c in tokens},
        rows_per_bucket=rows,
        tokens_per_bucket_per_category=[b.tokens for b in buckets],
        loss_tokens=sum(int(r.loss_mask.sum()) for b in buckets for _, r in b.parts),
        rejected_by_reason=dict(rejects.reasons.most_common()),
        **settings,
    )


def pack_corpus(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer_dir: str | Path,
    out: str | Path,
    *,
    max_length: int,
    bins: int = 1,
    seed: int = 0,
    add_bos: bool = False,
    executor: Executor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PackReport:
    """Tokenize the corpus files and dirs `inputs`, splice and bin them, and write `out`.

    `out` is a `datasets` dir (`Dataset.load_from_disk`) with columns `input_ids`,
    `segment_ids` (int32) and `loss_mask` (int8), each a list of `max_length`, plus `category`
    and `bucket`; rows are bucket 0's (shuffled), then bucket 1's, ... Beside the data:
    `report.json`, `report.md` and `rejects.jsonl` (every record that was not packed, with
    file, line, field and reason). Everything is written in one atomic step, with `run.json`
    (settings and input fingerprints): an existing `out` is refused, naming what differs from
    this run, unless `overwrite` (see `chuan.data.shards.claim_output`).
    """
    _check_settings(max_length, bins)
    start = time.perf_counter()
    inputs = as_paths(inputs)  # a generator would be spent by corpus_files
    files = corpus_files(inputs, exclude=out)
    settings = {
        "tokenizer": dir_fingerprint(tokenizer_dir),
        "max_length": max_length,
        "bins": bins,
        "seed": seed,
        "add_bos": add_bos,
    }
    record = run_record("pack", settings, files)
    claim_output(out, record, overwrite=overwrite, resumable=False)
    encoder = SampleEncoder(tokenizer_dir, add_bos=add_bos)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(tmp / REJECTS_FILE, "w", encoding="utf-8") as stream:
            rejects = Rejects(stream)
            executor = executor or LocalExecutor(1, progress)
            executor.preflight(files, None)  # the tasks only read
            corpus = tokenize_corpus(files, encoder, rejects, executor)
        if not corpus:
            raise InputError(
                f"no documents to pack in {[str(p) for p in inputs]}: "
                f"{rejects.count} records rejected ({dict(rejects.reasons)})"
            )
        buckets = bucketize(corpus, bins=bins, max_length=max_length, pad_id=encoder.pad)
        table = pa.concat_tables([b.table(i, seed) for i, b in enumerate(buckets)])
        with _datasets_progress(progress):
            datasets.Dataset(InMemoryTable(table)).save_to_disk(tmp)
            written = datasets.load_from_disk(str(tmp)).num_rows  # read back before success
        if written != table.num_rows:
            raise RuntimeError(f"wrote {written} rows of {table.num_rows} into {tmp}")
        report = _report(
            corpus,
            buckets,
            rejects,
            max_length=max_length,
            seed=seed,
            tokenizer=str(tokenizer_dir),
            inputs=[str(p) for p in inputs],
            bins=bins,
            add_bos=add_bos,
            seconds=round(time.perf_counter() - start, 3),
        )
        write_report(tmp, asdict(report), report.to_markdown())
        (tmp / STAGE_RUN_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return report
