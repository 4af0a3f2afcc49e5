"""Compare tokenizers on the same text: compression, byte fallback and vocabulary use.

A vocabulary is judged by how few tokens it spends on the text a model will see, so every
number here is measured per language on caller-supplied files and names its corpus:

- tokens per 1,000 characters, characters per token, UTF-8 bytes per token;
- compression relative to the FIRST tokenizer (tokens / tokens of the first on the same
  text, the form of Colossal-LLaMA-2's table; below 1.0 is better);
- byte-fallback rate: the share of tokens that are byte pieces `<0x..>`, i.e. characters
  the vocabulary does not cover;
- vocabulary share: distinct ids used / vocabulary size.

Counting rules. Each non-empty line is encoded on its own, without BOS/EOS, and newlines are
not counted: a line is the document unit of the test corpora, and LLaMA's vocabulary spells
"\\n" as the byte piece `<0x0A>`, which would otherwise swamp the byte-fallback rate of every
English text. Characters are Unicode code points.

Languages. A text file is labelled by the caller (`zh=path`, or a dict of label to paths);
an unlabelled file is `zh` when more than 30% of its letters (`str.isalpha`: Han ideographs,
Latin letters, ...) are Han, else `en`. Letters, not all characters: technical Chinese is full
of ASCII commands, digits and table rules — the Debian reference in Chinese is 26% Han among
its visible characters but 50% among its letters, and English text is 0% either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chuan.errors import InputError, MissingError
from chuan.fileio import atomic_file, write_atomic
from chuan.tokenizer.spm import load_sentencepiece

HAN_SHARE_FOR_ZH = 0.30
# CJK Unified Ideographs with Extension A, compatibility ideographs, Extensions B and later.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


@dataclass(frozen=True)
class StatsRow:
    """One tokenizer on one language's text: raw counts plus the derived ratios."""

    tokenizer: str
    language: str
    vocab_size: int
    characters: int
    utf8_bytes: int
    tokens: int
    byte_tokens: int
    distinct_ids: int
    relative_to_first: float

    @property
    def tokens_per_1k_chars(self) -> float:
        return 1000.0 * self.tokens / self.characters

    @property
    def chars_per_token(self) -> float:
        return self.characters / self.tokens

    @property
    def bytes_per_token(self) -> float:
        return self.utf8_bytes / self.tokens

    @property
    def byte_fallback_rate(self) -> float:
        return self.byte_tokens / self.tokens

    @property
    def vocab_share(self) -> float:
        return self.distinct_ids / self.vocab_size


@dataclass(frozen=True)
class StatsReport:
    """All rows, in tokenizer order within each language (the first tokenizer is the base)."""

    tokenizers: list[str]
    languages: list[str]
    texts: dict[str, list[str]]
    rows: list[StatsRow]

    def row(self, tokenizer: str, language: str) -> StatsRow:
        for row in self.rows:
            if row.tokenizer == tokenizer and row.language == language:
                return row
        raise KeyError(f"no row for tokenizer {tokenizer!r} on language {language!r}")

    def to_dict(self) -> dict:
        """Counts and derived ratios, so the JSON is readable without this module."""
        rows = []
        for row in self.rows:
            derived = {name: getattr(row, name) for name in _DERIVED}
            rows.append(asdict(row) | derived)
        return {
            "tokenizers": self.tokenizers,
            "languages": self.languages,
            "texts": self.texts,
            "rows": rows,
        }

    @classmethod
    def from_dict(cls, data: dict) -> StatsReport:
        fields = StatsRow.__dataclass_fields__
        rows = [StatsRow(**{k: v for k, v in row.items() if k in fields}) for row in data["rows"]]
        return cls(data["tokenizers"], data["languages"], data["texts"], rows)


_DERIVED = (
    "tokens_per_1k_chars",
    "chars_per_token",
    "bytes_per_token",
    "byte_fallback_rate",
    "vocab_share",
)


def han_share(text: str) -> float:
    """Share of Han ideographs among the letters (`str.isalpha`) of `text`; 0 without letters."""
    letters = sum(char.isalpha() for char in text)
    return len(_HAN.findall(text)) / letters if letters else 0.0


