"""`chuan data clean` on real text: every rule keeps a real document (or line) and drops a
realistic corruption of one; the stage drops injected junk, keeps real documents, counts add up,
resumes, and keeps every input field."""

from __future__ import annotations

import base64
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest

from chuan.config import ConfigError, load_config
from chuan.data import rules
from chuan.data.clean import (
    CleanConfig,
    all_rule_names,
    clean_corpus,
    clean_lines,
    judge,
    rule_sets,
    to_simplified,
)
from chuan.data.langid import HAN, identify
from chuan.data.shards import output_records, read_jsonl_zst

EN, ZH = rules.EnglishRules(), rules.ChineseRules()
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# ------------------------------------------------------------------------------------------------
# Real documents from tests/data/text


@pytest.fixture(scope="module")
def bible(test_data) -> dict[str, list[str]]:
    """Bible chapters, one verse per line: `en` (KJV) and `zh` (和合本, Simplified)."""
    chapters: dict[str, dict] = {"en": defaultdict(list), "zh": defaultdict(list)}
    path = test_data / "text" / "parallel" / "bible_kjv_cuvs_wenli.tsv"
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        ref, en, zh, _ = line.split("\t")
        chapter = ref.rsplit(":", 1)[0]
        for lang, verse in (("en", en), ("zh", zh)):
            if verse:
                chapters[lang][chapter].append(verse)
    return {lang: ["\n".join(v) for v in c.values()] for lang, c in chapters.items()}


@pytest.fixture(scope="module")
def wiki(test_data) -> list[str]:
    """Wikipedia paragraphs: each article cut at sentence ends into ~2,000-character pieces."""
    pieces = []
    for article in (test_data / "text" / "en" / "wiki_demo.txt").read_text("utf-8").splitlines():
        current = ""
        for sentence in re.split(r"(?<=[.!?])\s+", article):
            current = f"{current} {sentence}".strip()
            if len(current) >= 2000:
                pieces.append(current)
                current = ""
    return pieces


