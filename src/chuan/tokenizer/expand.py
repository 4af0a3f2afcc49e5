"""Vocabulary expansion of a SentencePiece BPE tokenizer (Colossal-LLaMA-2 style), made reachable.

Colossal-LLaMA-2 appends new pieces to the base `ModelProto` with score 0 and type NORMAL,
keeping every base id. That alone is not enough: SentencePiece BPE builds a multi-character
symbol only by merging two adjacent symbols whose concatenation is in the vocabulary, so
`深度学习` added without `深度`/`学习` (or another chain of in-vocabulary halves) is never
produced. Here every added piece is made *reachable*: the BPE encoder is simulated on the
piece alone, and wherever it gets stuck the shortest adjacent pair of stuck symbols is added
as an intermediate piece (itself kept reachable), until the piece encodes as itself. Single
characters are never needed: BPE starts from characters, in the vocabulary or not.
SentencePiece then checks every added piece independently.

Scores: Colossal gives every added piece score 0, and SentencePiece breaks score ties by
position (leftmost first), which no merge-rank BPE such as Hugging Face `tokenizers` can
reproduce. Here added pieces get distinct scores instead, all above every base piece (LLaMA's
normal pieces score at most -1, so an added merge still runs before any base merge), in the
order they were added: for `pieces` that is shortest first (components before compounds, as
in BPE training), for `train_on` the trained model's merge priority; intermediates rank below
the pieces added before them. With base scores -1 and below, the last added piece scores 0.
Ids follow Colossal (added pieces stable-sorted by length); ids never affect merges.

Isolation: "encodes as one token" is checked on the piece alone with the dummy prefix turned
off. With LLaMA's `add_dummy_prefix`, `人工智能` at the start of a string encodes as
`['▁', '人工智能']` (parity with the reference), unless a piece `▁人…` exists.
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm

from chuan.documents import iter_documents
from chuan.errors import InputError
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import ModelProto, load_proto
from chuan.tokenizer.train import training_lines

Piece = ModelProto.SentencePiece
# Piece types SentencePiece's BPE may produce by merging (CONTROL, UNKNOWN and BYTE never).
_MERGEABLE = (Piece.NORMAL, Piece.USER_DEFINED, Piece.UNUSED)
_NORMALIZATION_RULES = ("identity", "nfkc", "nmt_nfkc", "nfkc_cf", "nmt_nfkc_cf")
REPORT_FILE = "expand_report.json"
_MAX_SENTENCE_BYTES = 1 << 16
# Han (with extensions and compatibility ideographs), CJK punctuation, full-width forms.
_CJK = re.compile(
    "[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]+"
)


@dataclass
class ExpandReport:
    """What an expansion did; `failed` lists added pieces that do not encode as one token.

    `candidates_exhausted` (train_on only): the corpus gave fewer than `add` new pieces.
    """

    base_size: int
    added_requested: int
    added_for_reachability: int
    final_size: int
    failed: list[str] = field(default_factory=list)
    requested_already_in_base: int = 0
    candidates_exhausted: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"


def read_pieces(pieces: str | Path | Iterable[str]) -> list[str]:
    """Pieces in order without duplicates (first wins), from a JSONL file or strings.

    The file has one `{"piece": "你好"}` object per line (Colossal's format); blank lines are
    skipped, anything else is an error naming the line.
    """
    if isinstance(pieces, (str, Path)):
        pieces = _read_pieces_jsonl(Path(pieces))
    seen: dict[str, None] = {}
    for piece in pieces:
        if not isinstance(piece, str) or not piece:
            raise InputError(f"a piece must be a non-empty string, got {piece!r}")
        seen.setdefault(piece, None)
    return list(seen)


def _read_pieces_jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                piece = json.loads(line)["piece"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(
                    f'{path}:{lineno}: expected a JSON object {{"piece": "..."}} ({e})'
                ) from None
            if not isinstance(piece, str) or not piece:
                raise InputError(f"{path}:{lineno}: field 'piece' must be a non-empty string")
            yield piece


class ReachableVocab:
    """The mergeable pieces of a BPE vocabulary plus a simulation of SentencePiece's encoder.

    `require(piece)` adds a piece and whatever intermediates make it encode as one token on
    its own. Every added piece, intermediates included, is kept reachable: a later addition
    that would break one is repaired too. `rollback()` undoes the last `require`, for budgets.
    """

    def __init__(self, proto: ModelProto):
        # Priority of the merge producing a piece: base pieces by score, added pieces above
        # them all, earlier added first. `final_scores` turns this into proto scores.
        self.scores = {p.piece: (0, p.score) for p in proto.pieces if p.type in _MERGEABLE}
        self._base_max = max((s for _, s in self.scores.values()), default=0.0)
        user_defined = {p.piece for p in proto.pieces if p.type == Piece.USER_DEFINED}
        self.frozen = frozenset(user_defined)
        self._frozen_longest_first = sorted(user_defined, key=len, reverse=True)
        self.all_pieces = {p.piece for p in proto.pieces}
        self.added: list[str] = []  # in insertion order
        self.requested: set[str] = set()  # added because asked for, not as intermediates
        self._containing: dict[str, set[str]] = defaultdict(set)  # substring -> added pieces
        self._failed: set[str] = set()
        self._last: tuple[int, str | None, set[str]] = (0, None, set())

    def encode(self, text: str) -> list[str]:
        """The symbols SentencePiece BPE ends with for `text` alone (no dummy prefix).

        Initial symbols are characters (user-defined pieces frozen whole); repeatedly the
        adjacent pair whose concatenation is a piece with the highest score merges, the
        leftmost on ties. Symbols outside the vocabulary would then fall back to bytes.
        """
        symbols = self._initial_symbols(text)
        frozen = [s in self.frozen for s in symbols]
        while True:
            best, best_score = -1, None
            for i in range(len(symbols) - 1):
                if frozen[i] or frozen[i + 1]:
                    continue
                score = self.scores.get(symbols[i] + symbols[i + 1])
                if score is not None and (best_score is None or score > best_score):
                    best, best_score = i, score
            if best < 0:
                return symbols
            symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
            del frozen[best + 1]

    def _initial_symbols(self, text: str) -> list[str]:
        symbols, i = [], 0
        while i < len(text):
            match = next((f for f in self._frozen_longest_first if text.startswith(f, i)), text[i])
            symbols.append(match)
            i += len(match)
        return symbols

    def require(self, piece: str) -> list[str]:
        """Add `piece` and the intermediates that keep every added piece reachable.

        Returns the pieces added to the vocabulary, `piece` first if it was new (it may
        already be there as an intermediate; then it only counts as requested from now on).
        """
        if piece in self.all_pieces:
            raise InputError(f"{piece!r} is already a piece of the base vocabulary")
        start = len(self.added)
        newly_requested = piece if piece not in self.requested else None
        self._last = (start, newly_requested, set(self._failed))
        self.requested.add(piece)
        if piece not in self.scores:
            self._insert(piece)
            self._repair([piece])
        return self.added[start:]

    def rollback(self) -> None:
        """Undo the last `require` (its pieces, intermediates and request)."""
        start, newly_requested, self._failed = self._last
        for piece in self.added[start:]:
            del self.scores[piece]
            for sub in _substrings(piece):
                self._containing[sub].discard(piece)
        del self.added[start:]
        self.requested.discard(newly_requested)
        self._last = (len(self.added), None, set(self._failed))

    @property
    def failed(self) -> list[str]:
        """Added pieces no intermediate can make reachable (frozen user-defined symbols)."""
        return sorted(self._failed)

    def final_scores(self) -> dict[str, float]:
        """Scores for the added pieces: above every base score, in order of addition."""
        n = len(self.added)
        scores = {p: float(np.float32(self._base_max + n - k)) for k, p in enumerate(self.added)}
        if len(set(scores.values())) < n:
            raise InputError(
                f"cannot give {n} added pieces distinct float32 scores above the base maximum "
                f"{self._base_max}"
            )
        return scores

    def _insert(self, piece: str) -> None:
        self.scores[piece] = (1, -len(self.added))
        self.added.append(piece)
        for sub in _substrings(piece):
            self._containing[sub].add(piece)

    def _repair(self, todo: list[str]) -> None:
        """Until every piece in `todo` is one symbol, add the shortest stuck pair (leftmost).

        A new piece can only change the encoding of added pieces that contain it, so exactly
        those are checked again. Each addition is a new substring of an earlier piece, so
        this terminates: a piece all of whose substrings are in the vocabulary always merges
        into one symbol.
        """
        todo = [*todo, *(p for t in todo for p in self._containing[t])]
        while todo:
            piece = todo.pop()
            symbols = self.encode(piece)
            if len(symbols) == 1:
                self._failed.discard(piece)
                continue
            pairs = [
                symbols[i] + symbols[i + 1]
                for i in range(len(symbols) - 1)
                if symbols[i] not in self.frozen and symbols[i + 1] not in self.frozen
            ]
            if not pairs:
                self._failed.add(piece)
                continue
            joined = min(pairs, key=len)
            self._insert(joined)
            todo.extend(self._containing[joined])


def _substrings(text: str) -> Iterator[str]:
    for i in range(len(text)):
        for j in range(i + 2, len(text) + 1):
            yield text[i:j]


def verify_single_tokens(proto: ModelProto, pieces: Iterable[str]) -> list[str]:
    """The pieces that SentencePiece does not encode as exactly their own id when alone.

    The dummy prefix is switched off on a copy of the model so each piece is encoded in
    isolation (with it, a string start adds `▁`, which is context, not the piece).
    """
    sp = isolating_processor(proto)
    return [p for p in pieces if sp.encode(p) != [sp.piece_to_id(p)]]


def isolating_processor(proto: ModelProto) -> spm.SentencePieceProcessor:
    """A processor for `proto` with the dummy prefix off: text is encoded exactly as given."""
    isolated = ModelProto()
    isolated.CopyFrom(proto)
    isolated.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=isolated.SerializeToString())


def learn_candidates(
    train_on: Iterable[str | Path],
    base: ModelProto,
    *,
    vocab_size: int,
    seed: int = 0,
    any_script: bool = False,
) -> list[str]:
    """Pieces a SentencePiece BPE model learns from a corpus, most useful first, minus the base.

    Every character of the corpus is a candidate (coverage 1.0: a character left out falls
    back to bytes). Unless `any_script`, only pieces made wholly of CJK characters (Han, CJK
    punctuation, full-width forms) are kept: Chinese corpora are full of English words
    (`PostScript`) and shared symbols (`—`, `“`), and pieces holding them would change how
    English encodes, while `▁你`-style pieces only come from the dummy prefix at line starts
    and waste the budget. English then encodes exactly as before.

    Training mirrors the base's normalisation and splitting so the pieces fit how the base
    segments text. Order: merged pieces by merge priority (score), each preceded by those of
    its characters not placed yet; SentencePiece lists the alphabet after all merges, but a
    character an early merge uses is frequent, and without it the character alone still
    falls back to bytes. Characters no merge uses follow in the trainer's (frequency) order.
    """
    if isinstance(train_on, (str, Path)):
        train_on = [train_on]
    spm.set_random_generator_seed(seed)
    sentences = (
        line
        for doc in iter_documents(train_on)
        for line in training_lines(doc.text, _MAX_SENTENCE_BYTES)
    )
    model = _train_bpe(sentences, base, vocab_size)
    learned = sorted((p for p in model.pieces if p.type == Piece.NORMAL), key=lambda p: -p.score)
    merged = [p.piece for p in learned if len(p.piece) > 1]
    characters = [p.piece for p in learned if len(p.piece) == 1]
    alphabet = set(characters)
    ordered: dict[str, None] = {}
    for piece in merged:
        ordered.update(dict.fromkeys(c for c in piece if c in alphabet))
        ordered[piece] = None
    ordered.update(dict.fromkeys(characters))
    in_base = {p.piece for p in base.pieces}
    return [p for p in ordered if p not in in_base and (any_script or _CJK.fullmatch(p))]


def _train_bpe(sentences: Iterator[str], base: ModelProto, vocab_size: int) -> ModelProto:
    norm, trainer = base.normalizer_spec, base.trainer_spec
    rule = norm.name if norm.name in _NORMALIZATION_RULES else "identity"
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name=rule,
        add_dummy_prefix=norm.add_dummy_prefix,
        remove_extra_whitespaces=norm.remove_extra_whitespaces,
        split_digits=trainer.split_digits,
        split_by_whitespace=trainer.split_by_whitespace,
        split_by_unicode_script=trainer.split_by_unicode_script,
        max_sentencepiece_length=trainer.max_sentencepiece_length or 16,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        byte_fallback=False,
        num_threads=1,
        minloglevel=2,
    )
    model = ModelProto()
    model.ParseFromString(buffer.getvalue())
    return model


def expand_tokenizer(
    base: str | Path,
    out: str | Path,
    *,
    pieces: str | Path | Iterable[str] | None = None,
    train_on: Iterable[str | Path] | None = None,
    add: int | None = None,
    seed: int = 0,
    any_script: bool = False,
    overwrite: bool = False,
) -> ExpandReport:
    """Append pieces to the base tokenizer (base ids unchanged), reachable, and write `out`.

    Either `pieces` (a `{"piece": ...}` JSONL file or strings; all are added, plus the
    intermediates reachability needs) or `train_on` corpus paths with `add` = the total
    number of pieces to add, intermediates included (the Chinese-LLaMA way: candidates are
    learned from the corpus and taken most useful first; the trainer is seeded with `seed`;
    only CJK pieces are taken unless `any_script`, see `learn_candidates`).
    New pieces get ids by string length (stable), type NORMAL, scores as the module doc
    says. `out` gets the tokenizer files and `expand_report.json`.
    """
    if (pieces is None) == (train_on is None):
        raise InputError("give exactly one of pieces or train_on")
    if (train_on is not None) != (add is not None):
        raise InputError("add (the number of pieces to add) goes with train_on, and only with it")
    if add is not None and add < 1:
        raise InputError(f"add must be a positive number of pieces, got {add}")
    proto = load_proto(base)
    vocab = ReachableVocab(proto)
    if pieces is not None:
        requested = read_pieces(pieces)
        in_base = sum(p in vocab.all_pieces for p in requested)
        for piece in sorted(requested, key=len):
            if piece not in vocab.all_pieces:
                vocab.require(piece)
        exhausted = False
    else:
        requested = learn_candidates(
            train_on, proto, vocab_size=2 * add + 1000, seed=seed, any_script=any_script
        )
        in_base = 0
        exhausted = not _require_within(vocab, requested, add)
    new = [p for p in vocab.added if p in vocab.requested]
    scores = vocab.final_scores()
    for piece in sorted(vocab.added, key=len):
        proto.pieces.add(piece=piece, score=scores[piece], type=Piece.NORMAL)
    report = ExpandReport(
        base_size=len(proto.pieces) - len(vocab.added),
        added_requested=len(new),
        added_for_reachability=len(vocab.added) - len(new),
        final_size=len(proto.pieces),
        failed=sorted(set(vocab.failed) | set(verify_single_tokens(proto, vocab.added))),
        requested_already_in_base=in_base,
        candidates_exhausted=exhausted,
    )
    write_tokenizer_dir(
        out, proto, extra_files={REPORT_FILE: report.to_json()}, overwrite=overwrite
    )
    return report


def _require_within(vocab: ReachableVocab, candidates: list[str], budget: int) -> bool:
    """Require candidates in order while the pieces added stay within `budget`.

    A candidate whose intermediates would overshoot is skipped and the next one tried.
    Returns whether the budget was filled exactly.
    """
    for piece in candidates:
        if len(vocab.added) == budget:
            return True
        vocab.require(piece)
        if len(vocab.added) > budget:
            vocab.rollback()
    return len(vocab.added) == budget
