"""Cleaning rules: small named functions, each testable alone, and the thresholds they read.

Two kinds of rule, both pure functions:

- a *document rule* `rule(doc: Doc, cfg) -> str | None` returns None to keep the document or a
  reason (the measured value against its threshold) to drop it;
- a *line rule* `rule(line: str, cfg) -> bool` returns True to remove a (stripped, non-empty) line.

`cfg` is `EnglishRules` or `ChineseRules`. Every threshold is a field named `min_*` / `max_*` so its
direction is never in doubt (data-juicer's ratio filters leave it unclear:
datajuicer/data-juicer#307). Defaults come from the published rule sets: Gopher quality and
repetition (Rae et al. 2021), C4 (Raffel et al. 2020), RefinedWeb (Penedo et al. 2023) and
FineWeb, as implemented in huggingface/datatrove `src/datatrove/pipeline/filters/`, and for
Chinese chuan's own starting set drawn from CASIA-LM/ChineseWebText, MAP-Neo's Matrix pipeline
and BigScience ROOTS.

The rule tables at the bottom (`EN_DOC_RULES`, ...) fix the order in which a stage runs them; a
document's reject carries the first rule that fired.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from chuan.config import bounded
from chuan.data.langid import HAN, LETTER

# ---------------------------------------------------------------------------------------------
# Shared text views and measures

BULLETS = ("•", "‣", "●", "○", "◦", "▪", "■", "□", "◆", "◇", "►", "▶", "·", "-", "*")
ELLIPSES = ("...", "…")
# End of a sentence: ASCII and full-width, closing quotes/brackets after it allowed.
TERMINAL = ".!?。！？…\"'”’」』)）"
ZH_PUNCTUATION = re.compile("[，。！？；：、“”‘’（）《》〈〉「」『』【】…—,.!?;:()\"']")
SPECIAL = re.compile(r"[^\w\s]")
DIGIT = re.compile(r"\d")
BRACKETED = re.compile("【[^】]*】")
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?:\s|$)")
ENGLISH_STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
_STRIP = "\"'()[]{}<>.,;:!?*_-`"


class Doc:
    """A document's text and the views rules share, each computed once.

    `removed_share` is set by the line pass: the share of the original words (English) or
    non-space characters (Chinese) that were in removed lines.
    """

    def __init__(self, text: str, removed_share: float = 0.0):
        self.text = text
        self.removed_share = removed_share
        self._char_grams: dict[int, Counter] = {}

    @cached_property
    def lines(self) -> list[str]:
        """Non-empty lines, stripped (lines split on `\\n+`, as Gopher does)."""
        return [s for line in self.text.split("\n") if (s := line.strip())]

    @cached_property
    def paragraphs(self) -> list[str]:
        """Blocks separated by blank lines (`\\n{2,}`)."""
        return [s for p in re.split(r"\n\s*\n", self.text) if (s := p.strip())]

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def chars(self) -> str:
        """The text without whitespace: Chinese measures count characters, not words."""
        return "".join(self.text.split())

    @cached_property
    def han(self) -> int:
        return len(HAN.findall(self.text))

    def char_grams(self, n: int) -> Counter:
        """Counts of the character n-grams of `chars` (cached per n)."""
        if n not in self._char_grams:
            s = self.chars
            self._char_grams[n] = Counter(s[i : i + n] for i in range(len(s) - n + 1))
        return self._char_grams[n]


def share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def duplicate_shares(items: Sequence[str]) -> tuple[float, float]:
    """(items that repeat an earlier item, their characters) as shares of all items and chars.

    The first occurrence is not a duplicate, later ones are (Gopher's definition).
    """
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return share(count, len(items)), share(chars, sum(map(len, items)))


def _grams(units: Sequence[str], n: int) -> list:
    """The n-grams of `units`: substrings of a string, tuples of a word list (built in C)."""
    if isinstance(units, str):
        return [units[i : i + n] for i in range(len(units) - n + 1)]
    return list(zip(*(units[i:] for i in range(n)), strict=False))  # shorter tails end it


def _gram_chars(units: Sequence[str], n: int) -> list[int]:
    """Characters in each n-gram of `units` (without the spaces between words)."""
    if isinstance(units, str):
        return [n] * max(len(units) - n + 1, 0)
    cumulative = list(itertools.accumulate(map(len, units), initial=0))
    return [b - a for a, b in zip(cumulative, cumulative[n:], strict=False)]


def top_ngram_share(units: Sequence[str], n: int, total: int) -> float:
    """Characters covered by the most frequent n-gram of `units` (words, or the characters of a
    string) over `total` characters; 0 when no n-gram occurs twice."""
    counts = Counter(_grams(units, n))
    if not counts:
        return 0.0
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return share(count * sum(map(len, gram)), total)


def duplicated_ngram_share(units: Sequence[str], n: int, total: int) -> float:
    """Characters in n-grams that repeat an earlier n-gram, over `total` characters. After a repeat
    the scan jumps n units ahead, so overlapping repeats are not counted twice (Gopher)."""
    grams, sizes = _grams(units, n), _gram_chars(units, n)
    if len(set(grams)) == len(grams):
        return 0.0  # nothing repeats: skip the scan (the common case)
    seen: set = set()
    repeated = i = 0
    while i < len(grams):
        if grams[i] in seen:
            repeated += sizes[i]
            i += n
        else:
            seen.add(grams[i])
            i += 1
    return share(repeated, total)


def repeated_ngram_position_share(text: str, n: int) -> float:
    """Share of character n-gram positions whose n-gram occurs more than once (ChineseWebText's
    13-gram repetition, on lower-cased text without whitespace)."""
    s = "".join(text.lower().split())
    counts = Counter(s[i : i + n] for i in range(len(s) - n + 1))
    total = sum(counts.values())
    return share(sum(c for c in counts.values() if c > 1), total)


def top_repetition_ratio(counts: Counter) -> float:
    """ROOTS / data-juicer repetition ratio: occurrences held by the ⌊√distinct⌋ most frequent
    n-grams among those occurring more than once, over all occurrences."""
    total = sum(counts.values())
    top = int(math.sqrt(len(counts)))
    repeated = sorted((c for c in counts.values() if c > 1), reverse=True)[:top]
    return share(sum(repeated), total)


def char_entropy(text: str) -> float:
    """Character unigram entropy in nats."""
    counts = Counter(text)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def ends_terminal(line: str) -> bool:
    """Whether a stripped line ends a sentence (an ellipsis does not, as in C4)."""
    return line.endswith(tuple(TERMINAL)) and not line.endswith(ELLIPSES)


def _outside(value: float, low: float, high: float) -> bool:
    return not low <= value <= high


# ---------------------------------------------------------------------------------------------
# Thresholds


@dataclass
class GenericRules:
    """Checks run on every document before language routing, so `other` text gets them too."""

    min_letters: int = bounded(20, ge=0)
    max_mixed_alnum_words: float = bounded(0.2, ge=0, le=1)


@dataclass
class EnglishRules:
    """English thresholds: Gopher quality + repetition, C4, RefinedWeb/FineWeb."""

    # Gopher quality
    min_words: int = bounded(50, ge=0)
    max_words: int = bounded(100_000, ge=0)
    min_mean_word_length: float = bounded(3.0, ge=0)
    max_mean_word_length: float = bounded(10.0, ge=0)
    max_hash_ratio: float = bounded(0.1, ge=0)
    max_ellipsis_ratio: float = bounded(0.1, ge=0)
    max_bullet_lines: float = bounded(0.9, ge=0, le=1)
    max_ellipsis_lines: float = bounded(0.3, ge=0, le=1)
    min_alpha_words: float = bounded(0.8, ge=0, le=1)
    min_stop_words: int = bounded(2, ge=0)
    # Gopher repetition
    max_dup_lines: float = bounded(0.3, ge=0, le=1)
    max_dup_paragraphs: float = bounded(0.3, ge=0, le=1)
    max_dup_line_chars: float = bounded(0.2, ge=0, le=1)
    max_dup_paragraph_chars: float = bounded(0.2, ge=0, le=1)
    max_top_ngram_chars: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    max_dup_ngram_chars: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    )
    # C4
    max_curly_braces: int = bounded(0, ge=0)
    min_sentences: int = bounded(5, ge=0)
    min_line_words: int = bounded(3, ge=0)
    max_line_word_length: int = bounded(1000, ge=1)
    policy_phrases: list[str] = field(
        default_factory=lambda: [
            "terms of use",
            "privacy policy",
            "cookie policy",
            "uses cookies",
            "use of cookies",
            "use cookies",
        ]
    )
    # RefinedWeb line corrections: short boiler-plate lines
    max_boilerplate_line_words: int = bounded(10, ge=0)
    boilerplate_phrases: list[str] = field(
        default_factory=lambda: [
            "sign in",
            "log in",
            "read more",
            "items in cart",
            "add to cart",
            "share this",
            "all rights reserved",
            "skip to content",
            "click here",
            "subscribe",
        ]
    )
    max_removed_word_share: float = bounded(0.05, ge=0, le=1)
    # FineWeb
    min_terminal_punct_lines: float = bounded(0.12, ge=0, le=1)
    max_short_lines: float = bounded(0.67, ge=0, le=1)
    max_short_line_chars: int = bounded(30, ge=0)
    max_fineweb_dup_line_chars: float = bounded(0.01, ge=0, le=1)
    max_newlines_per_word: float = bounded(0.3, ge=0)


@dataclass
class ChineseRules:
    """Chinese thresholds: chuan's starting set from ChineseWebText, MAP-Neo and ROOTS."""

    min_chars: int = bounded(200, ge=0)
    min_mean_line_chars: float = bounded(10.0, ge=0)
    min_han_share: float = bounded(0.3, ge=0, le=1)
    max_bracket_share: float = bounded(0.1, ge=0, le=1)
    max_digit_share: float = bounded(0.3, ge=0, le=1)
    max_readmore_lines: float = bounded(0.3, ge=0, le=1)
    max_bullet_lines: float = bounded(0.9, ge=0, le=1)
    min_punctuation_chars: int = bounded(1, ge=0)
    min_distinct_char_ratio: float = bounded(0.1, ge=0, le=1)
    min_char_entropy: float = bounded(3.0, ge=0)
    max_top_ngram_chars: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    repetition_ngram: int = bounded(13, ge=1)
    max_ngram_repetition: float = bounded(0.5, ge=0, le=1)
    max_char3_repetition: float = bounded(0.2, ge=0, le=1)
    max_special_share: float = bounded(0.3, ge=0, le=1)
    # lines
    min_line_han: int = bounded(10, ge=0)
    boilerplate_patterns: list[str] = field(
        default_factory=lambda: [
            "版权所有",
            "上一篇",
            "下一篇",
            "^点击",
            "点击(查看|进入|这里|下载|阅读|关注)",
            "扫一扫",
            "扫描二维码",
            "关注(我们|公众号|微信)",
            "分享到",
            "责任编辑",
            "免责声明",
        ]
    )
    readmore_endings: list[str] = field(
        default_factory=lambda: ["展开", "更多", "。。。", "阅读全文", "查看全文"]
    )
    max_removed_char_share: float = bounded(0.05, ge=0, le=1)


# ---------------------------------------------------------------------------------------------
# Generic document rules


def min_letters(doc: Doc, cfg: GenericRules) -> str | None:
    """No text to speak of: numbers, symbols, empty records."""
    n = len(LETTER.findall(doc.text))
    return f"{n} letters < {cfg.min_letters}" if n < cfg.min_letters else None


_MIXED = re.compile(r"(?=\S*[^\W\d_])(?=\S*\d)\S+")


def mixed_alnum_words(doc: Doc, cfg: GenericRules) -> str | None:
    """Many words mixing letters and digits (`8iffd5`, `x7k2`): random strings, hashes, tokens.
    Prose of any language has few (`mp3`, `x86_64`), so this also covers text routed `other`."""
    ratio = share(len(_MIXED.findall(doc.text)), len(doc.words))
    if ratio > cfg.max_mixed_alnum_words:
        return f"letter+digit words {ratio:.2f} > {cfg.max_mixed_alnum_words}"
    return None


# ---------------------------------------------------------------------------------------------
# English document rules (Gopher quality)


def gopher_word_count(doc: Doc, cfg: EnglishRules) -> str | None:
    """Too short to be a document, or too long to be one (Gopher: 50 to 100,000 words)."""
    n = sum(any(c.isalnum() for c in w) for w in doc.words)
    if _outside(n, cfg.min_words, cfg.max_words):
        return f"{n} words outside [{cfg.min_words}, {cfg.max_words}]"
    return None


def gopher_mean_word_length(doc: Doc, cfg: EnglishRules) -> str | None:
    """Very short mean words mean lists/tables, very long ones mean URLs, hashes or no spaces."""
    words = [w for w in doc.words if any(c.isalnum() for c in w)]
    mean = share(sum(map(len, words)), len(words))
    if _outside(mean, cfg.min_mean_word_length, cfg.max_mean_word_length):
        return f"mean word length {mean:.2f} outside [{cfg.min_mean_word_length}, " + (
            f"{cfg.max_mean_word_length}]"
        )
    return None


def gopher_hash_ratio(doc: Doc, cfg: EnglishRules) -> str | None:
    """Hashtag and markdown-heading soup."""
    ratio = share(doc.text.count("#"), len(doc.words))
    return (
        f"'#' per word {ratio:.3f} > {cfg.max_hash_ratio}" if ratio > cfg.max_hash_ratio else None
    )


def gopher_ellipsis_ratio(doc: Doc, cfg: EnglishRules) -> str | None:
    """Truncated snippets (search results, teasers)."""
    ratio = share(sum(doc.text.count(e) for e in ELLIPSES), len(doc.words))
    if ratio > cfg.max_ellipsis_ratio:
        return f"ellipses per word {ratio:.3f} > {cfg.max_ellipsis_ratio}"
    return None


def gopher_bullet_lines(doc: Doc, cfg: EnglishRules | ChineseRules) -> str | None:
    """Pages that are nothing but bullet lists (menus, link lists)."""
    ratio = share(sum(line.startswith(BULLETS) for line in doc.lines), len(doc.lines))
    if ratio > cfg.max_bullet_lines:
        return f"bullet lines {ratio:.2f} > {cfg.max_bullet_lines}"
    return None


def gopher_ellipsis_lines(doc: Doc, cfg: EnglishRules) -> str | None:
    """Lists of truncated teasers."""
    ratio = share(sum(line.endswith(ELLIPSES) for line in doc.lines), len(doc.lines))
    if ratio > cfg.max_ellipsis_lines:
        return f"ellipsis-ended lines {ratio:.2f} > {cfg.max_ellipsis_lines}"
    return None


def gopher_alpha_words(doc: Doc, cfg: EnglishRules) -> str | None:
    """Numbers, symbols and code tokens instead of words."""
    ratio = share(sum(any(c.isalpha() for c in w) for w in doc.words), len(doc.words))
    if ratio < cfg.min_alpha_words:
        return f"words with a letter {ratio:.2f} < {cfg.min_alpha_words}"
    return None


def gopher_stop_words(doc: Doc, cfg: EnglishRules) -> str | None:
    """Real English sentences use "the", "of", "and"...; keyword lists and gibberish do not."""
    n = sum(w.strip(_STRIP).lower() in ENGLISH_STOP_WORDS for w in doc.words)
    if n < cfg.min_stop_words:
        return f"{n} stop words < {cfg.min_stop_words}"
    return None


# English document rules (Gopher repetition)


def gopher_dup_lines(doc: Doc, cfg: EnglishRules) -> str | None:
    """Templates and spam repeat whole lines."""
    lines, chars = duplicate_shares(doc.lines)
    if lines > cfg.max_dup_lines:
        return f"duplicate lines {lines:.2f} > {cfg.max_dup_lines}"
    if chars > cfg.max_dup_line_chars:
        return f"chars in duplicate lines {chars:.2f} > {cfg.max_dup_line_chars}"
    return None


def gopher_dup_paragraphs(doc: Doc, cfg: EnglishRules) -> str | None:
    """The same, for blank-line separated paragraphs."""
    paragraphs, chars = duplicate_shares(doc.paragraphs)
    if paragraphs > cfg.max_dup_paragraphs:
        return f"duplicate paragraphs {paragraphs:.2f} > {cfg.max_dup_paragraphs}"
    if chars > cfg.max_dup_paragraph_chars:
        return f"chars in duplicate paragraphs {chars:.2f} > {cfg.max_dup_paragraph_chars}"
    return None


def gopher_top_ngrams(doc: Doc, cfg: EnglishRules) -> str | None:
    """One word 2/3/4-gram covering much of the text (keyword stuffing); shares are of all the
    text's characters, spaces and punctuation included, as in Gopher."""
    for n, limit in enumerate(cfg.max_top_ngram_chars, start=2):
        ratio = top_ngram_share(doc.words, n, len(doc.text))
        if ratio > limit:
            return f"top word {n}-gram holds {ratio:.2f} of chars > {limit}"
    return None


def gopher_dup_ngrams(doc: Doc, cfg: EnglishRules) -> str | None:
    """Many repeated word 5..10-grams (boiler-plate blocks, spun text)."""
    for n, limit in enumerate(cfg.max_dup_ngram_chars, start=5):
        ratio = duplicated_ngram_share(doc.words, n, len(doc.text))
        if ratio > limit:
            return f"duplicated word {n}-grams hold {ratio:.2f} of chars > {limit}"
    return None


# English document rules (C4, FineWeb)


def c4_lorem_ipsum(doc: Doc, cfg: EnglishRules) -> str | None:
    """Placeholder text."""
    return "contains 'lorem ipsum'" if "lorem ipsum" in doc.text.lower() else None


def c4_curly_braces(doc: Doc, cfg: EnglishRules) -> str | None:
    """`{` marks code or templates (C4 drops any; raise `max_curly_braces` to keep code)."""
    n = doc.text.count("{")
    return f"{n} '{{' > {cfg.max_curly_braces}" if n > cfg.max_curly_braces else None


def c4_min_sentences(doc: Doc, cfg: EnglishRules) -> str | None:
    """After line cleaning, too few sentences are left to be running text."""
    n = len(SENTENCE_END.findall(doc.text))
    return f"{n} sentences < {cfg.min_sentences}" if n < cfg.min_sentences else None


def fineweb_terminal_punct_lines(doc: Doc, cfg: EnglishRules) -> str | None:
    """Almost no line ends a sentence: menus, tables, lists."""
    ratio = share(sum(map(ends_terminal, doc.lines)), len(doc.lines))
    if ratio < cfg.min_terminal_punct_lines:
        return f"sentence-ending lines {ratio:.2f} < {cfg.min_terminal_punct_lines}"
    return None


def fineweb_short_lines(doc: Doc, cfg: EnglishRules) -> str | None:
    """Mostly short lines: navigation, link lists."""
    ratio = share(sum(len(x) <= cfg.max_short_line_chars for x in doc.lines), len(doc.lines))
    if ratio > cfg.max_short_lines:
        return f"lines <= {cfg.max_short_line_chars} chars {ratio:.2f} > {cfg.max_short_lines}"
    return None


def fineweb_dup_line_chars(doc: Doc, cfg: EnglishRules) -> str | None:
    """Any noticeable amount of repeated lines left after line cleaning."""
    _, chars = duplicate_shares(doc.lines)
    if chars > cfg.max_fineweb_dup_line_chars:
        return f"chars in duplicate lines {chars:.3f} > {cfg.max_fineweb_dup_line_chars}"
    return None


def fineweb_newlines_per_word(doc: Doc, cfg: EnglishRules) -> str | None:
    """A line break every few words: lists and tables, not prose."""
    ratio = share(doc.text.count("\n"), len(doc.words))
    if ratio > cfg.max_newlines_per_word:
        return f"newlines per word {ratio:.2f} > {cfg.max_newlines_per_word}"
    return None


def removed_words(doc: Doc, cfg: EnglishRules) -> str | None:
    """Line cleaning took too much: what is left is a fragment (RefinedWeb)."""
    if doc.removed_share > cfg.max_removed_word_share:
        return f"removed lines held {doc.removed_share:.2f} of words > {cfg.max_removed_word_share}"
    return None


# ---------------------------------------------------------------------------------------------
# Chinese document rules


def zh_length(doc: Doc, cfg: ChineseRules) -> str | None:
    """Too short to be a document (ChineseWebText: 200 characters)."""
    n = len(doc.chars)
    return f"{n} chars < {cfg.min_chars}" if n < cfg.min_chars else None


def zh_mean_line_length(doc: Doc, cfg: ChineseRules) -> str | None:
    """Short lines on average: menus, tag lists."""
    mean = share(sum(map(len, doc.lines)), len(doc.lines))
    if mean < cfg.min_mean_line_chars:
        return f"mean line length {mean:.1f} < {cfg.min_mean_line_chars}"
    return None


def zh_han_share(doc: Doc, cfg: ChineseRules) -> str | None:
    """Too little Chinese among the characters (code, numbers, markup)."""
    ratio = share(doc.han, len(doc.chars))
    return f"Han share {ratio:.2f} < {cfg.min_han_share}" if ratio < cfg.min_han_share else None


def zh_bracket_share(doc: Doc, cfg: ChineseRules) -> str | None:
    """Text inside 【】: headline and advert markers (MAP-Neo)."""
    ratio = share(sum(map(len, BRACKETED.findall(doc.text))), len(doc.text))
    if ratio > cfg.max_bracket_share:
        return f"【】 text share {ratio:.2f} > {cfg.max_bracket_share}"
    return None


def zh_digit_share(doc: Doc, cfg: ChineseRules) -> str | None:
    """Mostly digits: tables, price lists, lottery pages."""
    body = len(doc.chars) - len(ZH_PUNCTUATION.findall(doc.chars))
    ratio = share(len(DIGIT.findall(doc.chars)), body)
    return (
        f"digit share {ratio:.2f} > {cfg.max_digit_share}" if ratio > cfg.max_digit_share else None
    )


def zh_readmore_lines(doc: Doc, cfg: ChineseRules) -> str | None:
    """Lines ending in 展开 / 更多 / 。。。: teaser lists."""
    endings = tuple(cfg.readmore_endings)
    ratio = share(sum(line.endswith(endings) for line in doc.lines), len(doc.lines))
    if ratio > cfg.max_readmore_lines:
        return f"read-more lines {ratio:.2f} > {cfg.max_readmore_lines}"
    return None


def zh_punctuation(doc: Doc, cfg: ChineseRules) -> str | None:
    """Running text has punctuation; keyword lists and character soup do not."""
    n = len(ZH_PUNCTUATION.findall(doc.text))
    return (
        f"{n} punctuation marks < {cfg.min_punctuation_chars}"
        if n < (cfg.min_punctuation_chars)
        else None
    )


def zh_distinct_chars(doc: Doc, cfg: ChineseRules) -> str | None:
    """Few distinct characters: one phrase repeated."""
    ratio = share(len(set(doc.chars)), len(doc.chars))
    if ratio < cfg.min_distinct_char_ratio:
        return f"distinct chars {ratio:.3f} < {cfg.min_distinct_char_ratio}"
    return None


def zh_char_entropy(doc: Doc, cfg: ChineseRules) -> str | None:
    """Low character entropy: repetition of a few characters."""
    entropy = char_entropy(doc.chars)
    if entropy < cfg.min_char_entropy:
        return f"char entropy {entropy:.2f} nats < {cfg.min_char_entropy}"
    return None


def zh_top_ngrams(doc: Doc, cfg: ChineseRules) -> str | None:
    """One character 2/3/4-gram covering much of the text (MAP-Neo)."""
    for n, limit in enumerate(cfg.max_top_ngram_chars, start=2):
        counts = doc.char_grams(n)
        gram, count = counts.most_common(1)[0] if counts else ("", 0)
        ratio = share(count * len(gram), len(doc.chars)) if count > 1 else 0.0
        if ratio > limit:
            return f"top char {n}-gram {gram!r} holds {ratio:.2f} > {limit}"
    return None


def zh_ngram_repetition(doc: Doc, cfg: ChineseRules) -> str | None:
    """Many repeated long character n-grams: copied blocks (ChineseWebText, 13-grams)."""
    ratio = repeated_ngram_position_share(doc.text, cfg.repetition_ngram)
    if ratio > cfg.max_ngram_repetition:
        return f"repeated char {cfg.repetition_ngram}-grams {ratio:.2f} > " + (
            f"{cfg.max_ngram_repetition}"
        )
    return None


def zh_char3_repetition(doc: Doc, cfg: ChineseRules) -> str | None:
    """ROOTS character 3-gram repetition ratio."""
    ratio = top_repetition_ratio(doc.char_grams(3))
    if ratio > cfg.max_char3_repetition:
        return f"char 3-gram repetition {ratio:.2f} > {cfg.max_char3_repetition}"
    return None


def zh_special_share(doc: Doc, cfg: ChineseRules) -> str | None:
    """Mostly symbols: markup, emoticons, ASCII art."""
    ratio = share(len(SPECIAL.findall(doc.chars)), len(doc.chars))
    if ratio > cfg.max_special_share:
        return f"special chars {ratio:.2f} > {cfg.max_special_share}"
    return None


def removed_chars(doc: Doc, cfg: ChineseRules) -> str | None:
    """Line cleaning took too much (RefinedWeb's rule, on characters for Chinese)."""
    if doc.removed_share > cfg.max_removed_char_share:
        return f"removed lines held {doc.removed_share:.2f} of chars > {cfg.max_removed_char_share}"
    return None


# ---------------------------------------------------------------------------------------------
# Line rules (a stripped, non-empty line; True removes it)


def line_javascript(line: str, cfg: EnglishRules) -> bool:
    """ "Please enable JavaScript" notices (C4)."""
    return "javascript" in line.lower()


def line_policy(line: str, cfg: EnglishRules) -> bool:
    """Cookie banners and terms/privacy links (C4)."""
    lower = line.lower()
    return any(p in lower for p in cfg.policy_phrases)


def line_too_few_words(line: str, cfg: EnglishRules) -> bool:
    """Headings, buttons, stray words (C4: fewer than 3 words)."""
    return len(line.split()) < cfg.min_line_words


def line_long_word(line: str, cfg: EnglishRules) -> bool:
    """A "word" longer than any word: base64, minified code (C4: 1,000 chars)."""
    return any(len(w) > cfg.max_line_word_length for w in line.split())


def line_no_terminal_punct(line: str, cfg: EnglishRules) -> bool:
    """C4 keeps only lines that end a sentence. Off by default: FineWeb turned it off too, as it
    removes headings, list items and code from good pages."""
    return not ends_terminal(line)


def line_boilerplate_en(line: str, cfg: EnglishRules) -> bool:
    """Short UI lines such as "sign in", "read more", "items in cart" (RefinedWeb)."""
    if len(line.split()) > cfg.max_boilerplate_line_words:
        return False
    lower = line.lower()
    return any(p in lower for p in cfg.boilerplate_phrases)


def line_numeric(line: str, cfg: EnglishRules | ChineseRules) -> bool:
    """Purely numeric lines: counters, page numbers, table debris (RefinedWeb)."""
    return not any(c.isalpha() for c in line) and any(c.isdigit() for c in line)


def line_boilerplate_zh(line: str, cfg: ChineseRules) -> bool:
    """版权所有, 上一篇/下一篇, 点击…, 扫一扫 and other page furniture."""
    return _zh_boilerplate(tuple(cfg.boilerplate_patterns)).search(line) is not None


def line_short_unterminated_zh(line: str, cfg: ChineseRules) -> bool:
    """A line with few Chinese characters that does not end a sentence: menu items, titles,
    tags. Lines without any Han character (code, English quotes) are left to the document
    rules, so technical Chinese keeps its commands."""
    han = len(HAN.findall(line))
    return 0 < han < cfg.min_line_han and not ends_terminal(line)


def repeated_lines(lines: list[str]) -> list[bool]:
    """True for each non-empty line that repeats an earlier line of the same document."""
    seen: set[str] = set()
    flags = []
    for line in lines:
        key = line.strip()
        flags.append(bool(key) and key in seen)
        seen.add(key)
    return flags


_CITATION = re.compile(r"\[(?:\d+|edit|citation needed)\]", re.IGNORECASE)


def strip_citations(line: str) -> str:
    """Remove Wikipedia's `[1]`, `[edit]` and `[citation needed]` markers (C4)."""
    return _CITATION.sub("", line)


_ZH_PATTERN_CACHE: dict[tuple[str, ...], re.Pattern] = {}


def _zh_boilerplate(patterns: tuple[str, ...]) -> re.Pattern:
    if patterns not in _ZH_PATTERN_CACHE:
        _ZH_PATTERN_CACHE[patterns] = re.compile("|".join(f"(?:{p})" for p in patterns))
    return _ZH_PATTERN_CACHE[patterns]


# ---------------------------------------------------------------------------------------------
# Rule tables, in the order a stage runs them

DocRule = Callable[[Doc, object], "str | None"]
LineRule = Callable[[str, object], bool]

GENERIC_RULES: dict[str, DocRule] = {f.__name__: f for f in (min_letters, mixed_alnum_words)}
EN_DOC_RULES: dict[str, DocRule] = {
    f.__name__: f
    for f in (
        gopher_word_count,
        gopher_mean_word_length,
        gopher_hash_ratio,
        gopher_ellipsis_ratio,
        gopher_bullet_lines,
        gopher_ellipsis_lines,
        gopher_alpha_words,
        gopher_stop_words,
        gopher_dup_lines,
        gopher_dup_paragraphs,
        gopher_top_ngrams,
        gopher_dup_ngrams,
        c4_lorem_ipsum,
        c4_curly_braces,
    )
}
EN_LINE_RULES: dict[str, LineRule] = {
    f.__name__: f
    for f in (
        line_javascript,
        line_policy,
        line_boilerplate_en,
        line_numeric,
        line_long_word,
        line_too_few_words,
        line_no_terminal_punct,
    )
}
EN_FINAL_RULES: dict[str, DocRule] = {
    f.__name__: f
    for f in (
        removed_words,
        c4_min_sentences,
        fineweb_terminal_punct_lines,
        fineweb_short_lines,
        fineweb_dup_line_chars,
        fineweb_newlines_per_word,
    )
}
ZH_DOC_RULES: dict[str, DocRule] = {
    "zh_bullet_lines": gopher_bullet_lines,
    **{
        f.__name__: f
        for f in (
            zh_length,
            zh_mean_line_length,
            zh_han_share,
            zh_bracket_share,
            zh_digit_share,
            zh_readmore_lines,
            zh_punctuation,
            zh_distinct_chars,
            zh_char_entropy,
            zh_top_ngrams,
            zh_ngram_repetition,
            zh_char3_repetition,
            zh_special_share,
        )
    },
}
ZH_LINE_RULES: dict[str, LineRule] = {
    f.__name__: f for f in (line_boilerplate_zh, line_numeric, line_short_unterminated_zh)
}
ZH_FINAL_RULES: dict[str, DocRule] = {"removed_chars": removed_chars, "zh_length_after": zh_length}
# Not in a table: applied by the line pass of both languages.
REPEATED_LINE_RULE = "line_repeated"
