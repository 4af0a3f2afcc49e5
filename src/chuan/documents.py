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
import io
import itertools
import json
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from chuan.errors import InputError, MissingError

TEXT_FORMATS = (".jsonl", ".json", ".txt")
COMPRESSIONS = ("", ".gz", ".zst")
SUFFIXES = tuple(f + c for f in TEXT_FORMATS for c in COMPRESSIONS) + (".parquet",)

_PARQUET_BATCH_ROWS = 1024
# A dir holding this file and `shards/` is a corpus stage's output (`chuan.data.shards`): an
# input walk reads only its `shards/`, never its rejects or reports.
STAGE_RUN_FILE = "run.json"
# What a compressed file that stops decoding raises (truncated, corrupt, not compressed at all).
_DECODE_ERRORS = (EOFError, OSError, zlib.error, zstandard.ZstdError)
_COMPRESSORS = {".gz": "gzip", ".zst": "zstd"}
# Bytes that are not UTF-8, as `errors="surrogateescape"` decodes them.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class RecordError(InputError):
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

    @property
    def summary(self) -> str:
        """The reason without its details, for counting rejects by kind: "invalid JSON (Expecting
        value at column 1)" -> "invalid JSON", prefixed by the field when there is one."""
        reason = self.reason.split(" (")[0]
        return f"{self.field}: {reason}" if self.field else reason

    def __reduce__(self):  # so a worker process can send it back whole
        return self.__class__, (self.path, self.line, self.reason, self.field)


class UnreadableFileError(RecordError):
    """A file that cannot be read through: truncated or corrupt compressed data, a binary or
    mis-suffixed file, a broken Parquet file. Unlike a bad record it is never skipped: the
    records read so far would be a silent loss, so every reader stops with this error, which
    names the file and says how to check it."""


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


def corpus_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    exclude: str | os.PathLike | None = None,
) -> list[Path]:
    """Expand files and dirs (one path or many) into the list of corpus files, in a stable order.

    Dirs are walked recursively in sorted order; files with unknown suffixes and hidden entries
    (e.g. unfinished `.NAME.tmp-PID` outputs) are skipped there. A file named explicitly must
    have a known suffix, and an input that yields no file at all is an error.

    `exclude` is the output dir of the stage reading the files: a walk skips it (saying so on
    stderr), and an input inside it is an error, so a stage never reads its own output. A
    corpus stage's output dir met in a walk (it holds `run.json` and `shards/`) contributes
    only its `shards/`, never its rejects or reports.
    """
    out = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    for path in as_paths(paths):
        if out is not None and path.exists() and path.resolve().is_relative_to(out):
            raise InputError(
                f"{path} is inside the output dir {exclude}: a stage never reads its own output; "
                "choose another --out"
            )
        if path.is_dir():
            found = _walk(path, out)
            if not found:
                raise MissingError(
                    f"{path} holds no corpus files (looked for {', '.join(SUFFIXES)})"
                )
            files.extend(found)
        elif path.is_file():
            if format_of(path) is None:
                raise InputError(
                    f"{path}: unknown corpus format; expected one of {', '.join(SUFFIXES)}"
                )
            files.append(path)
        else:
            raise MissingError(f"{path} not found")
    return files


def _walk(root: Path, out: Path | None) -> list[Path]:
    """The corpus files under `root`, sorted, without hidden entries, the output dir `out` or
    the bookkeeping of stage output dirs."""
    entries = sorted(root.rglob("*"))
    skip: list[tuple[tuple[str, ...], tuple[str, ...] | None]] = []  # (dir, allowed sub-dir)
    if out is not None:
        resolved = root.resolve()
        if out.is_relative_to(resolved):
            skip.append((out.relative_to(resolved).parts, None))
            if out.exists():
                print(f"skipping {out}: it is this stage's output dir", file=sys.stderr)
    for run_file in (p for p in entries if p.name == STAGE_RUN_FILE):
        stage_dir = run_file.parent.relative_to(root).parts
        stage = _stage_of(run_file)
        if stage is None or any(stage_dir[: len(d)] == d for d, _ in skip):
            continue
        if (run_file.parent / "shards").is_dir():
            skip.append((stage_dir, ("shards",)))
            print(
                f"reading only {run_file.parent / 'shards'}: {run_file.parent} is the output "
                f"dir of `chuan data {stage}`",
                file=sys.stderr,
            )
        else:  # a packed dataset (token ids, not text) or a stage that left no shards yet
            skip.append((stage_dir, None))
            print(
                f"skipping {run_file.parent}: the output dir of `chuan data {stage}`, no text",
                file=sys.stderr,
            )

    def wanted(p: Path) -> bool:
        parts = p.relative_to(root).parts
        if any(part.startswith(".") for part in parts):
            return False
        for where, allowed in skip:
            if parts[: len(where)] == where:
                rest = parts[len(where) :]
                if allowed is None or rest[: len(allowed)] != allowed:
                    return False
        return True

    return [p for p in entries if format_of(p) and wanted(p) and p.is_file()]


def _stage_of(run_file: Path) -> str | None:
    """The stage named by a corpus stage's `run.json`, None for any other file of that name."""
    try:
        record = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and {"stage", "settings", "inputs"} <= record.keys():
        return str(record["stage"])
    return None


