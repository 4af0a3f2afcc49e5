"""Citations in a generated answer, checked against the numbered sources it was given.

A model asked to cite `[n]` cites sources it was not given (a number past the list, a
remembered reference) and leaves claims uncited. The checker works sentence by sentence:

- every citation marker (`[2]`, `[1, 3]`, full-width `【2】` / `［2］`) keeps only the numbers of
  sources it was given, rewritten as `[n]`; a marker with none left is removed (with the spaces
  before it), so no `[n]` in the answer dangles;
- a sentence left without a citation gets one to the source that shares the largest part of
  its terms, when that part reaches `threshold` and is at least `MIN_SHARED_TERMS` terms. The
  terms are the knowledge base's analyzer's (English words, Chinese character bigrams), so the
  overlap means the same in both languages: the share of the sentence's distinct terms that
  occur in the source. Below the threshold the sentence stays uncited rather than wrongly
  cited; the floor keeps a short sentence ("The end.") from being cited for one common word.

A sentence ends at Chinese terminal punctuation, at English . ! ? before a space, a citation or
the end, or at a newline, with closing quotes and the citations right after it (`…。[2]` cites
that sentence). The checker takes text as it streams (`push`) and returns only sentences that
are complete, so a server or terminal can show checked text while the model is still writing;
`flush` checks the rest. A bracketed number is always read as a citation (`[2024]` with fewer
sources is removed): a model told to cite `[n]` gives such brackets no other meaning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from chuan.rag.chunking import CLOSERS

# The citation threshold's default: at least half of a sentence's distinct terms (English
# words, Chinese bigrams) must occur in a source for the checker to cite it.
DEFAULT_CITE_THRESHOLD = 0.5
# ... and share at least this many: one word or bigram in common is chance, not a source.
MIN_SHARED_TERMS = 2

_NUMBERS = r"\d{1,4}(?:\s*[,，、]\s*\d{1,4})*"
# A citation marker with the spaces before it (removed with it when nothing is left).
MARKER = re.compile(rf"[ \t]*[\[【［]\s*({_NUMBERS})\s*[\]】］]")
# What a sentence ends with: terminal punctuation (English only before a space, a citation or
# the end, so "3.14" goes on), or a newline; then closers, citations and whitespace.
_END = re.compile(
    rf"(?:[。！？；…]+[{CLOSERS}]*|[!?.]+[{CLOSERS}]*(?=\s|$|{MARKER.pattern})|\n)"
    rf"(?:{MARKER.pattern})*\s*"
)
# A citation cut off by the end of the text so far: the sentence before it is not over yet.
_PARTIAL_MARKER = re.compile(r"\s*[\[【［][\d\s,，、]*")
# Where a sentence's words end: a citation goes before its closing punctuation and spaces.
_TAIL = re.compile(rf"[\s。！？；…!?.,，、:：;{CLOSERS}]*\Z")


def overlap(sentence_terms: set[str], source_terms: set[str]) -> float:
    """The share of the sentence's distinct terms that the source contains (0 for no terms)."""
    if not sentence_terms:
        return 0.0
    return len(sentence_terms & source_terms) / len(sentence_terms)


class CitationChecker:
    """Checks one answer's citations against `sources` (number -> text); see the module doc.

    After `flush`, `cited` lists the source numbers the answer cites in order of first
    citation, `removed` the dangling numbers taken out, `added` the numbers the checker put in
    (one per uncited sentence it could attribute).
    """

    def __init__(
        self,
        sources: Mapping[int, str],
        terms: Callable[[str], list[str]],
        threshold: float = DEFAULT_CITE_THRESHOLD,
    ):
        if not 0 <= threshold <= 1:
            raise ValueError(f"the citation threshold must be in [0, 1], got {threshold}")
        self.terms = terms
        self.threshold = threshold
        self._source_terms = {number: set(terms(text)) for number, text in sources.items()}
        self.cited: list[int] = []
        self.removed: list[int] = []
        self.added: list[int] = []
        self._pending = ""

    def push(self, text: str) -> str:
        """Take more of the answer; return its sentences that are now complete, checked."""
        self._pending += text
        done = 0
        for match in _END.finditer(self._pending):
            end = match.end()
            if end < len(self._pending) and not _PARTIAL_MARKER.fullmatch(self._pending, end):
                done = end
        if not done:
            return ""
        ready, self._pending = self._pending[:done], self._pending[done:]
        return self._check(ready)

    def flush(self) -> str:
        """The rest of the answer, checked (the answer has ended)."""
        rest, self._pending = self._pending, ""
        return self._check(rest)

    def check(self, answer: str) -> str:
        """A whole answer, checked."""
        return self.push(answer) + self.flush()

    def _check(self, text: str) -> str:
        starts = [0, *(m.end() for m in _END.finditer(text))]
        ends = [*starts[1:], len(text)]
        spans = zip(starts, ends, strict=True)
        return "".join(self._sentence(text[s:e]) for s, e in spans if e > s)

    def _sentence(self, sentence: str) -> str:
        kept: list[int] = []

        def rewrite(marker: re.Match) -> str:
            numbers = list(dict.fromkeys(int(n) for n in re.findall(r"\d+", marker.group(1))))
            good = [n for n in numbers if n in self._source_terms]
            self.removed += [n for n in numbers if n not in self._source_terms]
            kept.extend(good)
            if not good:
                return ""
            space = marker.group()[: len(marker.group()) - len(marker.group().lstrip(" \t"))]
            return space + "".join(f"[{n}]" for n in good)

        sentence = MARKER.sub(rewrite, sentence)
        if not kept:
            best = self._best_source(sentence)
            if best is not None:
                words = _TAIL.search(sentence).start()
                sentence = f"{sentence[:words]}[{best}]{sentence[words:]}"
                self.added.append(best)
                kept.append(best)
        self.cited += [n for n in dict.fromkeys(kept) if n not in self.cited]
        return sentence

    def _best_source(self, sentence: str) -> int | None:
        """The source sharing the most of the sentence's terms (the first such source on a
        tie), if it shares enough; None for a sentence with no terms."""
        terms = set(self.terms(sentence))
        scored = [
            (overlap(terms, t), -n)
            for n, t in self._source_terms.items()
            if len(terms & t) >= MIN_SHARED_TERMS
        ]
        if not scored:
            return None
        share, negative = max(scored)
        return -negative if share >= self.threshold else None
