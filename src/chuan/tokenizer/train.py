"""Train a SentencePiece BPE tokenizer with the Baichuan 2 settings (technical report, §2.3).

Baichuan 2 published its trainer settings but not its command or its special-piece layout, so
chuan fixes one layout (a *decision*) that keeps the ids the released models rely on:

    ids 0, 1, 2    `<unk>`, `<s>`, `</s>` (no pad piece: Baichuan pads with `<unk>`)
    ids 3..88      86 whitespace-run pieces (user-defined), in this order:
                   newline runs "\\n" x 1..8, tab runs "\\t" x 1..8, newline + 1..8 tabs,
                   space runs x 2..32, newline + 1..31 spaces (no piece exceeds 32 characters)
    ids 89..255    `<reserved_0>` .. `<reserved_166>` (user-defined), so `<reserved_106>` is 195
                   and `<reserved_107>` is 196: Baichuan 2's chat user / assistant tokens
    ids 256..511   the byte-fallback pieces `<0x00>` .. `<0xFF>` (id = 256 + byte value)
    ids 512..      characters and merges learned from the sample

SentencePiece puts user-defined symbols at ids 3, 4, ... in the order given, before the byte
pieces, which is what makes this layout hold. User-defined pieces are always cut out as one
piece, so code indentation and blank lines cost one token. They are written with "▁" (U+2581)
rather than a space because SentencePiece matches them after turning spaces into "▁"; a single
space is deliberately not among them, so "▁word" pieces still form. Newlines never reach the
trainer (it learns from lines), so without these pieces "\\n" would fall back to a byte.

Training sees a bounded, seeded sample of lines: every document is split into lines, and a
weighted reservoir keeps `sample_sentences` of them, so the corpus is read once in constant
memory and the same inputs and seed always give the same tokenizer file.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sentencepiece as spm
from tqdm import tqdm

from chuan.documents import Document, as_paths, iter_documents
from chuan.errors import InputError, OutputExistsError
from chuan.tokenizer.chat_templates import ASSISTANT_TOKEN_ID, USER_TOKEN_ID
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import ModelProto

log = logging.getLogger(__name__)

SPACE = "\u2581"  # SentencePiece's escaped space
WHITESPACE_PIECES = (
    *("\n" * n for n in range(1, 9)),
    *("\t" * n for n in range(1, 9)),
    *("\n" + "\t" * n for n in range(1, 9)),
    *(SPACE * n for n in range(2, 33)),
    *("\n" + SPACE * n for n in range(1, 32)),
)
RESERVED_PIECES = tuple(f"<reserved_{k}>" for k in range(167))
USER_DEFINED_SYMBOLS = WHITESPACE_PIECES + RESERVED_PIECES
FIRST_USER_DEFINED_ID = 3
FIRST_BYTE_ID = FIRST_USER_DEFINED_ID + len(USER_DEFINED_SYMBOLS)  # 256
FIRST_LEARNED_ID = FIRST_BYTE_ID + 256  # 512
MIN_LEARNED_PIECES = 256
MIN_VOCAB_SIZE = FIRST_LEARNED_ID + MIN_LEARNED_PIECES

# Baichuan 2's tokenizer settings (technical report, arXiv:2309.10305, §2.3) as SentencePiece
# options, passed to SentencePieceTrainer.train as-is.
BAICHUAN2_SETTINGS = {
    "model_type": "bpe",
    "normalization_rule_name": "identity",
    "add_dummy_prefix": False,
    "remove_extra_whitespaces": False,
    "split_digits": True,
    "byte_fallback": True,
    "character_coverage": 0.9999,
    "max_sentencepiece_length": 32,
    "allow_whitespace_only_pieces": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
}
UNCATEGORIZED = "(none)"  # the category of documents without one, in weights and reports
REPORT_FILE = "train_report.json"


@dataclass
class SentenceSample:
    """The sampled training lines (in corpus order) and per-category counts."""

    sentences: list[str]
    documents: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    sampled: Counter[str] = field(default_factory=Counter)


@dataclass
class TrainReport:
    """What `train_tokenizer` did; written to `<out>/train_report.json`.

    `categories` maps each category to its `documents`, `sentences_seen` and
    `sentences_sampled`; `settings` holds every SentencePiece argument except temp paths and
    the user-defined symbols, which `layout` summarises.
    """

    out: str
    inputs: list[str]
    vocab_size: int
    seed: int
    sample_sentences: int
    category_weights: dict[str, float]
    categories: dict[str, dict[str, int]]
    settings: dict
    layout: dict[str, int]
    sampling_seconds: float
    training_seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"


class WeightedReservoir:
    """Keep a fixed-size weighted random sample of a stream (Efraimidis & Spirakis' A-ES).

    Each item gets the key u ** (1 / w) with u uniform in (0, 1] (stored as log(u) / w, which
    orders the same without underflow); the `size` largest keys win. With equal weights this is
    a uniform reservoir sample; an item of weight w is drawn w times as often as one of weight 1
    while the sample is small against the stream. Deterministic for a given seed and stream.
    """

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise InputError(f"reservoir size must be at least 1, got {size}")
        self.size = size
        self._rng = random.Random(seed)
        self._heap: list[tuple[float, int, object]] = []
        self._count = 0

    def offer(self, item: object, weight: float = 1.0) -> None:
        """Consider one item of the stream."""
        entry = (math.log(1.0 - self._rng.random()) / weight, self._count, item)
        self._count += 1
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list:
        """The sampled items in stream order."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: e[1])]


def training_lines(text: str, max_bytes: int) -> list[str]:
    """The training lines of one document: its non-blank lines, cut to at most `max_bytes`.

    SentencePiece skips lines longer than its `max_sentence_length` (in UTF-8 bytes); cutting
    them at a character boundary keeps their text in the sample instead.
    """
    sentences = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        data = line.encode("utf-8")
        while len(data) > max_bytes:
            cut = max_bytes
            while data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back up
                cut -= 1
            sentences.append(data[:cut].decode("utf-8"))
            data = data[cut:]
        sentences.append(data.decode("utf-8"))
    return sentences


def sample_training_sentences(
    documents: Iterable[Document],
    *,
    size: int,
    seed: int = 0,
    category_weights: Mapping[str, float] | None = None,
    max_sentence_bytes: int = 16384,
    progress: bool = False,
) -> SentenceSample:
    """Draw a seeded, weighted reservoir sample of `size` lines from `documents`.

    A line of a category with weight w (default 1; `UNCATEGORIZED` names documents without a
    category) is drawn w times as often as a line of weight 1, which is how Baichuan 2
    oversampled code and papers for its tokenizer.
    """
    if max_sentence_bytes < 4:
        raise InputError(
            f"max_sentence_bytes must hold one UTF-8 character (4), got {max_sentence_bytes}"
        )
    weights = dict(category_weights or {})
    for category, weight in weights.items():
        if not (math.isfinite(weight) and weight > 0):
            raise InputError(f"category weight for {category!r} must be positive, got {weight}")
    reservoir = WeightedReservoir(size, seed)
    sample = SentenceSample(sentences=[])
    for doc in tqdm(documents, desc="sampling lines", unit=" docs", disable=not progress):
        category = doc.category or UNCATEGORIZED
        weight = weights.get(category, 1.0)
        sample.documents[category] += 1
        for sentence in training_lines(doc.text, max_sentence_bytes):
            sample.seen[category] += 1
            reservoir.offer((category, sentence), weight)
    for category, sentence in reservoir.items():
        sample.sentences.append(sentence)
        sample.sampled[category] += 1
    unused = sorted(set(weights) - set(sample.documents))
    if unused:
        log.warning("category_weights names categories absent from the input: %s", unused)
    return sample


def train_tokenizer(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | Path,
    *,
    vocab_size: int,
    sample_sentences: int = 2_000_000,
    seed: int = 0,
    category_weights: Mapping[str, float] | None = None,
    text_field: str = "text",
    num_threads: int | None = None,
    max_sentence_length: int = 16384,
    character_coverage: float = BAICHUAN2_SETTINGS["character_coverage"],
    overwrite: bool = False,
    verbose: bool = False,
    progress: bool = True,
) -> TrainReport:
    """Train a Baichuan 2-style BPE tokenizer on `inputs` and write a tokenizer dir to `out`.

    inputs: corpus files or dirs (`chuan.documents.iter_documents`: JSONL / JSON / Parquet
        records with a string `text_field`, or `.txt` with one document per line; gz/zst ok).
    out: the tokenizer dir to write (`tokenizer.model`, HF files, `train_report.json`).
    vocab_size: total pieces, at least `MIN_VOCAB_SIZE` (256 meta + 256 bytes + 256 learned);
        the sample's characters (at `character_coverage`) must fit too, else the error names
        the smallest size that does. Baichuan 2 used 125,696.
    sample_sentences: how many lines to train on, drawn from the whole corpus.
    seed: the sampling seed; same inputs and seed give byte-identical `tokenizer.model`.
    category_weights: per-category oversampling factors, e.g. `{"code": 2.0}`.
    text_field: the record field holding the text.
    num_threads: SentencePiece threads (default: every core, at most 1024).
    max_sentence_length: longest training line in UTF-8 bytes; longer lines are cut.
    character_coverage: the share of the sample's characters that get a piece of their own;
        the rarest rest are spelled in byte pieces (0.98 to 1). Baichuan 2's 0.9999 is the
        default; a small vocabulary over Chinese text may need less (e.g. 0.995).
    overwrite: replace an existing non-empty `out`.
    verbose: show SentencePiece's own log; progress: show the sampling progress bar.
    """
    out = Path(out)
    inputs = [str(p) for p in as_paths(inputs)]
    if vocab_size < MIN_VOCAB_SIZE:
        raise InputError(
            f"vocab_size={vocab_size} is too small: the layout takes {FIRST_LEARNED_ID} ids "
            f"({FIRST_BYTE_ID} meta pieces + 256 bytes), plus at least {MIN_LEARNED_PIECES} "
            f"learned pieces, so use at least {MIN_VOCAB_SIZE}"
        )
    if not 0.98 <= character_coverage <= 1:  # SentencePiece's own bounds
        raise InputError(f"character coverage must be between 0.98 and 1, got {character_coverage}")
    threads = num_threads or min(os.cpu_count() or 1, 1024)
    if not 1 <= threads <= 1024:
        raise InputError(f"num_threads must be between 1 and 1024, got {threads}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} already exists and is not empty; choose another --out, or use --overwrite "
            "(overwrite=True in Python) to replace it"
        )

    start = time.perf_counter()
    sample = sample_training_sentences(
        iter_documents(inputs, text_field=text_field),
        size=sample_sentences,
        seed=seed,
        category_weights=category_weights,
        max_sentence_bytes=max_sentence_length,
        progress=progress,
    )
    if not sample.sentences:
        raise InputError(f"no non-blank lines to train on in {inputs}")
    sampled_at = time.perf_counter()
    settings = {
        **BAICHUAN2_SETTINGS,
        "vocab_size": vocab_size,
        "num_threads": threads,
        "max_sentence_length": max_sentence_length,
        "character_coverage": character_coverage,
    }
    proto = _train(sample.sentences, settings, verbose=verbose)
    trained_at = time.perf_counter()

    report = TrainReport(
        out=str(out),
        inputs=inputs,
        vocab_size=vocab_size,
        seed=seed,
        sample_sentences=sample_sentences,
        category_weights=dict(category_weights or {}),
        categories={
            c: {
                "documents": n,
                "sentences_seen": sample.seen[c],
                "sentences_sampled": sample.sampled[c],
            }
            for c, n in sorted(sample.documents.items())
        },
        settings=settings,
        layout={
            "whitespace_pieces": len(WHITESPACE_PIECES),
            "reserved_pieces": len(RESERVED_PIECES),
            "first_user_defined_id": FIRST_USER_DEFINED_ID,
            "first_byte_id": FIRST_BYTE_ID,
            "first_learned_id": FIRST_LEARNED_ID,
            "user_token_id": USER_TOKEN_ID,
            "assistant_token_id": ASSISTANT_TOKEN_ID,
        },
        sampling_seconds=round(sampled_at - start, 3),
        training_seconds=round(trained_at - sampled_at, 3),
    )
    write_tokenizer_dir(
        out, proto, extra_files={REPORT_FILE: report.to_json()}, overwrite=overwrite
    )
    return report


def _vocab_too_small(message: str, settings: dict, lines: int) -> str:
    """SentencePiece's "Vocabulary size is smaller than required_chars. V vs N. ..." in chuan's
    terms: N (the kept characters plus the meta pieces) is the smallest size that fits."""
    vocab, coverage = settings["vocab_size"], settings["character_coverage"]
    needed = re.search(r"(\d+) vs (\d+)", message)
    if needed is None:
        reason = message.rsplit("] ", 1)[-1]
        return f"vocab_size={vocab} does not fit the {lines} sampled lines: {reason}"
    return (
        f"vocab_size={vocab} is too small for the characters of the {lines} sampled lines at "
        f"character coverage {coverage}: at least {needed[2]} pieces are needed. Use "
        f"--vocab-size {needed[2]} or more, or a lower --character-coverage (e.g. 0.995) so "
        "that rare characters fall back to byte pieces"
    )


def _train(sentences: list[str], settings: dict, *, verbose: bool) -> ModelProto:
    """Run SentencePiece on `sentences` (one per line in a temp file) and return its model."""
    with tempfile.TemporaryDirectory(prefix="chuan-spm-") as tmp:
        corpus = Path(tmp) / "sentences.txt"
        corpus.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=str(Path(tmp) / "spm"),
                user_defined_symbols=list(USER_DEFINED_SYMBOLS),
                minloglevel=0 if verbose else 2,
                **settings,
            )
        except RuntimeError as e:
            if "Vocabulary size" not in str(e):
                raise
            raise InputError(_vocab_too_small(str(e), settings, len(sentences))) from e
        proto = ModelProto()
        proto.ParseFromString((Path(tmp) / "spm.model").read_bytes())
    # The temp paths and the thread count (which does not change the result) depend on the
    # run, not the data; clearing them keeps the file byte-identical across machines.
    # `train_report.json` records the real inputs and threads.
    for name in ("input", "model_prefix", "num_threads"):
        proto.trainer_spec.ClearField(name)
    return proto
