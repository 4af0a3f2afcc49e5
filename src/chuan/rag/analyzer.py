"""The bilingual analyzer: text -> index terms, the same function for chunks and queries.

Chinese has no spaces between words, and a word segmenter (jieba and the like) brings a
dictionary that knows modern words but splits classical verse badly. Overlapping character
bigrams need no dictionary and find any phrase of two or more characters inside an unsegmented
sentence (a 4-character phrase is 3 bigrams, all present in the sentence that holds it); a run
of a single Han character is kept as a unigram so that it is not lost. English words are
lowercased runs of letters and digits, without stemming: none of chuan's dependencies ships a
maintained stemmer, and the bigram side does not need one.

Before that, text is NFKC-normalised (full-width Latin letters and digits, compatibility
ideographs) and, when OpenCC (`opencc-python-reimplemented`, the `zh` extra) is installed,
Traditional characters are folded to Simplified with its `t2s` table, so a Simplified query
finds a Traditional text and the reverse. Whether folding was on is part of the analyzer's
settings, recorded in the knowledge base's manifest: a knowledge base built with folding must
be searched with it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import asdict, dataclass

from chuan.errors import DependencyError

NAME = "chuan-bilingual"
VERSION = 1

# Han ideographs: the unified block, extension A, the compatibility block, extensions B and on.
_HAN = "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0003134f"
# A run of Han characters, or a run of letters and digits of any other script.
_TERM_RUN = re.compile(f"[{_HAN}]+|[^\\W_{_HAN}]+")
HAN_CHAR = re.compile(f"[{_HAN}]")


def opencc_available() -> bool:
    """Whether the `zh` extra (OpenCC's pure-Python port) is installed."""
    try:
        import opencc  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


@dataclass(frozen=True)
class Analyzer:
    """Terms of a text. `fold_traditional` is decided once, when a knowledge base is built, and
    read back from its manifest when it is searched."""

    fold_traditional: bool

    @classmethod
    def default(cls) -> Analyzer:
        """Folding on when OpenCC is installed (a new knowledge base)."""
        return cls(fold_traditional=opencc_available())

    @classmethod
    def from_settings(cls, settings: dict) -> Analyzer:
        """The analyzer a manifest describes; its folding needs OpenCC to be installed."""
        analyzer = cls(fold_traditional=bool(settings["fold_traditional"]))
        if analyzer.fold_traditional and not opencc_available():
            raise DependencyError(
                "this knowledge base folds Traditional Chinese to Simplified, which needs "
                "OpenCC: pip install 'chuan[zh]' (opencc-python-reimplemented)"
            )
        return analyzer

    def settings(self) -> dict:
        """What the manifest records, enough to rebuild the same analyzer."""
        return {
            "name": NAME,
            "version": VERSION,
            "normalization": "NFKC",
            "lowercase": True,
            "zh": "character bigrams (unigram for a 1-character run)",
            "en": "letter/digit runs, no stemming",
            **asdict(self),
        }

    def normalize(self, text: str) -> str:
        """NFKC, then Traditional -> Simplified when folding is on."""
        text = unicodedata.normalize("NFKC", text)
        return _t2s().convert(text) if self.fold_traditional else text

    def terms(self, text: str) -> list[str]:
        """The index terms of `text`, in order, repeats kept (term frequencies count them)."""
        out: list[str] = []
        for match in _TERM_RUN.finditer(self.normalize(text)):
            run = match.group()
            if HAN_CHAR.match(run):
                if len(run) == 1:
                    out.append(run)
                else:
                    out.extend(run[i : i + 2] for i in range(len(run) - 1))
            else:
                out.append(run.lower())
        return out
