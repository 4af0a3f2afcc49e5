"""Rebuild the Baichuan-7B tokenizer as a SentencePiece model from llama.cpp's vocab GGUF.

The original `tokenizer.model` is not beside the project, but `ggml-vocab-baichuan.gguf` keeps
every piece with its score and type, which is all a SentencePiece BPE model encodes with. The
trainer/normaliser settings are Baichuan 1's published ones (baichuan-inc/Baichuan-7B README):
BPE, byte fallback, digits split, no normalisation, extra whitespace kept. The GGUF does not
record the dummy prefix; Baichuan 1 had one (Baichuan 2 dropped it), so it is on.

The GGUF reader is this file's own: a v2/v3 header (magic, version, tensor count, KV count),
then KV pairs of (string key, uint32 type, value); arrays are (element type, uint64 count,
elements). All KVs are read and three tokenizer arrays used; tensor infos follow the KVs and
are never read.

    python benchmarks/baichuan_vocab.py \\
        ../shared/data/tokenizers/baichuan/ggml-vocab-baichuan.gguf OUT_DIR
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

# GGUF value types -> struct format of one scalar (8 = string, 9 = array are special).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
WANTED = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


class GGUFReader:
    """Sequential little-endian reads over the bytes of a GGUF file, with offsets in errors."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def unpack(self, fmt: str, count: int = 1):
        size = struct.calcsize(f"<{count}{fmt}")
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated at byte {self.pos} (needed {size} more)")
        values = struct.unpack_from(f"<{count}{fmt}", self.data, self.pos)
        self.pos += size
        return values if count != 1 else values[0]

    def string(self) -> str:
        length = self.unpack("Q")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            element, count = self.unpack("I"), self.unpack("Q")
            if element == _STRING:
                return [self.string() for _ in range(count)]
            if element in _SCALARS:
                return list(self.unpack(_SCALARS[element], count)) if count else []
            raise ValueError(f"{self.path}: byte {self.pos}: unsupported array type {element}")
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        raise ValueError(f"{self.path}: byte {self.pos}: unknown GGUF value type {kind}")


def read_gguf_metadata(path: str | Path) -> dict:
    """All KV metadata of a GGUF v2/v3 file as a dict (tensor data is not read)."""
    reader = GGUFReader(Path(path))
    if reader.data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {reader.data[:4]!r})")
    reader.pos = 4
    version = reader.unpack("I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} unsupported (2 or 3 expected)")
    _tensors, kv_count = reader.unpack("Q"), reader.unpack("Q")
    metadata = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(reader.unpack("I"))
    return metadata


def baichuan_proto(gguf: str | Path) -> sp_pb2.ModelProto:
    """A SentencePiece BPE `ModelProto` with the GGUF's pieces, scores and types."""
    meta = read_gguf_metadata(gguf)
    missing = [key for key in WANTED if key not in meta]
    if missing:
        raise ValueError(f"{gguf}: no {missing} in the GGUF metadata")
    tokens, scores, types = (meta[key] for key in WANTED)
    if not len(tokens) == len(scores) == len(types):
        raise ValueError(f"{gguf}: {len(tokens)} tokens, {len(scores)} scores, {len(types)} types")
    proto = sp_pb2.ModelProto()
    # llama.cpp's token types use SentencePiece's numbering (1 normal ... 6 byte).
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        proto.pieces.add(piece=piece, score=score, type=kind)
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = True
    spec.split_digits = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto


def write_baichuan_tokenizer(gguf: str | Path, out: str | Path) -> Path:
    """`out/tokenizer.model` rebuilt from the GGUF (a plain file write; `out` is a work dir)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(baichuan_proto(gguf).SerializeToString())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path, help="ggml-vocab-baichuan.gguf")
    parser.add_argument("out", type=Path, help="dir to write tokenizer.model into")
    args = parser.parse_args()
    print(write_baichuan_tokenizer(args.gguf, args.out) / "tokenizer.model")


if __name__ == "__main__":
    main()
