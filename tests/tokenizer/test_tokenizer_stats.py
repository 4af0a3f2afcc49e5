"""`chuan.tokenizer.stats` against counts worked out by hand and with sentencepiece directly."""

from __future__ import annotations

import json
import os
import re

import pytest
import sentencepiece as spm

from chuan.tokenizer.stats import (
    detect_language,
    read_json,
    render_summary,
    render_table,
    tokenizer_stats,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@pytest.fixture
def llama(test_data):
    return test_data / "tokenizers" / "llama" / "tokenizer.model"


@pytest.fixture
def chinese_llama(test_data):
    return test_data / "tokenizers" / "chinese_llama" / "chinese_llama2_tokenizer.model"


@pytest.fixture
def tiny_texts(tmp_path):
    """Two short files; their LLaMA-2 encodings (no BOS) were written out piece by piece:

    "Hello world"  -> ▁Hello ▁world                 2 tokens, 11 chars
    "The cat sat." -> ▁The ▁cat ▁sat .              4 tokens, 12 chars
    "你好，世界"     -> ▁ 你 好 ， 世 界             6 tokens, 5 chars, 15 bytes
    "𠀀" (U+20000) -> ▁ <0xF0> <0xA0> <0x80> <0x80>  5 tokens, 1 char, 4 bytes, 4 byte pieces
    """
    en = tmp_path / "en.txt"
    en.write_text("Hello world\n\nThe cat sat.\n", encoding="utf-8")
    zh = tmp_path / "zh.txt"
    zh.write_text("你好，世界\n\U00020000\n", encoding="utf-8")
    return en, zh


def test_hand_counted_llama_numbers(llama, tiny_texts):
    en, zh = tiny_texts
    report = tokenizer_stats([llama], [f"en={en}", f"zh={zh}"])
    assert report.tokenizers == ["tokenizer"]  # the file stem
    assert report.languages == ["en", "zh"]

    row = report.row("tokenizer", "en")
    assert (row.vocab_size, row.characters, row.utf8_bytes, row.tokens) == (32000, 23, 23, 6)
    assert (row.byte_tokens, row.distinct_ids, row.relative_to_first) == (0, 6, 1.0)
    assert row.tokens_per_1k_chars == pytest.approx(1000 * 6 / 23)
    assert row.chars_per_token == pytest.approx(23 / 6)

    row = report.row("tokenizer", "zh")
    assert (row.characters, row.utf8_bytes, row.tokens, row.byte_tokens) == (6, 19, 11, 4)
    # ▁ 你 好 ， 世 界 <0xF0> <0xA0> <0x80>: the repeated <0x80> counts once.
    assert row.distinct_ids == 9
    assert row.byte_fallback_rate == pytest.approx(4 / 11)
    assert row.bytes_per_token == pytest.approx(19 / 11)
    assert row.vocab_share == pytest.approx(9 / 32000)

    table = render_table(report)
    assert (
        "| zh | tokenizer | 32,000 | 11 | 1833.3 | 0.545 | 1.727 | 1.000 | 36.36% | 0.0% |" in table
    )
    assert "| en | tokenizer | 32,000 | 6 | 260.9 | 3.833 | 3.833 | 1.000 | 0.00% | 0.0% |" in table
    summary = render_summary(report).splitlines()
    assert summary[0] == "| tokenizer | vocab | en tokens_per_1k_chars | zh tokens_per_1k_chars |"
    assert summary[2] == "| tokenizer | 32,000 | 260.9 | 1833 |"


def sentencepiece_counts(model, lines):
    """Tokens and byte pieces counted from piece strings, independently of the module."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = [p for line in lines for p in sp.encode(line, out_type=str)]
    return len(pieces), sum(bool(BYTE_PIECE.fullmatch(p)) for p in pieces)


def test_real_text_against_sentencepiece(test_data, llama, chinese_llama, tmp_path):
    tsv = (test_data / "text" / "parallel" / "bible_kjv_cuvs_wenli.tsv").read_text("utf-8")
    verses = [line.split("\t") for line in tsv.splitlines()[1:301]]
    texts = {}
    for lang, column in (("en", 1), ("zh", 2)):
        texts[lang] = [tmp_path / f"{lang}.txt"]
        texts[lang][0].write_text("\n".join(v[column] for v in verses if v[column]), "utf-8")

    report = tokenizer_stats([f"llama2={llama}", f"cl2={chinese_llama}"], texts)
    for lang in ("en", "zh"):
        lines = [line for line in texts[lang][0].read_text("utf-8").splitlines() if line]
        base_tokens, base_bytes = sentencepiece_counts(llama, lines)
        cl2_tokens, cl2_bytes = sentencepiece_counts(chinese_llama, lines)
        base, cl2 = report.row("llama2", lang), report.row("cl2", lang)
        assert (base.tokens, base.byte_tokens) == (base_tokens, base_bytes)
        assert (cl2.tokens, cl2.byte_tokens) == (cl2_tokens, cl2_bytes)
        assert base.characters == cl2.characters == sum(map(len, lines))
        assert base.relative_to_first == 1.0
        assert cl2.relative_to_first == pytest.approx(cl2_tokens / base_tokens)
    # Chinese-LLaMA-2's additions are Chinese: it must compress the Chinese verses clearly.
    assert report.row("cl2", "zh").relative_to_first < 0.8
    assert report.row("llama2", "zh").byte_fallback_rate > 0


def test_language_detection_and_names(test_data, llama, tmp_path):
    debian_zh = test_data / "text" / "zh_modern" / "debian-reference.zh-cn.txt"
    debian_en = test_data / "text" / "en" / "debian-reference.en.txt"
    assert detect_language(debian_zh.read_text("utf-8")) == "zh"  # 26% Han chars, 50% of letters
    assert detect_language(debian_en.read_text("utf-8")) == "en"
    assert detect_language("make install 目录") == "en"  # 2 of 13 letters are Han
    assert detect_language("安装 make") == "zh"  # 2 of 6 letters: just above the 30% cut

    zh = tmp_path / "zh.txt"
    zh.write_text("起初，神创造天地。\n", "utf-8")
    en = tmp_path / "en.txt"
    en.write_text("In the beginning God created the heaven and the earth.\n", "utf-8")
    tok_dir = tmp_path / "llama-2"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.model").write_bytes(llama.read_bytes())
    report = tokenizer_stats([tok_dir, f"other={llama}"], [zh, en])
    assert report.languages == ["zh", "en"]
    assert report.tokenizers == ["llama-2", "other"]
    assert report.texts == {"zh": [str(zh)], "en": [str(en)]}


def test_json_and_png_outputs(llama, tiny_texts, tmp_path):
    en, zh = tiny_texts
    out = tmp_path / "out"
    report = tokenizer_stats(
        [f"a={llama}", f"b={llama}"],
        {"en": [en], "zh": [zh]},
        json_out=out / "stats.json",
        png_out=out / "stats.png",
    )
    assert read_json(out / "stats.json") == report
    data = json.loads((out / "stats.json").read_text("utf-8"))
    assert data["rows"][0]["tokens_per_1k_chars"] == pytest.approx(1000 * 6 / 23)
    png = (out / "stats.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "stats.png"]  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in out.iterdir()} == {0o666 & ~umask}
    plain = render_table(report, "plain").splitlines()
    assert plain[0].split()[:3] == ["language", "tokenizer", "vocab"]
    assert plain[1].split()[:5] == ["en", "a", "32,000", "6", "260.9"]


def test_errors_name_the_problem(llama, tiny_texts, tmp_path):
    en, _ = tiny_texts
    with pytest.raises(ValueError, match=r"tokenizer names \['tokenizer'\] repeat"):
        tokenizer_stats([llama, llama], [en])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tokenizer_stats([llama], {"en": [tmp_path / "missing.txt"]})
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        tokenizer_stats([tmp_path], [en])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(byte 3\)"):
        tokenizer_stats([llama], {"en": [bad]})
