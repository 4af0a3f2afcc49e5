"""Vocabulary expansion: base behaviour kept, added pieces reachable, Chinese compressed.

References: the LLaMA tokenizer itself (ids before expansion), llama.cpp's 47 tokenizer cases
(golden ids), and SentencePiece, which encodes every result independently of chuan's own
simulation of its BPE.
"""

from __future__ import annotations

import json
import re

import pytest
import sentencepiece as spm

from chuan.tokenizer.expand import (
    REPORT_FILE,
    ReachableVocab,
    expand_tokenizer,
    isolating_processor,
    read_pieces,
)
from chuan.tokenizer.spm import load_proto

ADD = 6000
HAN = re.compile("[\u4e00-\u9fff]")


def _bible_chinese(test_data) -> list[str]:
    path = test_data / "text" / "parallel" / "bible_kjv_cuvs_wenli.tsv"
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [cells[2] for cells in (r.split("\t") for r in rows) if cells[2]]


def _poems(test_data, name: str) -> list[str]:
    path = test_data / "text" / "zh_classical" / "chinese_poetry" / name
    return ["".join(p["paragraphs"]) for p in json.loads(path.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def corpus(test_data, tmp_path_factory):
    """(training file, held-out lines): disjoint Bible verses and Song ci, plus the Analects."""
    bible, ci = _bible_chinese(test_data), _poems(test_data, "ci.song.0.json")
    train = bible[:4000] + ci[:900] + _poems(test_data, "lunyu.json")  # 0.68 MB
    path = tmp_path_factory.mktemp("corpus") / "zh.txt"
    path.write_text("\n".join(train) + "\n", encoding="utf-8")
    return path, bible[-1000:] + ci[900:]


@pytest.fixture(scope="module")
def expanded(corpus, test_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "expanded"
    report = expand_tokenizer(
        test_data / "tokenizers" / "llama", out, train_on=[corpus[0]], add=ADD
    )
    return out, report


@pytest.fixture(scope="module")
def llama(test_data):
    return test_data / "tokenizers" / "llama" / "tokenizer.model"


def test_report_counts_the_total_added(expanded):
    out, report = expanded
    assert report.base_size == 32000
    assert report.added_requested + report.added_for_reachability == ADD
    assert report.final_size == 32000 + ADD == len(load_proto(out).pieces)
    assert report.failed == []
    assert json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))["final_size"] == 32000 + ADD


def test_base_pieces_and_ids_unchanged(expanded, llama):
    base, new = load_proto(llama).pieces, load_proto(expanded[0]).pieces
    assert [(p.piece, p.score, p.type) for p in new[:32000]] == [
        (p.piece, p.score, p.type) for p in base
    ]
    added = new[32000:]
    assert all(p.type == p.NORMAL for p in added)
    assert [len(p.piece) for p in added] == sorted(len(p.piece) for p in added)
    # Added pieces outrank every base merge and have distinct scores (no position ties).
    assert min(p.score for p in added) > max(p.score for p in base if p.type == p.NORMAL)
    assert len({p.score for p in added}) == ADD


def test_english_encodes_exactly_as_before(expanded, llama, test_data):
    old = spm.SentencePieceProcessor(model_file=str(llama))
    new = spm.SentencePieceProcessor(model_file=str(expanded[0] / "tokenizer.model"))
    english = (test_data / "text" / "en" / "botchan.txt").read_text(encoding="utf-8")
    for paragraph in english.split("\n\n")[:400]:
        assert new.encode(paragraph) == old.encode(paragraph)
    # llama.cpp's golden cases, except the two that contain Chinese.
    vocab = test_data / "tokenizers" / "llama" / "ggml-vocab-llama-spm.gguf"
    texts = vocab.with_suffix(".gguf.inp").read_text(encoding="utf-8")
    cases = texts.split("\n__ggml_vocab_test__\n")
    golden = vocab.with_suffix(".gguf.out").read_text(encoding="utf-8").splitlines()
    checked = 0
    for text, ids in zip(cases, golden, strict=False):  # the .inp ends with a separator
        if not HAN.search(text):
            assert new.encode(text) == [int(i) for i in ids.split()], text
            checked += 1
    assert checked == len(golden) - 2


def test_every_added_piece_is_one_token(expanded):
    proto = load_proto(expanded[0])
    sp = isolating_processor(proto)  # the piece alone, without the dummy prefix
    for i in range(32000, len(proto.pieces)):
        assert sp.encode(proto.pieces[i].piece) == [i], proto.pieces[i].piece


def test_chinese_tokens_per_character_fall_by_40_percent(expanded, corpus, llama):
    old = spm.SentencePieceProcessor(model_file=str(llama))
    new = spm.SentencePieceProcessor(model_file=str(expanded[0] / "tokenizer.model"))
    held_out = corpus[1]
    chars = sum(len(line) for line in held_out)
    before = sum(len(ids) for ids in old.encode(held_out)) / chars
    after = sum(len(ids) for ids in new.encode(held_out)) / chars
    assert after <= 0.6 * before, (before, after)


def test_fast_hf_tokenizer_agrees_with_sentencepiece(expanded, corpus):
    """Distinct scores let a merge-rank BPE reproduce SentencePiece on the added pieces."""
    from transformers import AutoTokenizer

    import chuan.tokenizer.hf  # noqa: F401  (registers the tokenizer classes)

    fast = AutoTokenizer.from_pretrained(expanded[0])
    sp = spm.SentencePieceProcessor(model_file=str(expanded[0] / "tokenizer.model"))
    for line in corpus[1][:200]:
        assert fast.encode(line, add_special_tokens=False) == sp.encode(line), line


def test_intermediates_make_a_lone_piece_reachable(llama, tmp_path):
    # Colossal's plain append: 人工智能 with score 0 and no intermediates is never built.
    plain = load_proto(llama)
    plain.pieces.add(piece="人工智能", score=0.0)
    assert len(isolating_processor(plain).encode("人工智能")) > 1

    report = expand_tokenizer(llama, tmp_path / "ai", pieces=["人工智能"])
    assert (report.added_requested, report.added_for_reachability, report.failed) == (1, 2, [])
    proto = load_proto(tmp_path / "ai")
    assert [p.piece for p in proto.pieces[32000:]] == ["人工", "智能", "人工智能"]
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "ai" / "tokenizer.model"))
    assert sp.encode("人工智能", out_type=str) == ["▁", "人工智能"]  # dummy prefix, as LLaMA
    assert isolating_processor(proto).encode("人工智能", out_type=str) == ["人工智能"]


