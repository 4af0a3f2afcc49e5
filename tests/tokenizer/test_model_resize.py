"""`resize_model`: old logits kept, new rows = means of their old-tokenizer decompositions.

The decompositions are recomputed here with SentencePiece directly and the means written out
row by row, independently of `resize.append_mean_rows`.
"""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
import torch

from chuan.model import BaichuanForCausalLM, preset_config
from chuan.model.checkpoint import read_state_dict
from chuan.tokenizer.expand import expand_tokenizer
from chuan.tokenizer.resize import resize_model
from chuan.tokenizer.spm import load_proto

PIECES = ["你好", "▁你好", "人工智能", "深度学习", "中国", "鬱"]  # 鬱 is not in LLaMA: 3 bytes
LLAMA_SIZE = 32000


@pytest.fixture(scope="module")
def llama(test_data):
    return test_data / "tokenizers" / "llama" / "tokenizer.model"


@pytest.fixture(scope="module")
def new_tokenizer(llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "expanded"
    expand_tokenizer(llama, out, pieces=PIECES)
    return out


def _model_dir(path, llama, *, dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=LLAMA_SIZE, **overrides)
    BaichuanForCausalLM(config).to(dtype).save_pretrained(path)
    (path / "tokenizer.model").write_bytes(llama.read_bytes())
    return path


@pytest.fixture(scope="module")
def resized(llama, new_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    model = _model_dir(root / "tiny", llama, norm_head=False)
    resize_model(model, new_tokenizer, root / "resized")
    return model, root / "resized"


def _logits(model_dir, ids):
    model = BaichuanForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _expected_rows(matrix, pieces, sp):
    """Mean of the old rows of each piece's ids, one piece at a time."""
    return torch.stack([matrix[sp.encode(piece)].float().mean(0) for piece in pieces])


def test_old_vocabulary_logits_unchanged(resized):
    old, new = resized
    ids = torch.randint(0, LLAMA_SIZE, (2, 12), generator=torch.Generator().manual_seed(1))
    before, after = _logits(old, ids), _logits(new, ids)
    assert after.shape[-1] == len(load_proto(new).pieces)
    torch.testing.assert_close(after[..., :LLAMA_SIZE], before, atol=1e-6, rtol=0)


def test_new_rows_are_means_of_the_decomposition(resized, new_tokenizer, llama):
    old, new = resized
    added = [p.piece for p in load_proto(new_tokenizer).pieces[LLAMA_SIZE:]]
    sp = spm.SentencePieceProcessor(model_file=str(llama))
    # The reference's quirk: the dummy prefix puts a lone "▁" (29871) first.
    assert sp.encode("你好") == [29871, 30919, 31076]
    assert sp.encode("鬱") == [29871, 236, 175, 180]  # byte fallback: 3 UTF-8 byte tokens
    before, after = read_state_dict(old), read_state_dict(new)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert after[key].shape[0] == LLAMA_SIZE + len(added)
        assert torch.equal(after[key][:LLAMA_SIZE], before[key])
        expected = _expected_rows(before[key], added, sp)
        torch.testing.assert_close(after[key][LLAMA_SIZE:], expected, atol=1e-7, rtol=0)
    embed, head = after["model.embed_tokens.weight"], after["lm_head.weight"]
    assert not torch.equal(embed[LLAMA_SIZE:], head[LLAMA_SIZE:])  # each from its own matrix


def test_config_and_tokenizer_updated(resized, new_tokenizer):
    _, new = resized
    config = json.loads((new / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == LLAMA_SIZE + len(PIECES) + 4  # 人工/智能, 深度/学习
    written = (new / "tokenizer.model").read_bytes()
    assert written == (new_tokenizer / "tokenizer.model").read_bytes()
    assert (new / "generation_config.json").is_file()


def test_exclude_dummy_prefix(llama, new_tokenizer, tmp_path):
    model = _model_dir(tmp_path / "tiny", llama, norm_head=False)
    resize_model(model, new_tokenizer, tmp_path / "out", exclude_dummy_prefix=True)
    before = read_state_dict(model)["model.embed_tokens.weight"]
    after = read_state_dict(tmp_path / "out")["model.embed_tokens.weight"]
    new_ids = {p.piece: i for i, p in enumerate(load_proto(new_tokenizer).pieces)}
    torch.testing.assert_close(after[new_ids["你好"]], before[[30919, 31076]].mean(0))
    # A piece that starts with "▁" keeps it: "▁你好" is ▁ + 你 + 好 either way.
    torch.testing.assert_close(after[new_ids["▁你好"]], before[[29871, 30919, 31076]].mean(0))


def test_norm_head_bf16_means_of_raw_rows(llama, new_tokenizer, tmp_path):
    model = _model_dir(tmp_path / "tiny", llama, dtype=torch.bfloat16, norm_head=True)
    resize_model(model, new_tokenizer, tmp_path / "out")
    before, after = read_state_dict(model), read_state_dict(tmp_path / "out")
    head = after["lm_head.weight"]
    assert head.dtype == torch.bfloat16
    sp = spm.SentencePieceProcessor(model_file=str(llama))
    added = [p.piece for p in load_proto(new_tokenizer).pieces[LLAMA_SIZE:]]
    expected = _expected_rows(before["lm_head.weight"], added, sp).to(torch.bfloat16)
    assert torch.equal(head[LLAMA_SIZE:], expected)  # raw rows, computed in fp32, then cast
    ids = torch.tensor([[1, 450, 4996, 17354, 1701, 29916]])
    old_logits, new_logits = _logits(model, ids), _logits(tmp_path / "out", ids)
    assert torch.equal(new_logits[..., :LLAMA_SIZE], old_logits)


def test_tied_embeddings_resize_one_matrix(llama, new_tokenizer, tmp_path):
    model = _model_dir(tmp_path / "tiny", llama, norm_head=False, tie_word_embeddings=True)
    resize_model(model, new_tokenizer, tmp_path / "out")
    resized = BaichuanForCausalLM.from_pretrained(tmp_path / "out")
    assert resized.lm_head.weight.data_ptr() == resized.model.embed_tokens.weight.data_ptr()
    assert resized.config.vocab_size == len(load_proto(new_tokenizer).pieces)


def test_not_an_extension_is_refused(llama, resized, tmp_path):
    proto = load_proto(llama)
    proto.pieces[1000].piece = "不是"
    proto.pieces.add(piece="你好")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="id 1000 is '不是' there but 'ied'"):
        resize_model(resized[0], tmp_path / "bad", tmp_path / "out")
    with pytest.raises(ValueError, match="not an expansion"):
        resize_model(resized[0], llama, tmp_path / "out")
    assert not (tmp_path / "out").exists()
