"""Hugging Face tokenizers for chuan's SentencePiece models, registered with `AutoTokenizer`.

Two classes read the same `tokenizer.model`:

- `BaichuanTokenizer` (slow) behaves like Baichuan's own `tokenization_baichuan.py`: text is
  segmented by `sentencepiece` itself, special tokens decode verbatim, no BOS/EOS by default.
- `BaichuanTokenizerFast` rebuilds SentencePiece's BPE segmentation in `tokenizers` from the
  proto (normaliser settings, byte fallback, user-defined symbols): the same ids, plus offset
  mappings and about twice the speed on batches (5,000 Tatoeba lines, LLaMA vocab).
  transformers' generic SentencePiece conversion does not read the proto's `add_dummy_prefix`
  or `remove_extra_whitespaces` (Baichuan 2-style models turn the prefix off), hence our own.

After `import chuan`, `AutoTokenizer.from_pretrained` resolves `tokenizer_class:
"BaichuanTokenizer"` (released Baichuan 2 dirs, whose `auto_map` points at remote code) and
chuan model dirs (model_type "baichuan") to these classes without `trust_remote_code`.
transformers v5's `AutoTokenizer` ignores `use_fast` and always gives the fast class; use
`load_tokenizer(path, use_fast=False)` for the slow one.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
from tokenizers.models import BPE
from transformers import AutoTokenizer
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from chuan.errors import InputError
from chuan.fileio import atomic_dir
from chuan.model import BaichuanConfig
from chuan.tokenizer.chat_templates import BAICHUAN_ASSISTANT, BAICHUAN_USER, baichuan2_jinja
from chuan.tokenizer.spm import ModelProto, load_proto, model_file

SPIECE_UNDERLINE = "\u2581"
MODEL_MAX_LENGTH = 4096
# Baichuan 2's role markers (ids 195 and 196 in its vocabulary).
# Baichuan 2's chat format (`generation_utils.build_chat_input`): an optional system prompt as
# plain text, then each turn as its role marker + content, no EOS after past assistant turns.
CHAT_TEMPLATE = baichuan2_jinja()

_PIECE = ModelProto.SentencePiece
_TRAINER = sp_pb2.TrainerSpec


def special_tokens(proto: ModelProto) -> dict[str, str | None]:
    """unk/bos/eos/pad strings from the trainer spec (None where the model has no such id).

    Without a pad piece, pad is `<unk>`, as in Baichuan's tokenizer config.
    """
    spec = proto.trainer_spec

    def piece(index: int) -> str | None:
        return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None

    unk = piece(spec.unk_id)
    return {
        "unk_token": unk,
        "bos_token": piece(spec.bos_id),
        "eos_token": piece(spec.eos_id),
        "pad_token": piece(spec.pad_id) or unk,
    }


def _special_kwargs(proto: ModelProto, **given) -> dict:
    """The special tokens in `given`, each falling back to the proto's own where None."""
    return {
        key: default if given.get(key) is None else given[key]
        for key, default in special_tokens(proto).items()
    }


class _SaveAsSentencePiece:
    """`save_pretrained` for both classes: `tokenizer.model` plus a config they reload exactly.

    transformers v5 drops the BOS/EOS flags from `tokenizer_config.json` (and, for fast
    tokenizers, the added tokens) because it expects them in `tokenizer.json`; neither class
    reads that file, so they go back into the config and no `tokenizer.json` is written.
    """

    def _save_pretrained(
        self, save_directory, file_names, legacy_format=None, filename_prefix=None
    ):
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        config_file = Path(save_directory) / f"{prefix}tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["add_bos_token"] = self.add_bos_token
        config["add_eos_token"] = self.add_eos_token
        # Specials and tokens added after loading; user-defined pieces come from the proto.
        config["added_tokens_decoder"] = {
            str(index): token.__getstate__()
            for index, token in self.added_tokens_decoder.items()
            if token.special or index >= self.vocab_size
        }
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        config_file.write_text(text, encoding="utf-8")
        return file_names + self.save_vocabulary(save_directory, filename_prefix=filename_prefix)


