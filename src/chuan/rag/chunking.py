"""Documents -> chunks that keep where they came from: file, line and character span.

A chunk is what retrieval returns and what a cited answer will quote, so it must be
addressable: `source` (the file as given), `line` (the record's 1-based line in a JSONL or
`.txt` file, its row or array position otherwise, as `chuan.documents` numbers them) and the
span `[start, end)` of its text in the document's text.

How a document is cut. Its text is split at paragraph ends (runs of newlines), and a paragraph
longer than a chunk's budget at sentence ends (Chinese 。！？；… and English . ! ? followed by
a space, closing quotes and brackets kept with their sentence); a sentence still too long is cut
every `budget` characters. The pieces are then packed greedily, in order, into chunks of at most
`budget = chunk_chars - overlap` characters. These *cores* partition the text: every character
is in exactly one core, and the cores in order reassemble it. Each chunk's text then starts
`overlap` characters before its core (never before the document's start), so a phrase cut by a
boundary is whole in one of the two chunks; a chunk holds at most `chunk_chars` characters.
Separators (newlines, spaces) stay with the text before them, so nothing is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from chuan.documents import iter_records, to_document
from chuan.errors import InputError

DEFAULT_CHUNK_CHARS = 400
DEFAULT_OVERLAP = 50

# Paragraphs end after a run of newlines (with any spaces between them).
_PARAGRAPH = re.compile(r"[^\n]*(?:\n[ \t\r\f\v]*)+|[^\n]+$")
# A sentence ends after Chinese terminal punctuation, or after English . ! ? followed by
# whitespace or the end (so "3.14" is no end); closing quotes/brackets and the whitespace after
# the end stay with its sentence.
CLOSERS = "\"'”’」』）)》〉】\\]"
_SENTENCE_END = re.compile(rf"[。！？；…]+[{CLOSERS}]*\s*|[!?.]+[{CLOSERS}]*(?:\s+|$)")


@dataclass(frozen=True)
class Chunk:
    """One chunk: `text == document[start:end]`; `core_start` is where the part that no other
    chunk owns begins (`start` is `overlap` characters earlier, except for a first chunk)."""

    text: str
    source: str
    line: int
    start: int
    end: int
    core_start: int
    doc_id: str | None = None

    def to_record(self) -> dict:
        return asdict(self)


def check_params(chunk_chars: int, overlap: int) -> None:
    """Refuse sizes that leave a chunk no room of its own."""
    if chunk_chars < 1:
        raise InputError(f"--chunk-chars must be at least 1, got {chunk_chars}")
    if overlap < 0 or overlap >= chunk_chars:
        raise InputError(
            f"--overlap must be at least 0 and below --chunk-chars ({chunk_chars}), got {overlap}"
        )


def _pieces(text: str, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive spans covering `text`, each at most `budget` long, cut at paragraph ends
    first, then sentence ends, then every `budget` characters."""
    for para in _PARAGRAPH.finditer(text):
        if para.end() - para.start() <= budget:
            yield para.span()
            continue
        ends = [m.end() for m in _SENTENCE_END.finditer(text, para.start(), para.end())]
        start = para.start()
        for end in [*ends, para.end()]:
            for cut in range(start, end, budget):
                yield cut, min(cut + budget, end)
            start = max(start, end)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Consecutive spans of `text`, one per sentence (as the chunker cuts them)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    starts = [0, *ends]
    return [(s, e) for s, e in zip(starts, [*ends, len(text)], strict=True) if e > s]


def chunk_spans(text: str, chunk_chars: int, overlap: int) -> list[tuple[int, int, int]]:
    """`(start, core_start, end)` of every chunk of `text` (see the module docstring)."""
    check_params(chunk_chars, overlap)
    budget = chunk_chars - overlap
    cores: list[tuple[int, int]] = []
    for start, end in _pieces(text, budget):
        if cores and end - cores[-1][0] <= budget:
            cores[-1] = (cores[-1][0], end)
        else:
            cores.append((start, end))
    return [(max(0, start - overlap), start, end) for start, end in cores]


def chunk_file(
    path: str | Path, chunk_chars: int, overlap: int, *, text_field: str = "text"
) -> Iterator[list[Chunk]]:
    """The chunks of one corpus file, a list per document (empty for an empty text), in order.
    A record that is not a document stops the run with an error naming the file, line and
    field: a knowledge base that silently lacked part of its input would answer "not found"."""
    for line, record in iter_records(path):
        document = to_document(record, source=path, line=line, text_field=text_field)
        doc_id = record.get("id")
        yield [
            Chunk(
                text=document.text[start:end],
                source=str(path),
                line=line,
                start=start,
                end=end,
                core_start=core_start,
                doc_id=None if doc_id is None else str(doc_id),
            )
            for start, core_start, end in chunk_spans(document.text, chunk_chars, overlap)
        ]
