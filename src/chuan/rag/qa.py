"""`chuan rag make-qa`: a retrieval QA set from real text, each question with its gold evidence.

A question is only useful for measuring retrieval if it is known which text answers it. The
generator therefore writes questions whose evidence it can point at, as (file sha256, line,
character span) in the documents it reads, independent of any chunking:

- `title`: "《T》是谁写的？" for a poem whose first line is `T（author）` (the layout of
  唐诗三百首 / 宋词三百首 in the bundled sample); the evidence is that first line, in every
  poem so titled.
- `masked_verse`: a verse of at least 8 Han characters with a quarter of them replaced by □,
  "「…」出自哪首诗？"; the evidence is the verse, wherever it occurs.
- `cross_lingual`: an English sentence of a document that has a Chinese counterpart (ids that
  differ only before the first "/", e.g. `kjv/Genesis 1` and `cuvs/Genesis 1`); the evidence is
  the whole Chinese document (the sample aligns chapters, not verses).
- `unanswerable`: the title question for poems of `absent` files whose titles no document of the
  inputs has: the KB holds no answer, and the right response is none.

Questions are written in Simplified characters when OpenCC is installed (the texts are
Traditional): what a user types, and a test of the analyzer's folding. Sampling is seeded.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from chuan.data.langid import identify
from chuan.documents import corpus_files, iter_records, to_document
from chuan.errors import InputError
from chuan.fileio import write_jsonl
from chuan.rag.analyzer import HAN_CHAR, Analyzer
from chuan.rag.build import file_sha256
from chuan.rag.chunking import sentence_spans

TYPES = ("title", "masked_verse", "cross_lingual", "unanswerable")
MASK = "□"
_TITLE_LINE = re.compile(r"^(?P<title>[^\n（）]{1,40})（(?P<author>[^\n（）]{1,20})）$")
_MIN_VERSE_HAN = 8
_MIN_SENTENCE_WORDS = 8


@dataclass(frozen=True)
class _Doc:
    text: str
    source: str
    sha256: str
    line: int
    doc_id: str | None

    def evidence(self, start: int, end: int) -> dict:
        return {"source": self.source, "sha256": self.sha256, "line": self.line,
                "start": start, "end": end}  # fmt: skip


def _read(paths) -> list[_Doc]:
    docs = []
    for path in corpus_files(paths):
        sha = file_sha256(path)
        for line, record in iter_records(path):
            doc = to_document(record, source=path, line=line)
            doc_id = record.get("id")
            docs.append(
                _Doc(doc.text, str(path), sha, line, None if doc_id is None else str(doc_id))
            )
    return docs


def _title(doc: _Doc) -> tuple[str, str] | None:
    first = doc.text.split("\n", 1)[0]
    match = _TITLE_LINE.match(first)
    return (match["title"], match["author"]) if match else None


def make_qa(
    inputs,
    out: str | Path,
    *,
    absent=None,
    per_type: int = 100,
    seed: int = 0,
) -> dict[str, int]:
    """Write the QA set of `inputs` to `out` (JSON Lines); returns the count per type."""
    fold = Analyzer.default().normalize  # NFKC + Traditional -> Simplified when available
    docs = _read(inputs)
    rng = random.Random(seed)
    questions: dict[str, list[dict]] = {t: [] for t in TYPES}

    by_title: dict[str, list[tuple[_Doc, str]]] = defaultdict(list)
    for doc in docs:
        if (found := _title(doc)) is not None:
            by_title[fold(found[0])].append((doc, found[1]))
    for title, poems in by_title.items():
        questions["title"].append({
            "question": f"《{title}》是谁写的？",
            "answer": "、".join(sorted({fold(author) for _, author in poems})),
            "gold": [doc.evidence(0, doc.text.index("\n") if "\n" in doc.text else len(doc.text))
                     for doc, _ in poems],
        })  # fmt: skip

    for _, poems in by_title.items():
        doc = poems[0][0]
        verses = [v for v in _lines(doc.text)[1:] if len(HAN_CHAR.findall(v[2])) >= _MIN_VERSE_HAN]
        if not verses:
            continue
        _, _, verse = rng.choice(verses)
        han = [i for i, ch in enumerate(verse) if HAN_CHAR.match(ch)]
        masked = set(rng.sample(han, max(2, len(han) // 4)))
        shown = "".join(MASK if i in masked else ch for i, ch in enumerate(verse))
        questions["masked_verse"].append({
            "question": f"「{fold(shown)}」出自哪首诗？",
            "answer": verse,
            "gold": [d.evidence(m.start(), m.end()) for d in docs
                     for m in re.finditer(re.escape(verse), d.text)],
        })  # fmt: skip

    questions["cross_lingual"] = _cross_lingual(docs, rng)

    if absent:
        for title, _ in sorted({(fold(t[0]), t[1]) for d in _read(absent) if (t := _title(d))}):
            if title not in by_title:
                questions["unanswerable"].append({"question": f"《{title}》是谁写的？", "gold": []})

    records = []
    for kind in TYPES:
        chosen = questions[kind]
        if len(chosen) > per_type:
            chosen = [chosen[i] for i in sorted(rng.sample(range(len(chosen)), per_type))]
        for n, question in enumerate(chosen):
            records.append({"id": f"{kind}-{n:04d}", "type": kind, **question})
    if not records:
        raise InputError(
            "found nothing to ask about: no poems with a `title（author）` first line and no "
            "documents with an English/Chinese counterpart in the inputs"
        )
    write_jsonl(out, records)
    counts = defaultdict(int)
    for record in records:
        counts[record["type"]] += 1
    return dict(counts)


def _lines(text: str) -> list[tuple[int, int, str]]:
    """(start, end, line) of every line of `text`, without its newline."""
    out, start = [], 0
    for line in text.split("\n"):
        out.append((start, start + len(line), line))
        start += len(line) + 1
    return out


def _cross_lingual(docs: list[_Doc], rng: random.Random) -> list[dict]:
    """English sentences whose Chinese counterpart document is the evidence."""
    by_key: dict[str, dict[str, _Doc]] = defaultdict(dict)
    for doc in docs:
        if doc.doc_id and "/" in doc.doc_id:
            lang, _ = identify(doc.text[:2000])
            by_key[doc.doc_id.split("/", 1)[1]].setdefault(lang, doc)
    out = []
    for pair in by_key.values():
        if "en" not in pair or "zh" not in pair:
            continue
        english, chinese = pair["en"], pair["zh"]
        sentences = [english.text[s:e].strip() for s, e in sentence_spans(english.text)]
        sentences = [s for s in sentences if len(s.split()) >= _MIN_SENTENCE_WORDS]
        if sentences:
            out.append({
                "question": rng.choice(sentences),
                "gold": [chinese.evidence(0, len(chinese.text))],
            })  # fmt: skip
    return out
