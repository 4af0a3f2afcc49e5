"""Reading corpus files: JSONL / JSON / Parquet records and plain text, compressed or not.

The ARCHITECTURE contract for documents is a record `{"text": str, "id"?, "category"?, "meta"?}`.
Readers are split in two so every stage can choose its own policy for bad input:

- `iter_records(path)` yields `(line, record)` for one file and reports unparseable lines as a
  `RecordError` (raised, or handed to `on_error` so a cleaning stage can count and skip them);
- `to_document(record, ...)` checks the schema and builds a `Document`, raising `RecordError`.

`iter_documents(paths)` combines both over files and dirs; without `on_error` the first bad
record stops the run with an error naming the file, the line and the field (what the tokenizer
trainer wants).

Formats, chosen by suffix: `.jsonl` (one JSON record per line), `.json` (JSON Lines too, or a
single JSON array of records when the file starts with `[`), `.parquet` (one record per row),
`.txt` (one document per non-empty line). The text formats may be compressed as `.gz` or `.zst`.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq
import zstandard

TEXT_FORMATS = (".jsonl", ".json", ".txt")
COMPRESSIONS = ("", ".gz", ".zst")
SUFFIXES = tuple(f + c for f in TEXT_FORMATS for c in COMPRESSIONS) + (".parquet",)

_PARQUET_BATCH_ROWS = 1024
# Bytes that are not UTF-8, as `errors="surrogateescape"` decodes them.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class RecordError(ValueError):
    """Input that is not a valid document; the message names file, line (or row) and field.

    `line` is None when the position is unknown (a file that does not decode as UTF-8).
    """

    def __init__(self, path: str | Path, line: int | None, reason: str, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        where = str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: field {field!r}: {reason}" if field else f"{where}: {reason}")


@dataclass(frozen=True)
class Document:
    """One document: its text, optional category tag, and where it came from.

    `line` is the 1-based line number for JSONL and `.txt` files, and the 1-based row or array
    position for Parquet files and JSON arrays.
    """

    text: str
    category: str | None
    source: str
    line: int


def format_of(path: str | Path) -> str | None:
    """The known suffix of `path` (`.jsonl.gz`, `.parquet`, ...), or None for any other file."""
    name = Path(path).name
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """One path or many, as a list (so a lone string is never iterated character by character)."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def corpus_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and dirs (one path or many) into the list of corpus files, in a stable order.

    Dirs are walked recursively in sorted order; files with unknown suffixes and hidden entries
    (e.g. unfinished `.NAME.tmp-PID` outputs) are skipped there. A file named explicitly must
    have a known suffix, and an input that yields no file at all is an error.
    """
    files: list[Path] = []
    for path in as_paths(paths):
        if path.is_dir():
            found = [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and format_of(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if not found:
                raise FileNotFoundError(
                    f"{path} holds no corpus files (looked for {', '.join(SUFFIXES)})"
                )
            files.extend(found)
        elif path.is_file():
            if format_of(path) is None:
                raise ValueError(
                    f"{path}: unknown corpus format; expected one of {', '.join(SUFFIXES)}"
                )
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} not found")
    return files


def open_text(path: str | Path, errors: str = "strict") -> IO[str]:
    """Open a text file for reading as UTF-8, decompressing `.gz` and `.zst` on the fly.

    `errors` as for `open`; "surrogateescape" keeps bytes that are not UTF-8 as lone
    surrogates, so a reader can reject just the lines that hold them.
    """
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors=errors)
    if path.name.endswith(".zst"):
        return zstandard.open(path, "rt", encoding="utf-8", errors=errors)
    return open(path, encoding="utf-8", errors=errors)


def iter_records(
    path: str | Path, *, on_error: Callable[[RecordError], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield `(line, record)` for every record of one corpus file.

    Records are whatever the file holds (usually dicts; `.txt` lines become `{"text": line}`).
    A line that is not valid JSON or not UTF-8 becomes a `RecordError`: raised when
    `on_error` is None, otherwise passed to `on_error` and skipped.
    """
    fmt = format_of(path)
    if fmt is None:
        raise ValueError(f"{path}: unknown corpus format; expected one of {', '.join(SUFFIXES)}")
    if fmt == ".parquet":
        yield from _parquet_records(path)
        return
    with open_text(path, errors="surrogateescape") as f:
        if fmt.startswith(".txt"):
            yield from _txt_records(f, path, on_error)
        else:
            yield from _json_records(f, path, not fmt.startswith(".jsonl"), on_error)


def _is_utf8(
    path: str | Path, number: int, line: str, on_error: Callable[[RecordError], None] | None
) -> bool:
    """Whether `line` decoded cleanly; if not, its `RecordError` is raised or reported."""
    if _UNDECODABLE.search(line) is None:
        return True
    error = RecordError(path, number, "not UTF-8 text")
    if on_error is None:
        raise error
    on_error(error)
    return False


def _txt_records(
    f: IO[str], path: str | Path, on_error: Callable[[RecordError], None] | None
) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(f, 1):
        text = line.rstrip("\r\n")
        if text.strip() and _is_utf8(path, number, text, on_error):
            yield number, {"text": text}


def _json_records(
    f: IO[str], path: str | Path, allow_array: bool, on_error: Callable[[RecordError], None] | None
) -> Iterator[tuple[int, Any]]:
    lines = (numbered for numbered in enumerate(f, 1) if numbered[1].strip())
    head = next(lines, None)
    if head is None:
        return
    if allow_array and head[1].lstrip().startswith("["):
        text = head[1] + f.read()
        if bad := _UNDECODABLE.search(text):
            line = head[0] + text.count("\n", 0, bad.start())
            raise RecordError(path, line, "not UTF-8 text (the whole JSON array is unusable)")
        try:
            array = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(path, head[0] + e.lineno - 1, f"invalid JSON array ({e.msg})") from e
        yield from enumerate(array, 1)
        return
    for number, line in itertools.chain([head], lines):
        if not _is_utf8(path, number, line, on_error):
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            error = RecordError(path, number, f"invalid JSON ({e.msg} at column {e.colno})")
            if on_error is None:
                raise error from e
            on_error(error)


def _parquet_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def to_document(
    record: Any, *, source: str | Path, line: int, text_field: str = "text"
) -> Document:
    """Check one record against the document schema and build its `Document`.

    `text_field` must hold a string (it may be empty: judging content is the cleaner's job);
    `category`, when present and not null, must be a string too.
    """
    if not isinstance(record, dict):
        raise RecordError(source, line, f"expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        raise RecordError(source, line, "missing", text_field)
    text = record[text_field]
    if not isinstance(text, str):
        raise RecordError(source, line, f"expected a string, got {type(text).__name__}", text_field)
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise RecordError(
            source, line, f"expected a string, got {type(category).__name__}", "category"
        )
    return Document(text=text, category=category, source=str(source), line=line)


def iter_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    text_field: str = "text",
    on_error: Callable[[RecordError], None] | None = None,
) -> Iterator[Document]:
    """Yield every document of the given files and dirs (see `corpus_files` for the order).

    Without `on_error`, the first malformed line or invalid record raises `RecordError`;
    with it, bad records are passed to `on_error` and skipped.
    """
    for path in corpus_files(paths):
        for line, record in iter_records(path, on_error=on_error):
            try:
                yield to_document(record, source=path, line=line, text_field=text_field)
            except RecordError as error:
                if on_error is None:
                    raise
                on_error(error)