def detect_language(text: str) -> str:
    """`zh` when more than 30% of the letters are Han, else `en`."""
    return "zh" if han_share(text) > HAN_SHARE_FOR_ZH else "en"


def split_label(spec: str | Path) -> tuple[str | None, Path]:
    """`label=path` -> (label, path); a bare path (or an existing file with `=`) -> (None, path)."""
    text = str(spec)
    if isinstance(spec, Path) or Path(text).exists() or "=" not in text:
        return None, Path(text)
    label, path = text.split("=", 1)
    if not label:
        raise InputError(f"{spec!r}: empty label before '=' (expected label=path)")
    return label, Path(path)


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, without their line ends."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}): {err.reason}") from err
    return [line for line in text.splitlines() if line.strip()]


def group_texts(texts: Mapping[str, Sequence[str | Path]] | Sequence[str | Path]) -> dict:
    """Language label -> list of paths, from a dict or from `lang=path` / bare-path specs."""
    if isinstance(texts, Mapping):
        groups = {label: [Path(p) for p in paths] for label, paths in texts.items()}
    else:
        groups = {}
        for spec in texts:
            label, path = split_label(spec)
            if label is None:
                label = detect_language("\n".join(read_lines(path)))
            groups.setdefault(label, []).append(path)
    for label, paths in groups.items():
        if not paths:
            raise InputError(f"language {label!r} has no text files")
        for path in paths:
            if not path.is_file():
                raise MissingError(f"text file for {label!r} not found: {path}")
    return groups


