"""Perplexity and bits per byte of a causal LM on text files.

What is scored. Each document becomes `[c] ids(text) [EOS]`: the text's tokens (no special
tokens of the tokenizer's own) between a context token `c` and the EOS that ends every document
in Baichuan-style pretraining (`chuan data pack`: no BOS, EOS after each document). `c` is BOS
when the tokenizer adds BOS (`tokenizer.encode` starts with it: LLaMA-style models); otherwise it
is EOS, which in a packed pretraining row is exactly the token that precedes a document (and is
what lm-evaluation-harness prefixes when a model has no BOS). `c` is context only; every text
token and the final EOS are scored, so the loss covers all UTF-8 bytes of the text and bits per
byte compare across tokenizers: `bpb = total nats / (ln 2 * bytes)`.

Long documents are scored in sliding windows of `max_length` tokens every `stride` tokens, each
token exactly once (`chuan.model.nll`, the scorer every chuan perplexity uses).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chuan.documents import (
    RecordError,
    corpus_files,
    format_of,
    iter_records,
    open_text,
    to_document,
)
from chuan.errors import InputError, MissingError
from chuan.infer.generate import context_length
from chuan.model.nll import sequence_nats


@dataclass
class PerplexityStats:
    """Totals over some documents; the means are derived, so stats of files simply add up."""

    documents: int = 0
    tokens: int = 0  # scored tokens, the EOS of each document included
    bytes: int = 0  # UTF-8 bytes of the scored documents' text
    nats: float = 0.0  # summed negative log-likelihood

    @property
    def mean_loss(self) -> float | None:
        """Nats per scored token (None without tokens)."""
        return self.nats / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        loss = self.mean_loss
        return None if loss is None else math.exp(loss)

    @property
    def bits_per_byte(self) -> float | None:
        """Total nats / (ln 2 * UTF-8 bytes): independent of the tokenizer."""
        return self.nats / (math.log(2) * self.bytes) if self.bytes else None

    def add(self, other: PerplexityStats) -> None:
        self.documents += other.documents
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.nats += other.nats

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "mean_loss": self.mean_loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


@dataclass
class PerplexityReport:
    """Per-name and overall stats, with the settings that produced them."""

    max_length: int
    stride: int
    context_token: str  # "bos" or "eos": what precedes each document (see the module doc)
    files: dict[str, PerplexityStats]
    overall: PerplexityStats = field(default_factory=PerplexityStats)

    def to_dict(self) -> dict:
        return {
            "max_length": self.max_length,
            "stride": self.stride,
            "context_token": self.context_token,
            "files": {name: stats.to_dict() for name, stats in self.files.items()},
            "overall": self.overall.to_dict(),
        }


def context_token_id(tokenizer) -> tuple[int, str]:
    """BOS when the tokenizer adds BOS itself, else EOS (see the module doc)."""
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no EOS token, which ends every scored document")
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer.encode("a")[:1] == [bos]:
        return bos, "bos"
    return tokenizer.eos_token_id, "eos"


def evaluate_perplexity(
    model,
    tokenizer,
    texts_by_name: Mapping[str, Sequence[str]],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> PerplexityReport:
    """Score every document of every name (e.g. a file) with a causal LM (see the module doc).

    `max_length` defaults to the model's context and `stride` to `max_length`. A batch holds
    `batch_size` windows of similar length, i.e. up to `batch_size * max_length * vocab * 4`
    bytes of logits. All texts are tokenized up front: this is for evaluation sets, not for
    whole pretraining corpora (`chuan data quality score --lm` streams those).
    """
    max_length = context_length(model) if max_length is None else max_length
    stride = max_length if stride is None else stride
    if max_length > context_length(model):
        warnings.warn(
            f"max_length {max_length} exceeds the model's context of {context_length(model)} "
            "tokens; positions past it were never trained",
            stacklevel=2,
        )
    prefix, prefix_name = context_token_id(tokenizer)
    report = PerplexityReport(max_length, stride, prefix_name, {})
    sequences: list[list[int]] = []
    owners: list[PerplexityStats] = []
    for name, texts in texts_by_name.items():
        stats = report.files.setdefault(name, PerplexityStats())
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        for text, ids in zip(texts, encoded, strict=True):
            sequences.append([prefix, *ids, tokenizer.eos_token_id])
            owners.append(stats)
            stats.add(PerplexityStats(1, len(ids) + 1, len(text.encode("utf-8"))))
    nats = sequence_nats(
        model,
        sequences,
        max_length=max_length,
        stride=stride,
        batch_size=batch_size,
        progress=progress,
    )
    for stats, value in zip(owners, nats, strict=True):
        stats.nats += value
    for stats in report.files.values():
        report.overall.add(stats)
    return report


# --- reading -----------------------------------------------------------------------------------


def _whole_file(path: Path) -> str:
    """A `.txt` file as one document, verbatim; bytes that are not UTF-8 reject it."""
    try:
        with open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise RecordError(path, None, f"not UTF-8 text (byte {err.start})") from err


def _file_texts(
    path: Path, *, lines: bool, text_field: str, rejects: list[RecordError]
) -> list[str]:
    """The documents of one file; bad records go to `rejects`, as `chuan.documents` reports
    them, and so do empty documents (nothing to score)."""
    if format_of(path).startswith(".txt") and not lines:
        try:
            records: Iterable[tuple[int, object]] = [(1, {"text": _whole_file(path)})]
        except RecordError as err:
            rejects.append(err)
            return []
    else:
        records = iter_records(path, on_error=rejects.append)
    texts = []
    for line, record in records:
        try:
            text = to_document(record, source=path, line=line, text_field=text_field).text
        except RecordError as err:
            rejects.append(err)
            continue
        if text.strip():
            texts.append(text)
        else:
            rejects.append(RecordError(path, line, "empty text, nothing to score", text_field))
    return texts


def read_text_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    lines: bool = False,
    text_field: str = "text",
) -> tuple[dict[str, list[str]], list[RecordError]]:
    """Documents by file name, and the rejected records (file, line, field, reason).

    JSONL / JSON / Parquet files hold one document per record (`text_field`); a `.txt` file is
    one document, or with `lines` one per non-empty line. Dirs are expanded as corpus dirs.
    """
    texts: dict[str, list[str]] = {}
    rejects: list[RecordError] = []
    for path in corpus_files(paths):
        texts[str(path)] = _file_texts(path, lines=lines, text_field=text_field, rejects=rejects)
    return texts, rejects


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: PerplexityReport, rejected: Mapping[str, int] | None = None) -> str:
    """A markdown table: one row per file and an overall row."""
    rejected = rejected or {}
    rows = [
        "| file | documents | rejected | tokens | loss (nats/token) | perplexity | bits/byte |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    named = [*report.files.items(), ("overall", report.overall)]
    for name, stats in named:
        skipped = sum(rejected.values()) if name == "overall" else rejected.get(name, 0)
        rows.append(
            f"| {name} | {stats.documents:,} | {skipped:,} | {stats.tokens:,} | "
            f"{_cell(stats.mean_loss, 4)} | {_cell(stats.perplexity, 2)} | "
            f"{_cell(stats.bits_per_byte, 4)} |"
        )
    return "\n".join(rows)


def first_documents(texts: Sequence[str], tokenizer, max_tokens: int) -> list[str]:
    """The leading documents of `texts` whose scored tokens (text + EOS) fit in `max_tokens`;
    at least one."""
    chosen: list[str] = []
    total = 0
    for text in texts:
        total += len(tokenizer.encode(text, add_special_tokens=False)) + 1
        if chosen and total > max_tokens:
            break
        chosen.append(text)
    return chosen


def compare_perplexity(
    model_dirs: Mapping[str, str | os.PathLike],
    text_file: str | os.PathLike,
    *,
    max_tokens: int,
    max_length: int,
    device: str | None = None,
) -> dict:
    """Perplexity of several model dirs (e.g. before and after quantization) on the same
    documents: the non-empty lines of `text_file`, as many as fit in `max_tokens`, scored as
    `chuan eval ppl --lines --max-length max_length` scores them. One model is in memory at a
    time. Returns `{label: perplexity, ..., text, documents, tokens, window, dtype}`."""
    from chuan.infer.loading import load_model, load_saved_tokenizer

    source = next(iter(model_dirs.values()))  # the first dir's tokenizer scores them all
    tokenizer = load_saved_tokenizer(source)
    if tokenizer is None:
        raise MissingError(f"{source} has no tokenizer files, which perplexity needs")
    by_file, rejects = read_text_files([text_file], lines=True)
    if rejects:
        raise InputError(f"{rejects[0]} (fix or remove that line)")
    texts = first_documents(next(iter(by_file.values())), tokenizer, max_tokens)
    if not texts:
        raise InputError(f"{text_file}: no non-empty line to evaluate on")
    result: dict = {"text": str(text_file)}
    for label, model_dir in model_dirs.items():
        model = load_model(model_dir, device=device)
        window = min(max_length, context_length(model))
        report = evaluate_perplexity(
            model, tokenizer, {str(text_file): texts}, max_length=window, progress=False
        )
        result[label] = report.overall.perplexity
        result |= {
            "documents": report.overall.documents,
            "tokens": report.overall.tokens,
            "window": window,
            "dtype": str(model.dtype).removeprefix("torch."),
        }
        del model
    return result
