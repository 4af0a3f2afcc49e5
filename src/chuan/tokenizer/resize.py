"""Resize a model to an expanded tokenizer, initialising new rows as Colossal-LLaMA-2 does.

Each new token's input embedding is the mean of the old input rows of the ids the OLD
tokenizer splits its piece into, and its output row the mean of the old output rows of the
same ids (not a global mean). By default the piece is encoded as the reference does, with the
dummy prefix, so a piece such as `你好` decomposes into a leading lone `▁` plus its
characters and the `▁` row is part of the mean; `exclude_dummy_prefix=True` encodes the piece
exactly as written instead (a piece that itself starts with `▁` keeps that `▁`).

NormHead models store the raw output matrix W and compute with `normalize(W)` by rows. New
output rows are means of the raw stored rows, so the new token's effective output direction is
the norm-weighted mean direction of its parts; old rows, and so the logits of the old
vocabulary, are unchanged. Tied embeddings get only the input rows (the head is that matrix).

Computation is fp32 on CPU; the result is saved in the model's dtype.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch

from chuan.errors import InputError
from chuan.model.checkpoint import copy_side_files, read_config, read_state_dict, write_model_dir
from chuan.model.config import BaichuanConfig
from chuan.tokenizer.expand import isolating_processor
from chuan.tokenizer.spm import load_proto, load_sentencepiece, model_file

EMBED_KEY = "model.embed_tokens.weight"
HEAD_KEY = "lm_head.weight"


def resize_model(
    model_dir: str | Path,
    new_tokenizer: str | Path,
    out: str | Path,
    *,
    old_tokenizer: str | Path | None = None,
    exclude_dummy_prefix: bool = False,
    overwrite: bool = False,
) -> BaichuanConfig:
    """Write `out`: the model of `model_dir` with rows for the tokens `new_tokenizer` adds.

    `new_tokenizer` must keep every piece of the old tokenizer (the one in `model_dir`, or
    `old_tokenizer`) at its id and append the rest. Returns the updated config.
    """
    config = read_config(model_dir)
    state = read_state_dict(model_dir)
    old = old_tokenizer if old_tokenizer is not None else model_dir
    old_pieces, added = check_extension(old, new_tokenizer)
    old_size = state[EMBED_KEY].shape[0]
    if old_size != config.vocab_size or old_size != len(old_pieces):
        raise InputError(
            f"{model_dir}: embed_tokens has {old_size} rows, config vocab_size is "
            f"{config.vocab_size} and the old tokenizer {old} has {len(old_pieces)} pieces; "
            "they must agree before resizing"
        )
    parts = decompose(added, old, exclude_dummy_prefix=exclude_dummy_prefix)
    keys = [EMBED_KEY] if config.tie_word_embeddings else [EMBED_KEY, HEAD_KEY]
    for key in keys:
        state[key] = append_mean_rows(state[key], parts)
    if config.tie_word_embeddings and HEAD_KEY in state:
        state[HEAD_KEY] = state[EMBED_KEY]
    config.vocab_size = state[EMBED_KEY].shape[0]
    with tempfile.TemporaryDirectory() as side:
        _side_files(model_dir, new_tokenizer, Path(side))
        write_model_dir(out, config, state, side_files_from=side, overwrite=overwrite)
    return config


def check_extension(
    old_tokenizer: str | Path, new_tokenizer: str | Path
) -> tuple[list[str], list[str]]:
    """`(old pieces, appended pieces)`; an error names the first id where `new` differs."""
    old = [p.piece for p in load_proto(old_tokenizer).pieces]
    new = [p.piece for p in load_proto(new_tokenizer).pieces]
    if len(new) <= len(old):
        raise InputError(
            f"{new_tokenizer} has {len(new)} pieces, not more than the {len(old)} of "
            f"{old_tokenizer}: it is not an expansion"
        )
    for i, (a, b) in enumerate(zip(old, new, strict=False)):  # new is longer
        if a != b:
            raise InputError(
                f"{new_tokenizer} is not an expansion of {old_tokenizer}: id {i} is {b!r} "
                f"there but {a!r} in the old tokenizer (old ids must keep their pieces)"
            )
    return old, new[len(old) :]


def decompose(
    pieces: list[str], old_tokenizer: str | Path, *, exclude_dummy_prefix: bool = False
) -> list[list[int]]:
    """The old-tokenizer ids of each piece (no BOS/EOS), as the reference's mean uses them."""
    sp = (
        isolating_processor(load_proto(old_tokenizer))
        if exclude_dummy_prefix
        else load_sentencepiece(old_tokenizer)
    )
    return [_nonempty(sp, piece) for piece in pieces]


def _nonempty(sp: spm.SentencePieceProcessor, piece: str) -> list[int]:
    ids = sp.encode(piece)
    if not ids:
        raise InputError(f"piece {piece!r} encodes to no tokens with the old tokenizer")
    return ids


def append_mean_rows(matrix: torch.Tensor, parts: list[list[int]]) -> torch.Tensor:
    """`matrix` with one row appended per entry of `parts`: the fp32 mean of those rows."""
    flat = torch.tensor([i for ids in parts for i in ids], dtype=torch.long)
    owner = torch.repeat_interleave(torch.tensor([len(ids) for ids in parts]))
    sums = torch.zeros(len(parts), matrix.shape[1], dtype=torch.float32)
    sums.index_add_(0, owner, matrix[flat].float())
    means = sums / torch.bincount(owner, minlength=len(parts)).unsqueeze(1)
    return torch.cat([matrix, means.to(matrix.dtype)])


def _side_files(model_dir: str | Path, new_tokenizer: str | Path, dst: Path) -> None:
    """Gather the model's generation config and the NEW tokenizer's files in `dst`."""
    generation = Path(model_dir) / "generation_config.json"
    if generation.is_file():
        shutil.copy2(generation, dst / generation.name)
    if Path(new_tokenizer).is_dir():
        copy_side_files(new_tokenizer, dst)
    else:
        shutil.copy2(model_file(new_tokenizer), dst / "tokenizer.model")
