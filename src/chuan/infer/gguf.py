"""Export a RoPE model dir to GGUF (architecture `llama`) for llama.cpp and its bindings.

The weights go through chuan's LLaMA export (`chuan.model.convert.baichuan_to_llama`: `W_pack`
split into q/k/v, NormHead folded into `lm_head` by normalising rows in fp32), then take
llama.cpp's tensor names (`gguf.TensorNameMap`). llama.cpp's `llama` architecture rotates
*adjacent* pairs `(x0, x1), (x2, x3), ...` of each head (Meta's layout), while chuan and HF
rotate the two halves `x[i], x[i + d/2]`; so the rows of q and k are permuted per head exactly
as llama.cpp's own `convert_hf_to_gguf.py` does for HF LLaMA checkpoints: half-split row `i`
becomes row `2i` and row `d/2 + i` becomes row `2i + 1`. v, o and the MLP are
copied as they are.

The SentencePiece tokenizer is embedded as `tokenizer.ggml.model = "llama"` with every
piece's text, score and type (SentencePiece's piece types and GGUF's token types share one
numbering; user-defined pieces such as Baichuan 2's `<reserved_106>` stay USER_DEFINED so
llama.cpp matches them verbatim, as SentencePiece does), BOS/EOS/UNK/PAD ids, no automatic
BOS/EOS (Baichuan's tokenizer adds neither) and the proto's `add_dummy_prefix` /
`remove_extra_whitespaces` flags. ALiBi models (the 13B family) have no `llama` equivalent.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

from chuan.errors import InputError, OutputExistsError
from chuan.fileio import atomic_file
from chuan.model.config import BaichuanConfig
from chuan.model.convert import baichuan_to_llama, read_as_baichuan
from chuan.tokenizer.spm import ModelProto, load_proto

ARCH = "llama"
OUTTYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
# Scores llama.cpp's converter gives tokens that are not SentencePiece pieces.
_EXTRA_TOKEN_SCORE = -1000.0


def rope_halves_to_pairs(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows of a q/k projection from the half-split RoPE layout to
    interleaved pairs (llama.cpp's `llama` layout)."""
    out_features, in_features = weight.shape
    head_dim = out_features // n_heads
    return (
        weight.reshape(n_heads, 2, head_dim // 2, in_features)
        .transpose(1, 2)
        .reshape(out_features, in_features)
    )


def gguf_tensors(config: BaichuanConfig, state: dict[str, torch.Tensor], outtype: str):
    """Yield `(gguf name, numpy array)` for every weight, in llama.cpp's layout."""
    _llama, weights = baichuan_to_llama(config, state)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {
        "q_proj": config.num_attention_heads,
        "k_proj": config.num_key_value_heads,
    }
    for key, tensor in weights.items():
        name = names.get_name(key, try_suffixes=(".weight",))
        if name is None:
            raise InputError(f"no GGUF name for weight {key!r}")
        projection = key.split(".")[-2]
        if projection in heads:
            tensor = rope_halves_to_pairs(tensor, heads[projection])
        # llama.cpp keeps 1-D tensors (norms) in f32 whatever the file type.
        dtype = np.float16 if outtype == "f16" and tensor.ndim > 1 else np.float32
        yield name, tensor.float().numpy().astype(dtype)


def tokenizer_vocab(
    proto: ModelProto, src_dir: Path, vocab_size: int
) -> tuple[list[bytes], list[float], list[int]]:
    """Token texts, scores and GGUF types for ids 0..vocab_size-1 (llama.cpp's rules: the
    pieces of `proto`, `added_tokens.json` entries in `src_dir` as USER_DEFINED, unused ids
    padded as `[PAD{id}]` UNUSED)."""
    if len(proto.pieces) > vocab_size:
        raise InputError(
            f"{src_dir}/tokenizer.model has {len(proto.pieces):,} pieces but the model only "
            f"{vocab_size:,} embedding rows"
        )
    tokens = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]
    tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), vocab_size)]
    scores += [_EXTRA_TOKEN_SCORE] * (vocab_size - len(scores))
    types += [int(gguf.TokenType.UNUSED)] * (vocab_size - len(types))
    added = src_dir / "added_tokens.json"
    if added.is_file():
        for text, index in json.loads(added.read_text(encoding="utf-8")).items():
            if not 0 <= index < vocab_size:
                raise InputError(f"{added}: token {text!r} has id {index} outside the vocabulary")
            tokens[index] = text.encode("utf-8")
            scores[index] = _EXTRA_TOKEN_SCORE
            types[index] = int(gguf.TokenType.USER_DEFINED)
    return tokens, scores, types


def _add_hyperparameters(writer: gguf.GGUFWriter, config: BaichuanConfig, outtype: str) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(OUTTYPES[outtype])


def _add_tokenizer(writer: gguf.GGUFWriter, src_dir: Path, config: BaichuanConfig) -> None:
    proto = load_proto(src_dir)
    tokens, scores, types = tokenizer_vocab(proto, src_dir, config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    eos = config.eos_token_id
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(eos[0] if isinstance(eos, list) else eos)
    writer.add_unk_token_id(proto.trainer_spec.unk_id)
    if config.pad_token_id is not None:
        writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    writer.add_remove_extra_whitespaces(proto.normalizer_spec.remove_extra_whitespaces)
    template = _chat_template(src_dir)
    if template:
        writer.add_chat_template(template)


def _chat_template(src_dir: Path) -> str | None:
    path = src_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("chat_template")


def export_gguf(
    src_dir: str | Path,
    out_path: str | Path,
    *,
    overwrite: bool = False,
    outtype: str = "f32",
) -> Path:
    """Write the RoPE model dir `src_dir` (chuan, Baichuan or HF LLaMA; unquantized) as one
    GGUF file `out_path`, atomically. `outtype` "f16" stores matrices in f16 (norms stay
    f32); quantize further with llama.cpp's `llama-quantize`."""
    src_dir, out_path = Path(src_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise InputError(f"outtype must be one of {sorted(OUTTYPES)}, got {outtype!r}")
    if out_path.exists() and not overwrite:
        raise OutputExistsError(
            f"{out_path} already exists; choose another path or pass --overwrite"
        )
    config, state = read_as_baichuan(src_dir)
    if config.position_encoding != "rope":
        raise InputError(
            f"{src_dir} uses ALiBi (the 13B family): GGUF export covers RoPE models only, "
            "as the llama architecture has no ALiBi"
        )
    with atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_name(src_dir.resolve().name)
        _add_hyperparameters(writer, config, outtype)
        _add_tokenizer(writer, src_dir, config)
        for name, array in gguf_tensors(config, state, outtype):
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)
        writer.close()
    return out_path