def open_text(path: str | Path, errors: str = "strict") -> IO[str]:
    """Open a text file for reading as UTF-8, decompressing `.gz` and `.zst` on the fly.

    `errors` as for `open`; "surrogateescape" keeps bytes that are not UTF-8 as lone
    surrogates, so a reader can reject just the lines that hold them.
    """
    path = Path(path)
    if path.name.endswith((".gz", ".zst")) and path.stat().st_size == 0:
        raise EOFError("the file is empty (0 bytes), not even an empty compressed stream")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors=errors)
    if path.name.endswith(".zst"):
        raw = io.BufferedReader(_ZstdReader(path), buffer_size=1 << 17)
        return io.TextIOWrapper(raw, encoding="utf-8", errors=errors)
    return open(path, encoding="utf-8", errors=errors)


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a `.zst` file, every frame of a concatenated one, and an
    `EOFError` when the file ends inside a frame (`zstandard.open` returns what it has, as if
    the file were complete: a truncated download read as a shorter, valid corpus)."""

    _CHUNK = 1 << 17

    def __init__(self, path: Path):
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._fed = False  # bytes of the current frame were given to the decompressor
        self._pending = b""
        self._offset = 0  # bytes of `_pending` already returned
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset == len(self._pending) and not self._done:
            self._pending, self._offset = b"", 0
            self._fill()
        size = min(len(buffer), len(self._pending) - self._offset)
        buffer[:size] = memoryview(self._pending)[self._offset : self._offset + size]
        self._offset += size
        return size

    def _fill(self) -> None:
        data = self._file.read(self._CHUNK)
        if not data:
            if self._fed and not self._frame.eof:
                raise EOFError("the file ends in the middle of a zstd frame")
            self._done = True
            return
        while data:
            self._fed = True
            self._pending += self._frame.decompress(data)
            if not self._frame.eof:
                return
            data = self._frame.unused_data
            self._frame = self._dctx.decompressobj()
            self._fed = False

    def close(self) -> None:
        self._file.close()
        super().close()


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
        raise InputError(f"{path}: unknown corpus format; expected one of {', '.join(SUFFIXES)}")
    if fmt == ".parquet":
        yield from _parquet_records(path)
        return
    last = 0  # the last line read, for the message when the file stops decoding
    try:
        _sniff(path, fmt)
        with open_text(path, errors="surrogateescape") as f:
            if fmt.startswith(".txt"):
                records = _txt_records(f, path, on_error)
            else:
                records = _json_records(f, path, not fmt.startswith(".jsonl"), on_error)
            for last, record in records:  # noqa: B007 - `last` is read in the handler
                yield last, record
    except _DECODE_ERRORS as error:
        raise _unreadable(path, fmt, last, error) from None


_MAGIC = {b"\x1f\x8b": ("gzip", ".gz"), b"\x28\xb5\x2f\xfd": ("zstd", ".zst"),
          b"PAR1": ("Parquet", ".parquet")}  # fmt: skip
_SNIFF_BYTES = 4096


def _sniff(path: str | Path, fmt: str) -> None:
    """Refuse a text file that is really compressed or binary, from its first bytes (after
    decompression, for a compressed one): it would otherwise become thousands of "not UTF-8"
    rejects, or look like text that is not there."""
    with open(path, "rb") as f:
        raw = f.read(_SNIFF_BYTES)
    compressed = fmt.endswith(tuple(_COMPRESSORS))
    if not compressed:
        for magic, (kind, suffix) in _MAGIC.items():
            if raw.startswith(magic):
                raise UnreadableFileError(
                    path, None, f"holds {kind} data, not plain text: rename it to end in {suffix}"
                )
    else:
        with open_text(path, errors="surrogateescape") as f:
            raw = f.buffer.read(_SNIFF_BYTES)
    if b"\x00" in raw:
        raise UnreadableFileError(
            path,
            None,
            "looks binary (it holds NUL bytes), not UTF-8 text: is it the right file, or "
            "compressed under another suffix?",
        )


def _unreadable(path: str | Path, fmt: str, last: int, error: BaseException) -> UnreadableFileError:
    """The error of a file that stops decoding part-way (or never starts)."""
    compression = next((c for c in _COMPRESSORS if fmt.endswith(c)), None)
    kind = f"{_COMPRESSORS[compression]} data" if compression else "file"
    where = f"after line {last}" if last else "before its first record"
    what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    check = (
        f"re-download or re-create it; decompress it to check (`{_COMPRESSORS[compression]} -t "
        f"{path}`)"
        if compression
        else "check that it is readable"
    )
    return UnreadableFileError(path, None, f"truncated or corrupt {kind} {where} ({what}): {check}")


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
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                number += 1
                yield number, record
    except (pa.ArrowException, OSError) as error:
        where = f"after row {number}" if number else "before its first row"
        read = "the rows before it were read, the rest is lost" if number else "nothing was read"
        raise UnreadableFileError(
            path,
            None,
            f"not a readable Parquet file ({where}: {error}); {read}: re-download or re-create it",
        ) from None


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
        try:
            for line, record in iter_records(path, on_error=on_error):
                try:
                    yield to_document(record, source=path, line=line, text_field=text_field)
                except RecordError as error:
                    if on_error is None:
                        raise
                    on_error(error)
        except RecordError as error:  # a file that cannot be read through (a broken array)
            if on_error is None or isinstance(error, UnreadableFileError):
                raise
            on_error(error)