def tokenizer_names(tokenizers: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """(display name, path) per tokenizer: `name=path`, else the dir name or the file stem."""
    named = []
    for spec in tokenizers:
        name, path = split_label(spec)
        named.append((name or (path.name if path.is_dir() else path.stem), path))
    names = [name for name, _ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"tokenizer names {duplicates} repeat; rename them with name=path")
    return named


def count_tokens(tokenizer: Path, lines: list[str]) -> tuple[int, int, int, int]:
    """(vocab size, tokens, byte-piece tokens, distinct ids) of `lines` encoded one by one."""
    sp = load_sentencepiece(tokenizer)
    vocab = sp.get_piece_size()
    ids = sp.encode(lines, add_bos=False, add_eos=False)
    counts = np.bincount(
        np.fromiter((i for line in ids for i in line), dtype=np.int64), minlength=vocab
    )
    is_byte = np.fromiter((sp.is_byte(i) for i in range(vocab)), dtype=bool, count=vocab)
    return vocab, int(counts.sum()), int(counts[is_byte].sum()), int(np.count_nonzero(counts))


def tokenizer_stats(
    tokenizers: Sequence[str | Path],
    texts: Mapping[str, Sequence[str | Path]] | Sequence[str | Path],
    *,
    json_out: str | Path | None = None,
    png_out: str | Path | None = None,
) -> StatsReport:
    """Measure every tokenizer on every language's text; optionally write JSON and a PNG.

    `tokenizers`: dirs with `tokenizer.model` or `.model` files, each optionally `name=path`;
    the first is the base of the relative compression. `texts`: a dict label -> paths, or a
    list of `label=path` / bare paths (bare paths are labelled by `detect_language`).
    """
    named = tokenizer_names(tokenizers)
    if not named:
        raise InputError("no tokenizers given")
    groups = group_texts(texts)
    rows = []
    for language, paths in groups.items():
        lines = [line for path in paths for line in read_lines(path)]
        if not lines:
            raise InputError(f"language {language!r}: no non-empty lines in {paths}")
        characters = sum(len(line) for line in lines)
        utf8_bytes = sum(len(line.encode("utf-8")) for line in lines)
        counts = [count_tokens(path, lines) for _, path in named]
        base_tokens = counts[0][1]
        for (name, _), (vocab, tokens, byte_tokens, distinct) in zip(named, counts, strict=True):
            rows.append(
                StatsRow(
                    tokenizer=name,
                    language=language,
                    vocab_size=vocab,
                    characters=characters,
                    utf8_bytes=utf8_bytes,
                    tokens=tokens,
                    byte_tokens=byte_tokens,
                    distinct_ids=distinct,
                    relative_to_first=tokens / base_tokens,
                )
            )
    report = StatsReport(
        [name for name, _ in named],
        list(groups),
        {label: [str(p) for p in paths] for label, paths in groups.items()},
        rows,
    )
    if json_out is not None:
        write_json(report, json_out)
    if png_out is not None:
        write_png(report, png_out)
    return report


_COLUMNS = (
    ("language", lambda r: r.language),
    ("tokenizer", lambda r: r.tokenizer),
    ("vocab", lambda r: f"{r.vocab_size:,}"),
    ("tokens", lambda r: f"{r.tokens:,}"),
    ("tokens/1k chars", lambda r: f"{r.tokens_per_1k_chars:.1f}"),
    ("chars/token", lambda r: f"{r.chars_per_token:.3f}"),
    ("bytes/token", lambda r: f"{r.bytes_per_token:.3f}"),
    ("vs first", lambda r: f"{r.relative_to_first:.3f}"),
    ("byte fallback", lambda r: f"{100 * r.byte_fallback_rate:.2f}%"),
    ("vocab used", lambda r: f"{100 * r.vocab_share:.1f}%"),
)


def render_table(report: StatsReport, fmt: str = "markdown") -> str:
    """Every metric, the tokenizers one under another within each language's block of rows.

    `fmt` is `markdown` or `plain` (aligned columns for a terminal).
    """
    order = {language: i for i, language in enumerate(report.languages)}
    rows = sorted(report.rows, key=lambda r: order[r.language])  # stable: tokenizer order kept
    header = [title for title, _ in _COLUMNS]
    return _format_table(header, [[cell(row) for _, cell in _COLUMNS] for row in rows], fmt, 2)


def render_summary(
    report: StatsReport, metric: str = "tokens_per_1k_chars", fmt: str = "markdown"
) -> str:
    """One metric side by side: a row per tokenizer (with its vocabulary), a column per language."""
    if metric not in _DERIVED and metric != "relative_to_first":
        raise InputError(f"metric {metric!r}: expected one of {[*_DERIVED, 'relative_to_first']}")
    header = ["tokenizer", "vocab", *(f"{lang} {metric}" for lang in report.languages)]
    cells = []
    for name in report.tokenizers:
        rows = [report.row(name, lang) for lang in report.languages]
        values = [f"{getattr(row, metric):.4g}" for row in rows]
        cells.append([name, f"{rows[0].vocab_size:,}", *values])
    return _format_table(header, cells, fmt, 1)


def _format_table(header: list[str], cells: list[list[str]], fmt: str, text_columns: int) -> str:
    """Markdown, or plain text with the first `text_columns` left-aligned and numbers right."""
    if fmt == "markdown":
        lines = [header, ["---"] * text_columns + ["---:"] * (len(header) - text_columns), *cells]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    if fmt != "plain":
        raise InputError(f"table format {fmt!r}: expected 'markdown' or 'plain'")
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < text_columns else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in [header, *cells]
    )


def write_json(report: StatsReport, path: str | Path) -> Path:
    """The report as JSON (counts and derived ratios), written atomically."""
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return write_atomic(path, text)


def read_json(path: str | Path) -> StatsReport:
    """A report written by `write_json`."""
    return StatsReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def write_png(report: StatsReport, path: str | Path) -> Path:
    """Grouped bar chart of tokens per 1,000 characters: languages on x, one bar per tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report.tokenizers)
    width = 0.8 / n
    x = np.arange(len(report.languages))
    fig, ax = plt.subplots(figsize=(min(16.0, 2.0 + 0.4 * n * len(report.languages)), 4.5))
    for i, name in enumerate(report.tokenizers):
        heights = [report.row(name, lang).tokens_per_1k_chars for lang in report.languages]
        bars = ax.bar(x + (i - (n - 1) / 2) * width, heights, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(x, report.languages)
    ax.set_ylabel("tokens per 1,000 characters (lower is better)")
    ax.set_title("Tokenizer compression by language")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        return Path(path)
    finally:
        plt.close(fig)
