"""SentencePiece models on disk: a tokenizer dir is `tokenizer.model` plus Hugging Face files.

Every command accepts a dir holding only `tokenizer.model` (or the `.model` file itself);
writers always add the HF files so `AutoTokenizer.from_pretrained(dir)` works after
`import chuan`.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from chuan.errors import InputError, MissingError
from chuan.fileio import atomic_dir

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


def write_tokenizer_dir(
    out: str | Path,
    proto: ModelProto,
    *,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `tokenizer.model`, the HF tokenizer files and `extra_files` (name -> text, e.g. a
    report) for `proto`, all in one atomic step."""
    from chuan.tokenizer.hf import write_hf_files

    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "tokenizer.model").write_bytes(proto.SerializeToString())
        write_hf_files(tmp, proto)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out)
