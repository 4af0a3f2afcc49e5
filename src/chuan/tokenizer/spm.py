"""SentencePiece models on disk: a tokenizer dir is `tokenizer.model` plus Hugging Face files.

Every command accepts a dir holding only `tokenizer.model` (or the `.model` file itself);
`chuan.tokenizer.hf.write_tokenizer_dir` always adds the HF files, so
`AutoTokenizer.from_pretrained(dir)` works after `import chuan`.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from chuan.errors import InputError, MissingError

ModelProto = sp_pb2.ModelProto


def model_file(tokenizer: str | Path) -> Path:
    """The `tokenizer.model` of a tokenizer dir, or the given `.model` file itself."""
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise MissingError(
            f"{path} not found: a tokenizer is a dir with a SentencePiece tokenizer.model "
            "(or the .model file itself)"
        )
    return path


def _not_a_model(path: Path, why: str) -> InputError:
    return InputError(
        f"{path} is not a SentencePiece model ({why}); the file is damaged or of another "
        "kind: copy it again from the tokenizer's source, or retrain it (chuan tokenizer train)"
    )


def load_proto(tokenizer: str | Path) -> ModelProto:
    """The parsed SentencePiece `ModelProto` (pieces, scores, types, trainer settings); a
    file that does not parse, or has no pieces, is an error naming it."""
    path = model_file(tokenizer)
    proto = ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise _not_a_model(path, str(err)) from None
    if not proto.pieces:
        raise _not_a_model(path, "it holds no pieces")
    return proto


def load_sentencepiece(tokenizer: str | Path) -> spm.SentencePieceProcessor:
    """A `SentencePieceProcessor` for a tokenizer dir or `.model` file."""
    path = model_file(tokenizer)
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise _not_a_model(path, str(err).strip() or type(err).__name__) from None
