"""`train_tokenizer`: Baichuan 2 settings and layout, lossless round trips, seeded sampling."""

from __future__ import annotations

import heapq
import inspect
import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from chuan.documents import Document, RecordError
from chuan.tokenizer.spm import load_proto, load_sentencepiece
from chuan.tokenizer.train import (
    USER_DEFINED_SYMBOLS,
    WeightedReservoir,
    sample_training_sentences,
    train_tokenizer,
    training_lines,
)
from helpers.corpus import write_jsonl

Type = sp_pb2.ModelProto.SentencePiece.Type
VOCAB = 4000
SAMPLE = 4000


@pytest.fixture(scope="module")
def corpus(test_data, tmp_path_factory) -> Path:
    """A small bilingual corpus with categories: Bible verses, Tatoeba pairs, Python source."""
    text = test_data / "text" / "parallel"
    verses = [
        line.split("\t")
        for line in (text / "bible_kjv_cuvs_wenli.tsv").read_text("utf-8").split("\n")[1:801]
    ]
    pairs = [
        line.split("\t")
        for line in (text / "tatoeba_cmn_eng.txt").read_text("utf-8-sig").split("\n")[:1500]
    ]
    # Chapters as documents: many lines each, as in real corpora.
    zh = ["\n".join(v[2] for v in verses[i : i + 20]) for i in range(0, 800, 20)]
    en = ["\n".join(v[1] for v in verses[i : i + 20]) for i in range(0, 800, 20)]
    lzh = ["\n".join(v[3] for v in verses[i : i + 20]) for i in range(0, 800, 20)]
    code = [inspect.getsource(m) for m in (textwrap, heapq, json.encoder)]
    out = tmp_path_factory.mktemp("corpus")
    write_jsonl(
        out / "bible.jsonl",
        [{"text": t, "category": "zh"} for t in zh]
        + [{"text": t, "category": "en"} for t in en]
        + [{"text": t, "category": "lzh"} for t in lzh],
    )
    write_jsonl(out / "code.jsonl", [{"text": t, "category": "code"} for t in code])
    (out / "tatoeba.txt").write_text("\n".join(f"{p[0]}\n{p[1]}" for p in pairs), "utf-8")
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(
        [corpus],
        out,
        vocab_size=VOCAB,
        sample_sentences=SAMPLE,
        seed=1,
        category_weights={"code": 2.0},
        num_threads=2,
        progress=False,
    )
    return out