def test_a_crossing_merge_is_repaired(llama):
    """度学 outranks 深度/学习 and steals the middle; 深度学 is added so 深度学习 still forms.

    Hand trace of 深 度 学 习: 度学 merges first (highest rank), leaving 深|度学|习 with no
    piece for either pair; the shorter-first, leftmost repair adds 深度学 (rank below all),
    after which 深度学 + 习 = 深度学习. 深度学 alone: 度学, then 深 + 度学.
    """
    vocab = ReachableVocab(load_proto(llama))
    assert [vocab.require(p) for p in ["度学", "深度", "学习"]] == [["度学"], ["深度"], ["学习"]]
    assert vocab.require("深度学习") == ["深度学习", "深度学"]
    assert vocab.encode("深度学习") == ["深度学习"]
    vocab.rollback()
    assert vocab.added == ["度学", "深度", "学习"]
    assert vocab.encode("深度学习") == ["深", "度学", "习"]


def test_simulation_matches_sentencepiece_on_the_base(llama, test_data):
    vocab = ReachableVocab(load_proto(llama))
    sp = isolating_processor(load_proto(llama))
    words = (test_data / "text" / "en" / "botchan.txt").read_text(encoding="utf-8").split()
    for word in words[:3000]:
        text = "▁" + word
        assert vocab.encode(text) == sp.encode(text, out_type=str), word


def test_pieces_file_order_dedup_and_errors(tmp_path, llama):
    path = tmp_path / "pieces.jsonl"
    lines = ['{"piece": "学习"}', '{"piece": "你"}', "", '{"piece": "学习"}', '{"piece": "▁the"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_pieces(path) == ["学习", "你", "▁the"]
    report = expand_tokenizer(llama, tmp_path / "out", pieces=path)
    assert (report.added_requested, report.requested_already_in_base) == (1, 2)  # 你, ▁the exist
    path.write_text('{"piece": "学习"}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pieces.jsonl:2: expected a JSON object"):
        read_pieces(path)
    with pytest.raises(ValueError, match="exactly one of pieces or train_on"):
        expand_tokenizer(llama, tmp_path / "x", pieces=["学习"], train_on=[path], add=5)
    with pytest.raises(ValueError, match="add"):
        expand_tokenizer(llama, tmp_path / "x", pieces=["学习"], add=5)