@pytest.fixture(scope="module")
def guwen(test_data) -> list[str]:
    """古文观止 essays (classical Chinese), paragraphs one per line."""
    path = test_data / "text" / "zh_classical" / "chinese_poetry" / "guwenguanzhi.json"
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "paragraphs" in node:
                found.append("\n".join(node["paragraphs"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(path.read_text(encoding="utf-8")))
    return found


def debian_sections(test_data: Path, name: str) -> list[str]:
    """Numbered sections (`1.2.3.`) of a Debian Reference text, table of contents left out."""
    text = (test_data / "text" / name).read_text(encoding="utf-8")
    return re.split(r"\n(?=\d+\.\d+\.\d+\.\s\S)", text)[1:]


@pytest.fixture(scope="module")
def debian_en(test_data) -> list[str]:
    return debian_sections(test_data, "en/debian-reference.en.txt")


@pytest.fixture(scope="module")
def debian_zh(test_data) -> list[str]:
    return debian_sections(test_data, "zh_modern/debian-reference.zh-cn.txt")


@pytest.fixture(scope="module")
def gen(bible) -> str:
    """Genesis 3 (KJV), 24 verses."""
    return bible["en"][2]


@pytest.fixture(scope="module")
def chuang(bible) -> str:
    """创世记 3 (和合本)."""
    return bible["zh"][2]


def keeps_and_drops(rule, cfg, kept: str, dropped: str, **dropped_kw) -> None:
    assert rule(rules.Doc(kept), cfg) is None, rule(rules.Doc(kept), cfg)
    assert rule(rules.Doc(dropped, **dropped_kw), cfg) is not None


# ------------------------------------------------------------------------------------------------
# Generic rules (every language)


def test_mixed_alnum_words(gen, debian_en):
    import hashlib

    hashes = "\n".join(  # a checksum listing
        f"{hashlib.md5(v.encode()).hexdigest()}  {hashlib.sha1(v.encode()).hexdigest()[:12]}"
        for v in gen.splitlines()
    )
    generic = rules.GenericRules()
    keeps_and_drops(rules.mixed_alnum_words, generic, gen, hashes)
    assert sum(rules.mixed_alnum_words(rules.Doc(d), generic) is None for d in debian_en) > 0.97 * (
        len(debian_en)
    )


def test_min_letters(gen):
    digits = "\n".join(
        " ".join(str(len(w) * 97 + i) for i, w in enumerate(line.split()))
        for line in gen.splitlines()
    )  # a table of numbers
    keeps_and_drops(rules.min_letters, rules.GenericRules(), gen, digits)


# ------------------------------------------------------------------------------------------------
# English document rules


def test_gopher_word_count(gen):
    first_verse = gen.splitlines()[0]
    keeps_and_drops(rules.gopher_word_count, EN, gen, first_verse)


def test_gopher_mean_word_length(gen):
    glued = "\n".join(line.replace(" ", "") for line in gen.splitlines())  # lost spaces
    keeps_and_drops(rules.gopher_mean_word_length, EN, gen, glued)


def test_gopher_hash_ratio(wiki):
    hashtags = " ".join(f"#{w}" if i % 3 == 0 else w for i, w in enumerate(wiki[0].split()))
    keeps_and_drops(rules.gopher_hash_ratio, EN, wiki[0], hashtags)


def test_gopher_ellipsis_ratio_and_lines(gen):
    teasers = "\n".join(" ".join(line.split()[:5]) + "..." for line in gen.splitlines())
    keeps_and_drops(rules.gopher_ellipsis_ratio, EN, gen, teasers)
    keeps_and_drops(rules.gopher_ellipsis_lines, EN, gen, teasers.replace("...", " …"))


def test_gopher_bullet_lines(gen, debian_en):
    listing = "\n".join(f"• {line}" for line in gen.splitlines())
    keeps_and_drops(rules.gopher_bullet_lines, EN, gen, listing)
    assert rules.gopher_bullet_lines(rules.Doc(debian_en[2]), EN) is None  # has some bullets


def test_gopher_alpha_words(gen):
    table = "\n".join(  # a statistics table: reference, then numbers
        f"3:{i} {len(v)} {len(v.split())} {v.count(',')} {i * 7 % 13}.{i % 10} 19{i:02d}"
        for i, v in enumerate(gen.splitlines(), 1)
    )
    keeps_and_drops(rules.gopher_alpha_words, EN, gen, table)


def test_gopher_stop_words(gen):
    words = {w.strip(",.:;?!'’") for w in gen.split()}
    names = {w for w in words if w[0].isupper() and w.lower() not in words}  # a tag list
    keeps_and_drops(rules.gopher_stop_words, EN, gen, " ".join(sorted(names) * 3))


def test_gopher_dup_lines(gen):
    doubled = "\n".join(line for line in gen.splitlines() for _ in range(2))
    keeps_and_drops(rules.gopher_dup_lines, EN, gen, doubled)


def test_gopher_dup_paragraphs(gen):
    paragraphs = gen.replace("\n", "\n\n")
    keeps_and_drops(rules.gopher_dup_paragraphs, EN, paragraphs, paragraphs + "\n\n" + paragraphs)


def test_gopher_top_ngrams(wiki):
    words = wiki[0].split()
    stuffed = " ".join(w + (" cheap flights" if i % 4 == 3 else "") for i, w in enumerate(words))
    keeps_and_drops(rules.gopher_top_ngrams, EN, wiki[0], stuffed)


def test_gopher_dup_ngrams(gen):
    keeps_and_drops(rules.gopher_dup_ngrams, EN, gen, gen + "\n" + gen)


def test_c4_lorem_ipsum(gen):
    lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."
    keeps_and_drops(rules.c4_lorem_ipsum, EN, gen, gen + "\n" + lorem)


def test_c4_curly_braces(gen):
    script = (
        "window.dataLayer = window.dataLayer || []; function gtag(){dataLayer.push(arguments);}"
    )
    keeps_and_drops(rules.c4_curly_braces, EN, gen, gen + "\n" + script)


def test_c4_min_sentences(wiki):
    three = " ".join(re.split(r"(?<=[.!?])\s+", wiki[0])[:3])
    keeps_and_drops(rules.c4_min_sentences, EN, wiki[0], three)


def test_fineweb_terminal_punct_lines(gen):
    titles = "\n".join(line.rstrip(".;:,?!") for line in gen.splitlines())  # a list of titles
    keeps_and_drops(rules.fineweb_terminal_punct_lines, EN, gen, titles)


def test_fineweb_short_lines(gen):
    import textwrap

    narrow = textwrap.fill(gen.replace("\n", " "), width=25)  # a narrow column, hard-wrapped
    keeps_and_drops(rules.fineweb_short_lines, EN, gen, narrow)


def test_fineweb_dup_line_chars(gen):
    lines = gen.splitlines()
    once_more = "\n".join([*lines, lines[5]])  # one verse pasted twice
    keeps_and_drops(rules.fineweb_dup_line_chars, EN, gen, once_more)


def test_fineweb_newlines_per_word(gen):
    words = gen.split()
    broken = "\n".join(" ".join(words[i : i + 2]) for i in range(0, len(words), 2))
    keeps_and_drops(rules.fineweb_newlines_per_word, EN, gen, broken)


NAV = ["Sign in", "Add to cart", "Items in cart: 0", "Home", "Share this", "12 | 345"]


def test_removed_words_from_line_pass(gen):
    en = rule_sets(CleanConfig())["en"]
    clean_text, kept_share, _ = clean_lines(gen, en, "en")
    assert clean_text == gen and kept_share == 0
    noisy = "\n".join(line + "\n" + NAV[i % len(NAV)] for i, line in enumerate(gen.splitlines()))
    _, removed_share, removed = clean_lines(noisy, en, "en")
    assert sum(removed.values()) == len(gen.splitlines())
    keeps_and_drops(rules.removed_words, EN, gen, gen, removed_share=removed_share)


# ------------------------------------------------------------------------------------------------
# English line rules


@pytest.mark.parametrize(
    "rule, junk",
    [
        (rules.line_javascript, "Please enable JavaScript to view the comments powered by Disqus."),
        (rules.line_policy, "This website uses cookies to improve your experience."),
        (rules.line_policy, "By using this site you agree to our Terms of Use and Privacy Policy."),
        (rules.line_boilerplate_en, "Sign in to read more"),
        (rules.line_boilerplate_en, "Items in cart: 0"),
        (rules.line_numeric, "2,345 | 17 | 2021"),
        (rules.line_too_few_words, "Share"),
        (rules.line_no_terminal_punct, "Home > News > Sports"),
    ],
)
def test_english_line_rules(rule, junk, gen, debian_en):
    for line in gen.splitlines() + [s for s in debian_en[2].splitlines() if len(s.split()) > 6]:
        if rule is rules.line_no_terminal_punct and not rules.ends_terminal(line.strip()):
            continue  # wrapped lines of the manual do not end sentences; that is the point
        assert not rule(line.strip(), EN), line
    assert rule(junk, EN)


def test_line_long_word(gen):
    blob = base64.b64encode(gen.encode()).decode()  # an inlined data: URI
    assert not any(rules.line_long_word(line, EN) for line in gen.splitlines())
    assert rules.line_long_word(f"src=data:image/png;base64,{blob}", EN)


def test_repeated_lines_and_citations(wiki, gen):
    lines = gen.splitlines()
    assert rules.repeated_lines(lines) == [False] * len(lines)
    flags = rules.repeated_lines([lines[0], "", lines[1], "", lines[0]])
    assert flags == [False, False, False, False, True]  # blank lines are never repeats
    sentence = re.split(r"(?<=[.!?])\s+", wiki[0])[0]
    marked = sentence[:-1] + "[1][citation needed]" + sentence[-1] + " [edit]"
    assert rules.strip_citations(marked).strip() == sentence
    assert rules.strip_citations(sentence) == sentence


# ------------------------------------------------------------------------------------------------
# Chinese document rules


def test_zh_length(chuang):
    keeps_and_drops(rules.zh_length, ZH, chuang, chuang.splitlines()[0])


def test_zh_mean_line_length(chuang):
    chars = chuang.replace("\n", "")
    menu = "\n".join(chars[i : i + 5] for i in range(0, len(chars), 5))
    keeps_and_drops(rules.zh_mean_line_length, ZH, chuang, menu)


def test_zh_han_share(chuang, debian_zh, debian_en):
    log = "\n".join(chuang.splitlines()[:2] + debian_en[0].splitlines())  # zh intro, en dump
    keeps_and_drops(rules.zh_han_share, ZH, chuang, log)
    assert rules.zh_han_share(rules.Doc(debian_zh[2]), ZH) is None


def test_zh_bracket_share(chuang):
    headlines = "\n".join(f"【{line[:12]}】{line}" for line in chuang.splitlines())
    keeps_and_drops(rules.zh_bracket_share, ZH, chuang, headlines)


def test_zh_digit_share(chuang):
    prices = "\n".join(
        f"{line[:4]} 2023-05-{i:02d} 13:{i:02d} ￥{i * 37.5:.2f} 库存{i * 1234}"
        for i, line in enumerate(chuang.splitlines(), 1)
    )
    keeps_and_drops(rules.zh_digit_share, ZH, chuang, prices)


def test_zh_readmore_lines(chuang):
    teasers = "\n".join(line[:12] + "…展开" for line in chuang.splitlines())
    keeps_and_drops(rules.zh_readmore_lines, ZH, chuang, teasers)


def test_zh_bullet_lines(chuang):
    listing = "\n".join(f"· {line}" for line in chuang.splitlines())
    keeps_and_drops(rules.gopher_bullet_lines, ZH, chuang, listing)


def test_zh_punctuation(chuang):
    bare = rules.ZH_PUNCTUATION.sub("", chuang)
    keeps_and_drops(rules.zh_punctuation, ZH, chuang, bare)


def test_zh_distinct_chars(chuang):
    spam = (chuang.splitlines()[0] + "\n") * 40
    keeps_and_drops(rules.zh_distinct_chars, ZH, chuang, spam)


def test_zh_char_entropy(chuang):
    bump = "顶顶顶顶顶顶顶顶顶顶顶顶顶顶顶顶顶顶顶顶顶！\n" * 15 + "好帖，顶！"  # forum spam
    keeps_and_drops(rules.zh_char_entropy, ZH, chuang, bump)


def test_zh_top_ngrams(chuang):
    chars = chuang.replace("\n", "")
    stuffed = "".join(chars[i : i + 6] + "免费下载" for i in range(0, len(chars), 6))
    keeps_and_drops(rules.zh_top_ngrams, ZH, chuang, stuffed)


def test_zh_ngram_and_char3_repetition(chuang, guwen):
    doubled = chuang + "\n" + chuang
    keeps_and_drops(rules.zh_ngram_repetition, ZH, chuang, doubled)
    slogan = "\n".join(f"欢迎光临本站客服热线{line}" for line in chuang.splitlines())
    keeps_and_drops(rules.zh_char3_repetition, ZH, guwen[0], slogan)


def test_zh_special_share(chuang, test_data):
    fortunes = (test_data / "text" / "zh_modern" / "fortunes_zh_chinese").read_text("utf-8")
    entry = next(e for e in fortunes.split("\n%\n") if len(e) > 300)
    assert rules.zh_special_share(rules.Doc(ANSI.sub("", entry)), ZH) is None
    chars = chuang.replace("\n", "")
    coloured = "".join(  # a coloured terminal dump: every few characters in ANSI codes
        f"\x1b[1;3{i % 8}m{chars[i : i + 4]}\x1b[m" for i in range(0, len(chars), 4)
    )
    keeps_and_drops(rules.zh_special_share, ZH, chuang, coloured)


# ------------------------------------------------------------------------------------------------
# Chinese line rules


@pytest.mark.parametrize(
    "junk",
    [
        "版权所有 © 2006-2023 某某网 京ICP备12345678号",
        "上一篇：神创造天地",
        "下一篇：伊甸园",
        "点击查看更多精彩内容",
        "扫一扫，关注我们的微信公众号",
    ],
)
def test_line_boilerplate_zh(junk, chuang, debian_zh):
    for line in chuang.splitlines() + debian_zh[2].splitlines():
        assert not rules.line_boilerplate_zh(line.strip(), ZH), line
    assert rules.line_boilerplate_zh(junk, ZH)


def test_line_short_unterminated_zh(chuang):
    lines = chuang.splitlines()
    assert not any(rules.line_short_unterminated_zh(line, ZH) for line in lines)
    assert not rules.line_short_unterminated_zh("$ ls -l /etc", ZH)  # code stays
    assert rules.line_short_unterminated_zh("热门推荐", ZH)
    assert rules.line_short_unterminated_zh(lines[0][:6], ZH)  # a verse cut mid-sentence


def test_removed_chars_from_line_pass(chuang):
    zh = rule_sets(CleanConfig())["zh"]
    assert clean_lines(chuang, zh, "zh")[1] == 0
    junk = ["扫一扫关注", "热门推荐", "上一篇：伊甸园", "版权所有"]
    noisy = "\n".join(f"{line}\n{junk[i % 4]}" for i, line in enumerate(chuang.splitlines()))
    _, share, removed = clean_lines(noisy, zh, "zh")
    assert sum(removed.values()) == len(chuang.splitlines())
    keeps_and_drops(rules.removed_chars, ZH, chuang, chuang, removed_share=share)


# ------------------------------------------------------------------------------------------------
# Language routing, conversion, config


def test_identify(gen, chuang, wiki, debian_zh, debian_en):
    assert identify(gen)[0] == identify(wiki[3])[0] == identify(debian_en[5])[0] == "en"
    assert identify(chuang)[0] == "zh"
    assert sum(identify(s)[0] == "zh" for s in debian_zh) / len(debian_zh) > 0.85
    cyrillic = gen.translate(str.maketrans("aeopcxyABEHKMOPCTX", "аеорсхуАВЕНКМОРСТХ"))
    assert identify(cyrillic)[0] == "other"
    french = "Au commencement, Dieu créa les cieux et la terre. La terre était informe et vide."
    assert identify(french)[0] == "other"


def test_to_simplified_against_fortunes(test_data):
    """唐诗三百首 in Traditional (chinese-poetry) converted to Simplified matches the Simplified
    copy in Debian's fortunes-zh, an independent source."""
    root = test_data / "text" / "zh_classical"
    poems = json.loads((root / "chinese_poetry" / "tangshisanbaishou.json").read_text("utf-8"))
    lines = [
        p for group in poems["content"] for poem in group["content"] for p in poem["paragraphs"]
    ]

    def han(line: str) -> str:  # editions differ in punctuation and "(一作…)" notes
        return "".join(HAN.findall(re.sub(r"\(.*?\)", "", line)))

    fortunes = (root / "fortunes_zh" / "tang300").read_text("utf-8").split()
    simplified = {han(line) for line in fortunes}
    sample = lines[:300]
    assert sum(han(to_simplified(s)) in simplified for s in sample) / len(sample) > 0.8
    assert sum(han(s) in simplified for s in sample) / len(sample) < 0.5  # conversion did it


def test_config_from_yaml(tmp_path):
    path = tmp_path / "clean.yaml"
    path.write_text("to_simplified: true\nzh:\n  min_chars: 100\ndisabled: [c4_curly_braces]\n")
    config = load_config(CleanConfig, path, ["en.max_words=5000"])
    assert config.to_simplified and config.zh.min_chars == 100 and config.en.max_words == 5000
    assert config.disabled == ["c4_curly_braces"]
    with pytest.raises(ConfigError, match="unknown rule"):
        load_config(CleanConfig, None, ["disabled=[no_such_rule]"])
    assert "zh_han_share" in all_rule_names() and "line_repeated" in all_rule_names()


def test_disabled_rule_keeps(gen):
    script = gen + "\nfunction gtag(){dataLayer.push(arguments);}"
    default = CleanConfig()
    assert judge(script, default, rule_sets(default)).rule == "c4_curly_braces"
    relaxed = CleanConfig(disabled=["c4_curly_braces", "line_no_terminal_punct"])
    assert judge(script, relaxed, rule_sets(relaxed)).rule is None


def test_other_kept_or_dropped(gen):
    config = CleanConfig(keep_other=False)
    sets = rule_sets(config)
    cyrillic = gen.translate(str.maketrans("aeopcxyABEHKMOPCTX", "аеорсхуАВЕНКМОРСТХ"))
    assert judge(cyrillic, config, sets).rule == "lang_other"
    kept = CleanConfig()
    assert judge(cyrillic, kept, rule_sets(kept)).rule is None


# ------------------------------------------------------------------------------------------------
# The stage


def junk_documents(gen: str, chuang: str, wiki: list[str], rng: random.Random) -> list[str]:
    """Web junk of the kinds crawls are full of, built around real text."""
    html = '<div class="nav"><ul><li><a href="/">Home</a></li><li><a href="/news">News</a>'
    words = gen.split()
    zh_chars = chuang.replace("\n", "")
    docs = [
        html + "</li></ul></div>\n<p>" + "</p>\n<p>".join(gen.splitlines()[:4]) + "</p>",
        "\n".join([gen.splitlines()[0]] * 30),
        "\n".join([chuang.splitlines()[1]] * 30),
        " ".join(
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789#@!", k=rng.randint(2, 14)))
            for _ in range(300)
        ),
        chuang.encode("utf-8").decode("gbk", errors="replace"),  # mojibake
        "\n".join(["Home", "About us", "Contact", "Sign in", "Privacy Policy", "Terms of Use"] * 5),
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12 + "\n" + wiki[1],
        "This website uses cookies to improve your experience. We'll assume you're ok with this, "
        "but you can opt-out if you wish.\nAccept\nRead More\nPrivacy & Cookies Policy",
        "\n".join(" ".join(str(rng.randint(0, 99999)) for _ in range(12)) for _ in range(40)),
        "\n".join(f"{zh_chars[i : i + 8]}…更多" for i in range(0, 400, 8)),
        "版权所有 © 2023 某某网\n上一篇：创世记\n下一篇：出埃及记\n扫一扫关注我们\n点击进入",
        "\n".join(" ".join(rng.sample(words, 12)) + "..." for _ in range(30)),
    ]
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bible, wiki, guwen, gen, chuang) -> dict:
    """Real documents (two files) and junk (one file, with a malformed line)."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("clean_in")
    en = [d for d in bible["en"] + wiki if len(d.split()) >= 150]  # long enough to be documents
    zh = [d for d in bible["zh"] + guwen if len(d) >= 300]
    real_en, real_zh = rng.sample(en, 80), rng.sample(zh, 80)
    junk = [d for _ in range(4) for d in junk_documents(gen, chuang, wiki, rng)]
    files = {"real_en.jsonl": real_en, "real_zh.jsonl": real_zh, "junk.jsonl": junk}
    for name, docs in files.items():
        records = [
            {"text": d, "id": f"{name}-{i}", "source": name, "meta": {"n": i}, "extra": [i]}
            for i, d in enumerate(docs)
        ]
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if name == "junk.jsonl":
            body += '{"text": "broken\n'  # a malformed line: counted, never fatal
        (root / name).write_text(body, encoding="utf-8")
    return {"dir": root, "files": files}


def test_stage_drops_junk_keeps_real(corpus, tmp_path):
    out = tmp_path / "out"
    report = clean_corpus(corpus["dir"], out, seed=1, progress=False)
    kept = list(output_records(out))
    by_source = defaultdict(int)
    for r in kept:
        by_source[r["source"]] += 1
    files = corpus["files"]
    real = len(files["real_en.jsonl"]) + len(files["real_zh.jsonl"])
    assert (by_source["real_en.jsonl"] + by_source["real_zh.jsonl"]) / real >= 0.95
    assert by_source["junk.jsonl"] / len(files["junk.jsonl"]) <= 0.10
    read = sum(map(len, files.values())) + 1
    assert (
        report["read"]
        == read
        == report["kept"] + report["rejected"]
        == len(kept)
        + sum(1 for p in (out / "rejects").glob("*.jsonl.zst") for _ in read_jsonl_zst(p))
    )
    for r in kept:
        assert {"text", "id", "source", "meta", "extra", "lang"} <= set(r)
        assert r["meta"]["n"] == r["extra"][0] and "clean" in r["meta"]
        assert r["lang"] == ("zh" if r["source"] == "real_zh.jsonl" else "en") or r["source"] == (
            "junk.jsonl"
        )
    dropped = sum(report["documents_dropped_per_rule"].values())
    assert dropped == report["rejected"]
    md = (out / "report.md").read_text()
    assert "| rule | documents dropped |" in md and "| line rule | lines removed |" in md


def test_rejects_carry_rule_reason_record(corpus, tmp_path):
    out = tmp_path / "out"
    clean_corpus(corpus["dir"], out, progress=False)
    rejects = [r for p in (out / "rejects").glob("*junk*") for r in read_jsonl_zst(p)]
    with_rule = [r for r in rejects if "rule" in r]
    assert with_rule and all(r["reason"] and r["record"]["text"] for r in with_rule)
    assert any(r["reason"].startswith("invalid JSON") or "JSON" in r["reason"] for r in rejects)


def test_resume_skips_finished_shards(corpus, tmp_path):
    out = tmp_path / "out"
    first = clean_corpus(corpus["dir"], out, progress=False)
    shards = sorted((out / "shards").glob("*.jsonl.zst"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    (out / "shards" / f"{shards[0].name.removesuffix('.jsonl.zst')}.done").unlink()
    second = clean_corpus(corpus["dir"], out, progress=False)
    assert shards[0].stat().st_mtime_ns != stamps[shards[0]]  # redone
    assert all(p.stat().st_mtime_ns == stamps[p] for p in shards[1:])  # skipped
    for key in ("read", "kept", "rejected", "documents_dropped_per_rule"):
        assert first[key] == second[key]