class BaichuanTokenizer(_SaveAsSentencePiece, SentencePieceBackend):
    """The slow tokenizer: `sentencepiece` segments the text, as in Baichuan's remote code."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        clean_up_tokenization_spaces: bool = False,
        **kwargs,
    ):
        # The base class loads `sp_model` before `PreTrainedTokenizer.__init__` (which needs it);
        # `legacy=True` keeps its `_tokenize` hack for dropped dummy prefixes out of the way.
        kwargs.pop("legacy", None)
        kwargs.setdefault("model_max_length", MODEL_MAX_LENGTH)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        super().__init__(
            vocab_file=vocab_file,
            legacy=True,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **_special_kwargs(
                load_proto(vocab_file),
                unk_token=unk_token,
                bos_token=bos_token,
                eos_token=eos_token,
                pad_token=pad_token,
            ),
            **kwargs,
        )

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Special tokens verbatim; every run of other pieces through `sp.decode`."""
        special = set(self.all_special_tokens)
        out, run = [], []
        for token in tokens:
            if token in special:
                out += [self.sp_model.decode(run), token]
                run = []
            else:
                run.append(token)
        out.append(self.sp_model.decode(run))
        return "".join(out)

    def _wrap(self, ids: list, bos, eos) -> list:
        return [bos] * self.add_bos_token + ids + [eos] * self.add_eos_token

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`[bos] a [eos]` (+ `[bos] b [eos]`), each marker only where enabled."""
        bos, eos = self.bos_token_id, self.eos_token_id
        out = self._wrap(token_ids_0, bos, eos)
        return out if token_ids_1 is None else out + self._wrap(token_ids_1, bos, eos)

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, True)
        out = self._wrap([0] * len(token_ids_0), 1, 1)
        return out if token_ids_1 is None else out + self._wrap([0] * len(token_ids_1), 1, 1)


def bpe_merges(proto: ModelProto) -> list[tuple[str, str]]:
    """SentencePiece BPE's merge order as `tokenizers` merge rules.

    SentencePiece repeatedly merges the adjacent pair whose concatenation is the
    highest-scoring normal piece, so every split of a normal piece into two normal pieces is a
    rule, ranked by the merged piece's score (ties by id). User-defined, control, byte and
    unused pieces never take part in merges.
    """
    normal = {
        p.piece: (-p.score, index)
        for index, p in enumerate(proto.pieces)
        if p.type == _PIECE.NORMAL
    }
    ranked = [
        (rank, cut, piece[:cut], piece[cut:])
        for piece, rank in normal.items()
        for cut in range(1, len(piece))
        if piece[:cut] in normal and piece[cut:] in normal
    ]
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _warn_on_tied_scores(proto: ModelProto, merged: set[str]) -> None:
    """Warn when merge results share scores (e.g. Colossal-style expansions, all score 0).

    SentencePiece breaks such ties leftmost-first, which ranked merges cannot express, so the
    fast tokenizer may then segment differently. Runs of `▁` are exempt: with every run piece
    present, any merge order gives the same chunks (LLaMA's all score -1e9).
    """
    scores = Counter(p.score for p in proto.pieces if p.piece in merged)
    tied = [
        p.piece
        for p in proto.pieces
        if p.piece in merged and scores[p.score] > 1 and p.piece.strip(SPIECE_UNDERLINE)
    ]
    if tied:
        warnings.warn(
            f"{len(tied)} mergeable pieces share their score with another (e.g. {tied[:3]}); "
            "SentencePiece breaks such ties leftmost-first, which the fast tokenizer cannot, "
            "so its ids may differ: load with use_fast=False for SentencePiece's exact ids",
            stacklevel=2,
        )


def _normalizer(spec: sp_pb2.NormalizerSpec) -> normalizers.Normalizer:
    """SentencePiece's normalisation, in its order: character map, whitespace clean-up,
    dummy prefix, spaces to `▁`."""
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    return normalizers.Sequence(steps)


def _decoder(spec: sp_pb2.NormalizerSpec) -> decoders.Decoder:
    """`▁` back to spaces, byte pieces to UTF-8; like `sp.decode`, one leading space is dropped
    when the model adds a dummy prefix or strips whitespace."""
    steps = [decoders.Replace(SPIECE_UNDERLINE, " ")] if spec.escape_whitespaces else []
    steps += [decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix or spec.remove_extra_whitespaces:
        steps.append(decoders.Strip(" ", 1, 0))
    return decoders.Sequence(steps)


def backend_from_proto(proto: ModelProto) -> Tokenizer:
    """A `tokenizers.Tokenizer` that segments text like SentencePiece does with `proto`.

    The whole normalised text is one BPE word (SentencePiece does not pre-split it; word
    boundaries come from the vocabulary). User-defined symbols become added tokens so they are
    cut out first and never merged, as SentencePiece's prefix matcher does. Known limits:
    pieces of equal score competing for one position may merge in another order than
    SentencePiece's leftmost-first (warned about at load), and with a dummy prefix,
    user-defined symbols are matched before normalisation, so the text after one gets its own
    `▁`.
    """
    spec = proto.trainer_spec
    if spec.model_type != _TRAINER.BPE:
        kind = _TRAINER.ModelType.Name(spec.model_type)
        raise InputError(
            f"trainer_spec.model_type is {kind}: the fast tokenizer supports BPE SentencePiece "
            "models only; load this one with use_fast=False"
        )
    if spec.treat_whitespace_as_suffix:
        raise InputError("trainer_spec.treat_whitespace_as_suffix=true is not supported")
    vocab = {p.piece: index for index, p in enumerate(proto.pieces)}
    unk = proto.pieces[spec.unk_id].piece if spec.unk_id >= 0 else None
    merges = bpe_merges(proto)
    _warn_on_tied_scores(proto, {left + right for left, right in merges})
    model = BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=spec.byte_fallback)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _normalizer(proto.normalizer_spec)
    tokenizer.decoder = _decoder(proto.normalizer_spec)
    # Matched on normalised text (so whitespace-run symbols like "▁▁▁▁" work) unless a dummy
    # prefix would be prepended to the symbol itself.
    normalized = not proto.normalizer_spec.add_dummy_prefix
    tokenizer.add_tokens(
        [
            AddedToken(p.piece, normalized=normalized, special=False)
            for p in proto.pieces
            if p.type == _PIECE.USER_DEFINED
        ]
    )
    return tokenizer


class BaichuanTokenizerFast(_SaveAsSentencePiece, TokenizersBackend):
    """The fast tokenizer, rebuilt from `tokenizer.model` on each load (`backend_from_proto`)."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        """Skip transformers' generic SentencePiece conversion: `__init__` builds the backend."""
        return kwargs

    def __init__(
        self,
        vocab_file: str | None = None,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        clean_up_tokenization_spaces: bool = False,
        **kwargs,
    ):
        if vocab_file is None:
            raise InputError("BaichuanTokenizerFast needs vocab_file (a SentencePiece .model)")
        # A saved tokenizer.json (or vocab/merges taken from it) is ignored: the proto is the truth.
        for key in ("tokenizer_file", "tokenizer_object", "vocab", "merges"):
            kwargs.pop(key, None)
        kwargs.setdefault("model_max_length", MODEL_MAX_LENGTH)
        proto = load_proto(vocab_file)
        self._tokenizer = backend_from_proto(proto)
        super().__init__(
            vocab_file=vocab_file,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **_special_kwargs(
                proto,
                unk_token=unk_token,
                bos_token=bos_token,
                eos_token=eos_token,
                pad_token=pad_token,
            ),
            **kwargs,
        )


def _token_entry(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def hf_config(proto: ModelProto) -> dict:
    """The `tokenizer_config.json` contents for `proto` (Baichuan's settings).

    The chat template writes role markers as text; SentencePiece itself matches them only as
    user-defined pieces, so role pieces of another type are declared special tokens here,
    which both classes then cut out of the text.
    """
    by_piece = {p.piece: (index, p.type) for index, p in enumerate(proto.pieces)}
    has_roles = BAICHUAN_USER in by_piece and BAICHUAN_ASSISTANT in by_piece
    roles = [BAICHUAN_USER, BAICHUAN_ASSISTANT] if has_roles else []
    tokens = special_tokens(proto)
    declared = {v for v in tokens.values() if v is not None}
    declared |= {r for r in roles if by_piece[r][1] != _PIECE.USER_DEFINED}
    config = {
        "tokenizer_class": "BaichuanTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        **tokens,
        "added_tokens_decoder": {
            str(by_piece[piece][0]): _token_entry(piece)
            for piece in sorted(declared, key=lambda piece: by_piece[piece][0])
        },
    }
    if has_roles:
        config["chat_template"] = CHAT_TEMPLATE
    return config


def write_hf_files(directory: Path, proto: ModelProto) -> None:
    """Write `tokenizer_config.json` and `special_tokens_map.json` beside `tokenizer.model`.

    No `tokenizer.json`: the fast class rebuilds its backend from the proto, so the two files
    can never disagree. The chat template is written only when the proto has Baichuan 2's role
    pieces `<reserved_106>`/`<reserved_107>`.
    """
    directory = Path(directory)
    config = hf_config(proto)
    token_map = {k: _token_entry(v) for k, v in special_tokens(proto).items() if v is not None}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", token_map)):
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        (directory / name).write_text(text, encoding="utf-8")


def load_tokenizer(
    path: str | Path, use_fast: bool = True
) -> BaichuanTokenizerFast | BaichuanTokenizer:
    """The HF tokenizer for a tokenizer dir, a model dir or a bare `.model` file.

    A dir's `tokenizer_config.json` (chat template, BOS/EOS flags) is honoured when present;
    a dir or file with only `tokenizer.model` gets Baichuan's defaults.
    """
    cls = BaichuanTokenizerFast if use_fast else BaichuanTokenizer
    path = Path(path)
    spm_file = model_file(path)  # a clear error when there is no tokenizer.model
    if path.is_dir():
        return cls.from_pretrained(str(path))
    return cls(vocab_file=str(spm_file))


AutoTokenizer.register(
    BaichuanConfig,
    slow_tokenizer_class=BaichuanTokenizer,
    fast_tokenizer_class=BaichuanTokenizerFast,
    exist_ok=True,
)


def write_tokenizer_dir(
    out: str | Path,
    proto: ModelProto,
    *,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `tokenizer.model`, the HF tokenizer files and `extra_files` (name -> text, e.g. a
    report) for `proto`, all in one atomic step."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "tokenizer.model").write_bytes(proto.SerializeToString())
        write_hf_files(tmp, proto)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out)
