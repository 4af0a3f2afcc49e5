"""Read MMLU / CMMLU / C-Eval question files in every published layout (docs/eval.md, "Data").

A benchmark root holds one folder per split (`dev`, `val`, `test`), each with one CSV file per
subject, named `{subject}_{split}.csv` (MMLU, C-Eval) or `{subject}.csv` (CMMLU). The layout
is read from each file's header, never from the benchmark's name:

- no header (Hendrycks' original MMLU): question, A, B, C, D, answer as a letter;
- `question,choice0,choice1,choice2,choice3,answer` (MMLU copies): answer a 0-based int (0 = A);
- `,Question,A,B,C,D,Answer` (CMMLU; the unnamed first column is a row index): letter answers;
- `id,question,A,B,C,D[,answer[,explanation]]` (C-Eval): letters; test has no answer column.

Files go through `csv.reader`, so quoted commas and multi-line fields (C-Eval's explanations)
are read whole. A bad row is a `RecordError` naming the file, the row's first line and the
field; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from chuan.documents import RecordError
from chuan.errors import InputError, MissingError

LETTERS = ("A", "B", "C", "D")
SPLITS = ("test", "val", "dev")


@dataclass(frozen=True)
class McqItem:
    """One four-way question; `answer` is a letter, or None where the split has no answers."""

    subject: str
    index: int  # position in its subject file, from 0
    question: str
    choices: tuple[str, str, str, str]
    answer: str | None
    path: str
    line: int  # the file line the row starts on


@dataclass(frozen=True)
class Layout:
    """Where a file keeps its fields: column positions, and how the answer is written."""

    name: str
    header: bool
    width: int
    question: int
    choices: tuple[int, int, int, int]
    answer: int | None
    answer_is_index: bool = False


HENDRYCKS = Layout("mmlu (no header, letter answers)", False, 6, 0, (1, 2, 3, 4), 5)


def detect_layout(first_row: list[str]) -> Layout:
    """The layout whose header `first_row` is; a row that is no header is Hendrycks' data."""
    names = [cell.strip().lower() for cell in first_row]
    if "question" not in names:
        return HENDRYCKS
    question = names.index("question")
    for choice_names, is_index in ((["a", "b", "c", "d"], False), (_index_choices(), True)):
        if all(name in names for name in choice_names):
            choices = tuple(names.index(name) for name in choice_names)
            answer = names.index("answer") if "answer" in names else None
            kind = "0-based index" if is_index else "letter"
            label = f"header {','.join(first_row)} ({kind} answers)"
            return Layout(label, True, len(names), question, choices, answer, is_index)
    raise InputError(
        f"header {first_row} names a question column but not the choice columns "
        "A,B,C,D or choice0..choice3"
    )


def _index_choices() -> list[str]:
    return [f"choice{i}" for i in range(len(LETTERS))]


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """`(first line, fields)` of every CSV record; an undecodable file is a `RecordError`."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            start = 1
            for row in reader:
                yield start, row
                start = reader.line_num + 1
    except UnicodeDecodeError as err:
        reason = f"not UTF-8 text ({err.reason} at byte {err.start})"
        raise RecordError(path, None, reason) from err
    except csv.Error as err:
        raise RecordError(path, reader.line_num, f"unreadable CSV: {err}") from err


def _answer(raw: str, layout: Layout, path: Path, line: int) -> str:
    value = raw.strip()
    if layout.answer_is_index:
        if value not in {str(i) for i in range(len(LETTERS))}:
            raise RecordError(path, line, f"{value!r} is not a choice index 0-3", "answer")
        return LETTERS[int(value)]
    letter = value.upper()
    if letter not in LETTERS:
        raise RecordError(path, line, f"{value!r} is not one of A, B, C, D", "answer")
    return letter


def _item(row: list[str], layout: Layout, subject: str, index: int, path: Path, line: int):
    if len(row) != layout.width:
        raise RecordError(
            path, line, f"expected {layout.width} fields ({layout.name}), found {len(row)}"
        )
    question = row[layout.question]
    if not question.strip():
        raise RecordError(path, line, "empty", "question")
    answer = None
    if layout.answer is not None:
        answer = _answer(row[layout.answer], layout, path, line)
    choices = tuple(row[i] for i in layout.choices)
    return McqItem(subject, index, question, choices, answer, str(path), line)


def read_subject_file(path: str | Path, subject: str) -> list[McqItem]:
    """Every question of one subject file, in file order."""
    path = Path(path)
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise RecordError(path, None, "empty file")
    try:
        layout = detect_layout(first[1])
    except ValueError as err:
        raise RecordError(path, 1, str(err)) from err
    data = rows if layout.header else itertools.chain([first], rows)
    items = [_item(row, layout, subject, i, path, line) for i, (line, row) in enumerate(data)]
    if not items:
        raise RecordError(path, None, "a header and no questions")
    return items


def available_splits(root: str | Path) -> list[str]:
    """The splits of `root` that have at least one CSV file, in the order test, val, dev."""
    root = Path(root)
    return [s for s in SPLITS if (root / s).is_dir() and any((root / s).glob("*.csv"))]


def default_split(root: str | Path) -> str:
    """test when `root` has it, else val, else dev (the splits the published numbers use)."""
    splits = available_splits(root)
    if not splits:
        raise MissingError(f"{root} has no split folder (test/, val/ or dev/) with CSV files")
    return splits[0]


def subject_of(path: Path, split: str) -> str:
    """`abstract_algebra_dev.csv` -> `abstract_algebra`; `agronomy.csv` -> `agronomy`."""
    return path.stem.removesuffix(f"_{split}")


def subject_files(root: str | Path, split: str) -> dict[str, Path]:
    """Subject name -> its CSV file in `root/split`, sorted by name."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise MissingError(f"no {split}/ folder in {root} (found: {available_splits(root)})")
    files = {subject_of(p, split): p for p in sorted(folder.glob("*.csv"))}
    if not files:
        raise MissingError(f"{folder} holds no CSV files")
    return dict(sorted(files.items()))


def load_split(
    root: str | Path, split: str, subjects: Sequence[str] | None = None
) -> dict[str, list[McqItem]]:
    """Subject -> its questions for one split; `subjects` picks some (unknown ones are an error)."""
    files = subject_files(root, split)
    if subjects:
        missing = sorted(set(subjects) - set(files))
        if missing:
            raise MissingError(
                f"no {split} file for subject(s) {', '.join(missing)} in {Path(root) / split}"
            )
        files = {s: files[s] for s in sorted(set(subjects))}
    return {subject: read_subject_file(path, subject) for subject, path in files.items()}


def require_answers(data: dict[str, list[McqItem]], split: str) -> None:
    """Scoring needs gold letters: say which file lacks them and what to do instead."""
    for items in data.values():
        if items and items[0].answer is None:
            raise InputError(
                f"{items[0].path} has no answer column, so the {split} split cannot be scored "
                "here (C-Eval's test answers are not public: score --split val, or submit "
                "predictions to the C-Eval leaderboard)"
            )
