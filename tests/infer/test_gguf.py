"""GGUF export: metadata and tokenizer read back with `gguf.GGUFReader`, the q/k permutation
undone by hand, and an independent numpy LLaMA forward with llama.cpp's interleaved RoPE run
on the exported tensors against chuan's own logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFReader, TokenType

from chuan.infer.gguf import export_gguf
from chuan.infer.loading import load_model
from chuan.infer.quantize import quantize_dir
from chuan.model.checkpoint import init_model_dir, read_state_dict
from chuan.tokenizer.spm import load_proto
from helpers.corpus import write_jsonl
from helpers.pretrain_fixtures import bible_documents

LAYERS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory, test_data) -> dict:
    """A tokenizer trained on bilingual verses and two random `tiny` RoPE dirs using it: one
    with NormHead and full multi-head attention, one with a plain head and 2 KV heads."""
    from chuan.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("gguf")
    corpus = write_jsonl(root / "corpus.jsonl", bible_documents(test_data, 1500))
    train_tokenizer(corpus, root / "tok", vocab_size=3000, progress=False)
    init_model_dir(
        root / "mha", "tiny", tokenizer_dir=root / "tok", seed=1, num_hidden_layers=LAYERS
    )
    init_model_dir(
        root / "gqa",
        "tiny",
        tokenizer_dir=root / "tok",
        seed=2,
        num_hidden_layers=LAYERS,
        num_key_value_heads=2,
        norm_head=False,
    )
    return {name: root / name for name in ("mha", "gqa", "tok")} | {"root": root}


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def _tensors(reader: GGUFReader) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data) for t in reader.tensors}


def _pairs_to_halves(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's layout by index: within each head, interleaved row 2i is half-split
    row i and row 2i + 1 is row d/2 + i."""
    head_dim = weight.shape[0] // n_heads
    order = []
    for head in range(n_heads):
        base = head * head_dim
        order += [base + 2 * i for i in range(head_dim // 2)]
        order += [base + 2 * i + 1 for i in range(head_dim // 2)]
    return weight[order]


def test_metadata_and_tokenizer_read_back(models, tmp_path):
    out = export_gguf(models["mha"], tmp_path / "mha.gguf")
    reader = GGUFReader(out)
    config = json.loads((models["mha"] / "config.json").read_text())
    expected = {
        "general.architecture": "llama",
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": 128,
        "llama.block_count": LAYERS,
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.rope.dimension_count": 32,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 4,
        "llama.rope.freq_base": 10000.0,
        "llama.vocab_size": 3000,
        "general.file_type": 0,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    proto = load_proto(models["tok"])
    assert _field(reader, "tokenizer.ggml.tokens") == [p.piece for p in proto.pieces]
    assert np.allclose(_field(reader, "tokenizer.ggml.scores"), [p.score for p in proto.pieces])
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types == [p.type for p in proto.pieces]
    # Baichuan 2's chat markers are user-defined pieces 195 / 196; bytes are BYTE tokens
    assert types[195] == types[196] == TokenType.USER_DEFINED
    assert types[:3] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    assert sum(t == TokenType.BYTE for t in types) == 256
    space_prefix = _field(reader, "tokenizer.ggml.add_space_prefix")
    assert space_prefix == proto.normalizer_spec.add_dummy_prefix
    assert not list(tmp_path.glob(".*tmp*"))


def test_unpermuting_q_and_k_gives_back_chuans_tensors(models, tmp_path):
    for name, kv_heads in (("mha", 4), ("gqa", 2)):
        state = read_state_dict(models[name])
        tensors = _tensors(GGUFReader(export_gguf(models[name], tmp_path / f"{name}.gguf")))
        assert len(tensors) == 2 + 1 + 9 * LAYERS
        q_size, kv_size = 128, kv_heads * 32
        for i in range(LAYERS):
            w_pack = state[f"model.layers.{i}.self_attn.W_pack.weight"].numpy()
            q, k, v = np.split(w_pack, [q_size, q_size + kv_size])
            assert np.array_equal(_pairs_to_halves(tensors[f"blk.{i}.attn_q.weight"], 4), q)
            assert np.array_equal(_pairs_to_halves(tensors[f"blk.{i}.attn_k.weight"], kv_heads), k)
            assert not np.array_equal(tensors[f"blk.{i}.attn_q.weight"], q)
            assert np.array_equal(tensors[f"blk.{i}.attn_v.weight"], v)
            down = state[f"model.layers.{i}.mlp.down_proj.weight"].numpy()
            assert np.array_equal(tensors[f"blk.{i}.ffn_down.weight"], down)
        assert np.array_equal(tensors["token_embd.weight"], state["model.embed_tokens.weight"])
        head = state["lm_head.weight"]
        if name == "mha":  # NormHead folded: unit rows
            head = F.normalize(head, dim=-1)
        assert np.allclose(tensors["output.weight"], head.numpy(), atol=1e-7)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope_interleaved(x: np.ndarray, theta: float) -> np.ndarray:
    """Meta / llama.cpp RoPE: rotate adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d).
    `x` is [tokens, heads, head_dim]."""
    tokens, _, head_dim = x.shape
    angle = np.arange(tokens)[:, None] * theta ** (-np.arange(0, head_dim, 2) / head_dim)
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def llama_forward(
    reader: GGUFReader, tokens: list[int], tensors: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Logits of a GGUF `llama` model, in float64, from its metadata and tensors only
    (`tensors` replaces the file's tensors)."""
    w = {name: t.astype(np.float64) for name, t in (tensors or _tensors(reader)).items()}
    heads = _field(reader, "llama.attention.head_count")
    kv_heads = _field(reader, "llama.attention.head_count_kv")
    eps = _field(reader, "llama.attention.layer_norm_rms_epsilon")
    theta = _field(reader, "llama.rope.freq_base")
    h = w["token_embd.weight"][tokens]
    n, dim = h.shape
    head_dim = dim // heads
    future = np.triu(np.ones((n, n), dtype=bool), 1)
    for i in range(_field(reader, "llama.block_count")):
        x = _rms_norm(h, w[f"blk.{i}.attn_norm.weight"], eps)
        q = _rope_interleaved((x @ w[f"blk.{i}.attn_q.weight"].T).reshape(n, heads, -1), theta)
        k = _rope_interleaved((x @ w[f"blk.{i}.attn_k.weight"].T).reshape(n, kv_heads, -1), theta)
        v = (x @ w[f"blk.{i}.attn_v.weight"].T).reshape(n, kv_heads, -1)
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(head_dim)
        scores[:, future] = -np.inf
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        h = (
            h
            + np.einsum("hts,shd->thd", probs, v).reshape(n, dim)
            @ w[f"blk.{i}.attn_output.weight"].T
        )
        x = _rms_norm(h, w[f"blk.{i}.ffn_norm.weight"], eps)
        gate = x @ w[f"blk.{i}.ffn_gate.weight"].T
        h = (
            h
            + (gate / (1 + np.exp(-gate)) * (x @ w[f"blk.{i}.ffn_up.weight"].T))
            @ w[f"blk.{i}.ffn_down.weight"].T
        )
    return _rms_norm(h, w["output_norm.weight"], eps) @ w["output.weight"].T


@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_numpy_llama_forward_on_the_gguf_matches_chuan(models, tmp_path, name):
    reader = GGUFReader(export_gguf(models[name], tmp_path / f"{name}.gguf"))
    tokens = [
        1,
        *torch.randint(3, 3000, (23,), generator=torch.Generator().manual_seed(0)).tolist(),
    ]
    expected = llama_forward(reader, tokens)
    with torch.no_grad():
        logits = load_model(models[name], device="cpu")(input_ids=torch.tensor([tokens])).logits[0]
    assert np.abs(logits.numpy() - expected).max() < 1e-4 * np.abs(expected).max()
    # without the permutation the same forward is wrong: the check has teeth
    assert np.abs(logits.numpy() - _forward_with_halves(reader, tokens, name)).max() > 1e-2


def _forward_with_halves(reader: GGUFReader, tokens: list[int], name: str) -> np.ndarray:
    """The reference forward on q/k rows put back in the half-split layout."""
    heads = {"attn_q": 4, "attn_k": 4 if name == "mha" else 2}
    tensors = _tensors(reader)
    for key, tensor in tensors.items():
        kind = key.split(".")[2] if key.startswith("blk.") else ""
        if kind in heads:
            tensors[key] = _pairs_to_halves(tensor, heads[kind])
    return llama_forward(reader, tokens, tensors)


def test_f16_stores_matrices_in_f16_and_norms_in_f32(models, tmp_path):
    reader = GGUFReader(export_gguf(models["mha"], tmp_path / "f16.gguf", outtype="f16"))
    assert _field(reader, "general.file_type") == 1
    for tensor in reader.tensors:
        expected = GGMLQuantizationType.F16 if len(tensor.shape) == 2 else GGMLQuantizationType.F32
        assert tensor.tensor_type == expected, tensor.name
    f32 = _tensors(GGUFReader(export_gguf(models["mha"], tmp_path / "f32.gguf")))
    f16 = _tensors(reader)
    assert np.allclose(f16["blk.0.ffn_up.weight"], f32["blk.0.ffn_up.weight"], rtol=1e-3, atol=1e-6)


def test_refusals_are_clear(models, tmp_path):
    init_model_dir(
        tmp_path / "alibi", "tiny-alibi", tokenizer_dir=models["tok"], num_hidden_layers=1
    )
    with pytest.raises(ValueError, match="ALiBi"):
        export_gguf(tmp_path / "alibi", tmp_path / "alibi.gguf")
    quantize_dir(models["mha"], tmp_path / "q8", bits=8, progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        export_gguf(tmp_path / "q8", tmp_path / "q8.gguf")
    with pytest.raises(ValueError, match="outtype"):
        export_gguf(models["mha"], tmp_path / "x.gguf", outtype="q4_0")
    init_model_dir(tmp_path / "no-tok", "tiny", num_hidden_layers=1)
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        export_gguf(tmp_path / "no-tok", tmp_path / "no-tok.gguf")
    out = export_gguf(models["mha"], tmp_path / "m.gguf")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_gguf(models["mha"], out)
    assert export_gguf(models["gqa"], out, overwrite=True) == out
    assert _field(GGUFReader(out), "llama.attention.head_count_kv") == 2
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["m.gguf"]
