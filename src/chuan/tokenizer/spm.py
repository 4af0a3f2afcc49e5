"""SentencePiece models on disk: a tokenizer dir is `tokenizer.model` plus Hugging Face files.

Every command accepts a dir holding only `tokenizer.model` (or the `.model` file itself);
writers always add the HF files so `AutoTokenizer.from_pretrained(dir)` works after
`import chuan`.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from chuan.fileio import atomic_dir

ModelProto = sp_pb2.ModelProto


def model_file(tokenizer: str | Path) -> Path:
    """The `tokenizer.model` of a tokenizer dir, or the given `.model` file itself."""
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a tokenizer is a dir with a SentencePiece tokenizer.model "
            "(or the .model file itself)"
        )
    return path


def load_proto(tokenizer: str | Path) -> ModelProto:
    """The parsed SentencePiece `ModelProto` (pieces, scores, types, trainer settings)."""
    proto = ModelProto()
    proto.ParseFromString(model_file(tokenizer).read_bytes())
    return proto


def load_sentencepiece(tokenizer: str | Path) -> spm.SentencePieceProcessor:
    """A `SentencePieceProcessor` for a tokenizer dir or `.model` file."""
    return spm.SentencePieceProcessor(model_file=str(model_file(tokenizer)))


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
