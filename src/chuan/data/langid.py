"""Offline zh / en / other identification by script ratio, for routing documents to rule sets.

Cleaning only needs to know which rule set a document belongs to, and for Chinese versus English
the writing system says it: Han characters versus Latin letters. The ratio is computed over
letters (`str.isalpha`), so digits, punctuation, markup symbols and whitespace do not vote:

- `zh` when Han characters are at least `min_zh_han_share` of the letters (default 0.3) and kana
  are at most `max_zh_kana_share` (Japanese also writes Han). A Han character carries about as
  much text as a whole English word (4-6 letters), so 0.3 of the letters still means most of the
  *words* are Chinese; the Debian Reference's Chinese chapters, full of commands and English
  package names, stay above it (their Han share is about 0.5).
- `en` when Latin letters are at least `min_en_latin_share` (0.8) of the letters and, among the
  words, the English function words make up at least `min_en_stopword_share` (0.05): French or
  German in Latin letters fails the second test (they score 0). Measured on the test texts:
  KJV chapters 0.29-0.45, Wikipedia 0.27-0.36 (5th percentile to median), C4 pages 0.22-0.36,
  the Debian Reference's English sections 0.09-0.27 (minimum to median).
- `other` otherwise, including text without letters.

No model is shipped or downloaded. Packages that ship their own models (`langid`, `pycld2`,
`lingua-language-detector`) tell French from English better but cost one to two orders of
magnitude more time per document and add a dependency for a split the script ratio already makes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chuan.config import bounded

# CJK Unified Ideographs, Extension A, and the compatibility block (all Han).
HAN = re.compile("[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]")
KANA = re.compile("[\u3040-\u30ff]")
LATIN = re.compile("[A-Za-z\u00c0-\u024f]")
# Letters of any script; `\w` minus digits and underscore.
LETTER = re.compile(r"[^\W\d_]")
ENGLISH_FUNCTION_WORDS = frozenset(
    [
        "the",
        "be",
        "to",
        "of",
        "and",
        "a",
        "in",
        "that",
        "have",
        "i",
        "it",
        "for",
        "not",
        "on",
        "with",
        "he",
        "as",
        "you",
        "do",
        "at",
        "this",
        "but",
        "his",
        "by",
        "from",
        "they",
        "we",
        "say",
        "her",
        "she",
        "or",
        "an",
        "will",
        "my",
        "one",
        "all",
        "would",
        "there",
        "their",
        "is",
        "are",
        "was",
        "were",
        "been",
        "has",
        "had",
        "which",
        "what",
        "when",
        "who",
        "can",
        "if",
        "no",
        "so",
    ]
)
_WORD = re.compile(r"[^\W\d_]+")  # words of letters of any script, so "créa" is one word


@dataclass
class LangIdConfig:
    """Script-ratio thresholds (see the module docstring for why these values)."""

    min_zh_han_share: float = bounded(0.3, ge=0, le=1)
    max_zh_kana_share: float = bounded(0.05, ge=0, le=1)
    min_en_latin_share: float = bounded(0.8, ge=0, le=1)
    min_en_stopword_share: float = bounded(0.05, ge=0, le=1)


@dataclass(frozen=True)
class ScriptCounts:
    """Letters of a text by script; `han_share` is the routing score kept in `meta`."""

    letters: int
    han: int
    kana: int
    latin: int

    @property
    def han_share(self) -> float:
        return self.han / self.letters if self.letters else 0.0

    @property
    def latin_share(self) -> float:
        return self.latin / self.letters if self.letters else 0.0

    @property
    def kana_share(self) -> float:
        return self.kana / self.letters if self.letters else 0.0


def script_counts(text: str) -> ScriptCounts:
    """Count letters, Han, kana and Latin letters (regex scans, C speed)."""
    return ScriptCounts(
        letters=len(LETTER.findall(text)),
        han=len(HAN.findall(text)),
        kana=len(KANA.findall(text)),
        latin=len(LATIN.findall(text)),
    )


def english_stopword_share(text: str) -> float:
    """Share of words (runs of letters) that are English function words (0 without words)."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    return sum(w.lower() in ENGLISH_FUNCTION_WORDS for w in words) / len(words)


def identify(text: str, config: LangIdConfig | None = None) -> tuple[str, ScriptCounts]:
    """`("zh" | "en" | "other", counts)` for `text`."""
    config = config or LangIdConfig()
    counts = script_counts(text)
    if counts.han_share >= config.min_zh_han_share and counts.kana_share <= (
        config.max_zh_kana_share
    ):
        return "zh", counts
    if (
        counts.latin_share >= config.min_en_latin_share
        and english_stopword_share(text) >= config.min_en_stopword_share
    ):
        return "en", counts
    return "other", counts