def test_proto_carries_the_baichuan2_settings(trained):
    proto = load_proto(trained)
    t, n = proto.trainer_spec, proto.normalizer_spec
    assert t.model_type == sp_pb2.TrainerSpec.BPE
    assert t.vocab_size == VOCAB and len(proto.pieces) == VOCAB
    assert n.name == "identity" and n.precompiled_charsmap == b""
    assert n.add_dummy_prefix is False and n.remove_extra_whitespaces is False
    assert t.split_digits and t.byte_fallback and t.allow_whitespace_only_pieces
    assert t.character_coverage == pytest.approx(0.9999)
    assert t.max_sentencepiece_length == 32
    assert (t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (0, 1, 2, -1)
    # Run-specific fields are cleared: no temp paths, no thread count.
    assert not t.input and not t.HasField("model_prefix") and not t.HasField("num_threads")


def test_piece_layout(trained):
    pieces = load_proto(trained).pieces
    assert [(p.piece, p.type) for p in pieces[:3]] == [
        ("<unk>", Type.UNKNOWN),
        ("<s>", Type.CONTROL),
        ("</s>", Type.CONTROL),
    ]
    # SentencePiece puts user-defined symbols at 3, 4, ... in the order given, before the bytes.
    assert [p.piece for p in pieces[3:256]] == list(USER_DEFINED_SYMBOLS)
    assert all(p.type == Type.USER_DEFINED for p in pieces[3:256])
    assert (pieces[3].piece, pieces[10].piece) == ("\n", "\n" * 8)
    assert (pieces[27].piece, pieces[57].piece) == ("▁▁", "▁" * 32)
    assert (pieces[88].piece, pieces[89].piece) == ("\n" + "▁" * 31, "<reserved_0>")
    assert (pieces[195].piece, pieces[196].piece) == ("<reserved_106>", "<reserved_107>")
    assert pieces[255].piece == "<reserved_166>"
    assert [(p.piece, p.type) for p in pieces[256:512]] == [
        (f"<0x{b:02X}>", Type.BYTE) for b in range(256)
    ]
    assert all(p.type == Type.NORMAL for p in pieces[512:])
    # split_digits: a learned piece holding a digit is that digit alone.
    assert all(len(p.piece) == 1 for p in pieces[512:] if any(c.isdigit() for c in p.piece))


ROUND_TRIPS = [
    "起初，　神创造天地。地是空虚混沌，渊面黑暗；　神的灵运行在水面上。",
    "And God said, Let there be light: and there was light.",
    "元始、上帝創造天地、地乃虛曠",
    "def wrap(text, width=70):\n\tif not text:\n\t\treturn  []\n    # two  spaces\t\n\n\n",
    "  leading and trailing spaces  \r\nand a CRLF",
    "2024年5月17日，π ≈ 3.14159，电话 010-12345678",
    "emoji 😀👍🏽 and rare 𠀋𪚥 characters",
    "<reserved_106>你好<reserved_107>",
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_decode_encode_round_trip(trained, text):
    sp = load_sentencepiece(trained)
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert sp.unk_id() not in ids


def test_digits_are_single_pieces(trained):
    sp = load_sentencepiece(trained)
    assert sp.encode("1234567890", out_type=str) == list("1234567890")


def test_unseen_characters_fall_back_to_their_utf8_bytes(trained):
    sp = load_sentencepiece(trained)
    for text in ("😀", "𠀋𪚥", "👍🏽"):
        assert sp.encode(text) == [256 + b for b in text.encode("utf-8")]


def test_whitespace_runs_are_single_pieces(trained):
    sp = load_sentencepiece(trained)
    assert sp.encode("\n    ", out_type=str) == ["\n▁▁▁▁"]
    assert sp.encode("\t\t\t", out_type=str) == ["\t\t\t"]
    assert sp.encode("\n\n", out_type=str) == ["\n\n"]
    assert sp.encode(" " * 40, out_type=str) == ["▁" * 32, "▁" * 8]  # longest match first
    assert sp.encode("<reserved_106>") == [195]


def test_report_counts_every_line(trained, corpus):
    report = json.loads((trained / "train_report.json").read_text("utf-8"))
    cats = report["categories"]
    assert set(cats) == {"(none)", "code", "en", "lzh", "zh"}
    # Tatoeba: one document per line of the .txt file, 1,500 pairs = 3,000 lines.
    assert cats["(none)"]["documents"] == 3000 and cats["(none)"]["sentences_seen"] == 3000
    for c in ("zh", "en"):  # 40 chapters of 20 verses, none empty
        assert cats[c]["documents"] == 40 and cats[c]["sentences_seen"] == 800
    assert cats["code"]["documents"] == 3
    assert sum(c["sentences_sampled"] for c in cats.values()) == SAMPLE
    assert all(c["sentences_sampled"] <= c["sentences_seen"] for c in cats.values())
    assert report["settings"]["split_digits"] is True and report["vocab_size"] == VOCAB
    assert report["layout"]["user_token_id"] == 195


def test_same_seed_gives_identical_tokenizer_bytes(trained, corpus, tmp_path):
    """Even with another thread count: SentencePiece's BPE result does not depend on it."""
    again = tmp_path / "again"
    train_tokenizer(
        [corpus],
        again,
        vocab_size=VOCAB,
        sample_sentences=SAMPLE,
        seed=1,
        category_weights={"code": 2.0},
        num_threads=1,
        progress=False,
    )
    assert (again / "tokenizer.model").read_bytes() == (trained / "tokenizer.model").read_bytes()


def _docs(category: str, n: int) -> list[Document]:
    return [Document(f"{category} {i}", category, "mem", i) for i in range(n)]


def test_weight_w_draws_an_item_w_times_as_often():
    """With one slot, A-ES picks item i with probability w_i / sum(w): here 3/4."""
    trials = 4000
    wins = 0
    for seed in range(trials):
        reservoir = WeightedReservoir(1, seed)
        reservoir.offer("light", 1.0)
        reservoir.offer("heavy", 3.0)
        wins += reservoir.items() == ["heavy"]
    # Binomial(4000, 0.75): mean 3000, sd 27.4; 4 sd either side.
    assert abs(wins - 3000) < 110


def test_category_weights_change_the_sample_proportions():
    docs = _docs("web", 5000) + _docs("code", 5000)
    plain = sample_training_sentences(docs, size=500, seed=7)
    weighted = sample_training_sentences(docs, size=500, seed=7, category_weights={"code": 3.0})
    # Equal weights: half each; code weighted 3: three quarters (sd ~11 for 500 draws).
    assert abs(plain.sampled["code"] - 250) < 45
    assert abs(weighted.sampled["code"] - 375) < 45
    assert weighted.seen == Counter({"web": 5000, "code": 5000})
    assert sum(weighted.sampled.values()) == len(weighted.sentences) == 500


def test_sampling_is_seeded_and_keeps_corpus_order():
    docs = _docs("web", 2000)
    a = sample_training_sentences(docs, size=100, seed=1).sentences
    assert a == sample_training_sentences(docs, size=100, seed=1).sentences
    assert a != sample_training_sentences(docs, size=100, seed=2).sentences
    assert a == sorted(a, key=lambda s: int(s.split()[1]))
    everything = sample_training_sentences(docs, size=5000, seed=1).sentences
    assert everything == [d.text for d in docs]


def test_bad_category_weight_is_refused():
    with pytest.raises(ValueError, match="'code' must be positive"):
        sample_training_sentences(_docs("code", 3), size=2, category_weights={"code": 0.0})


def test_split_sentences():
    text = "first\r\n\n  \n一二三四五\nend"
    assert training_lines(text, 100) == ["first", "一二三四五", "end"]
    # 10 bytes hold three 3-byte characters; cuts never split a character.
    assert training_lines("一二三四五ab", 10) == ["一二三", "四五ab"]
    assert training_lines("ab一二三", 4) == ["ab", "一", "二", "三"]


def test_vocab_size_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="vocab_size=600 is too small.*at least 768"):
        train_tokenizer([corpus], tmp_path / "a", vocab_size=600, progress=False)
    # 3,000 characters cannot fit in 1,000 pieces: the error names the size that fits.
    with pytest.raises(ValueError, match="vocab_size=1000 is too small.*at least [0-9]+ pieces"):
        train_tokenizer([corpus], tmp_path / "b", vocab_size=1000, progress=False)
    assert not (tmp_path / "b").exists()


def test_existing_output_and_bad_input_stop_before_training(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        train_tokenizer([corpus], out, vocab_size=VOCAB, progress=False)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"txt": "typo"}])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: field 'text': missing"):
        train_tokenizer([bad], tmp_path / "new", vocab_size=VOCAB, progress=False)
