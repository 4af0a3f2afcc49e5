"""`chuan data dedup`: shingles, MinHash, LSH parameters, clusters and the whole stage, on real
text from tests/data/text with planted duplicates."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from chuan.data import minhash
from chuan.data.dedup import (
    best_in_groups,
    components_forest,
    components_of,
    dedup_corpus,
    sentence_drops,
    split_sentences,
)
from chuan.data.shards import output_records, read_jsonl_zst
from chuan.errors import OutputExistsError
from helpers.corpus import write_jsonl

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _fortunes(path: Path) -> list[str]:
    entries = path.read_text(encoding="utf-8").split("\n%\n")
    return [_ANSI.sub("", e).strip() for e in entries if e.strip()]


def _paragraphs(path: Path, min_chars: int, max_chars: int) -> list[str]:
    """Consecutive blank-line paragraphs joined into documents of min..max characters."""
    docs, current = [], ""
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        current = f"{current}\n\n{block.strip()}" if current else block.strip()
        if len(current) >= min_chars:
            docs.append(current[:max_chars])
            current = ""
    return docs


def _exact_jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def _unique(docs: list[str], limit: float = 0.3) -> list[str]:
    """The documents whose shingle sets overlap no earlier kept one by `limit` or more, checked
    with exact Jaccard (the real texts hold a few genuine near-duplicates)."""
    kept, sets = [], []
    for doc in docs:
        shingles = minhash.shingle_strings(doc)
        if all(_exact_jaccard(shingles, s) < limit for s in sets):
            kept.append(doc)
            sets.append(shingles)
    return kept


@pytest.fixture(scope="module")
def originals(test_data) -> dict[str, list[str]]:
    """About 110 unique Chinese and 120 unique English documents of real text."""
    text = test_data / "text"
    zh = _fortunes(text / "zh_modern" / "fortunes_zh_chinese")
    zh = [d for d in zh if len(d) >= 150][:80]
    zh += _paragraphs(text / "zh_modern" / "debian-reference.zh-cn.txt", 300, 1500)[20:60]
    c4 = (text / "en" / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    en = [json.loads(line)["text"][:3000] for line in c4][:80]
    wiki = (text / "en" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    en += [line[:3000] for line in wiki if len(line) >= 400][:40]
    return {"zh": _unique(zh), "en": _unique(en)}


def _edit(doc: str, fraction: float, rng: random.Random, pool: list[str]) -> str:
    """`doc` with `fraction` of its units (characters for Chinese, words for English) replaced
    by random units of the same language; at least one."""
    by_chars = minhash.is_cjk(minhash.squeeze(doc))
    units = list(doc) if by_chars else doc.split(" ")
    editable = [i for i, u in enumerate(units) if (u.strip() if not by_chars else u.isalnum())]
    count = max(1, round(fraction * len(editable)))
    for i in rng.sample(editable, min(count, len(editable))):
        units[i] = rng.choice(pool)
    return ("" if by_chars else " ").join(units)


def _pools(originals: dict[str, list[str]]) -> dict[str, list[str]]:
    chars = sorted({c for d in originals["zh"] for c in d if minhash.is_cjk(c)})
    words = sorted({w for d in originals["en"] for w in d.split() if w.isalpha()})
    return {"zh": chars, "en": words}


def test_optimal_bands_match_datasketch_published_choices():
    """Reference h.6: datasketch's optimiser picks 9x13 (128 @ 0.8), 14x9 (128 @ 0.7) and 25x10
    (256 @ 0.7)."""
    assert minhash.optimal_bands(0.8, 128) == (9, 13)
    assert minhash.optimal_bands(0.7, 128) == (14, 9)
    assert minhash.optimal_bands(0.7, 256) == (25, 10)
    curve = minhash.s_curve(14, 8)  # datatrove / FineWeb row of the table
    assert curve["0.5"] == pytest.approx(0.05, abs=0.006)
    assert curve["0.8"] == pytest.approx(0.92, abs=0.006)


def test_chinese_is_shingled_by_characters_and_english_by_words(test_data):
    """Pitfall 43: a Chinese verse gives character 5-grams without punctuation, not clauses."""
    line = (test_data / "text" / "parallel" / "bible_kjv_cuvs_wenli.tsv").read_text().split("\n")[1]
    _, en, zh, _ = line.split("\t")
    zh_shingles = minhash.shingle_strings(zh)
    assert all(len(s) == 5 and "，" not in s and "\u3000" not in s for s in zh_shingles)
    squeezed = re.sub(r"[\W_]+", "", zh)
    assert len(zh_shingles) == len({squeezed[i : i + 5] for i in range(len(squeezed) - 4)})
    en_shingles = minhash.shingle_strings(en)
    words = re.findall(r"\w+", en.lower())
    assert en_shingles == {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}


def test_short_texts_are_one_shingle_and_stay_distinct():
    """Pitfall 45: texts shorter than n units keep distinct, non-empty signatures."""
    texts = ["你好", "早上好", "Thank you.", "Good night", ""]
    assert [minhash.shingle_strings(t) for t in texts[:4]] == [
        {"你好"}, {"早上好"}, {"thank you"}, {"good night"}
    ]  # fmt: skip
    signatures = _signatures(minhash.MinHasher(64), texts)
    assert len({row.tobytes() for row in signatures}) == len(texts)


def _signatures(hasher: minhash.MinHasher, texts: list[str]) -> np.ndarray:
    return hasher.signatures(*minhash.form_hashes(minhash.shingle_forms(texts)))


_CJK = "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]"


def _python_form(text: str) -> tuple[str, bool]:
    """The shingle form by `re` per document, the independent reference of the batched one."""
    spaced = re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).lower()).strip()
    squeezed = spaced.replace(" ", "")
    cjk = len(re.findall(_CJK, squeezed))
    by_chars = cjk > 0 and cjk >= minhash.CJK_SHARE * len(squeezed)
    return (squeezed if by_chars else spaced), by_chars


def test_batch_forms_equal_a_regex_pass_per_document(originals):
    """The batched forms (table lookups over the code points of many documents) equal a regex
    pass per document on real zh/en text, full-width forms, underscores, marks and empty
    documents included."""
    docs = originals["zh"] + originals["en"]
    docs += ["ＡＢＣ　ｄｅｆ，Ｇｈｉ！", "snake_case__name", "café naïve", "", "。。。", "Ⅻ ½ ①"]
    forms = minhash.shingle_forms(docs)
    got = [(forms.text(d), bool(forms.by_chars[d])) for d in range(len(docs))]
    assert got == [_python_form(d) for d in docs]
    assert minhash.shingle_form("ＡＢＣ　ｄｅｆ，Ｇｈｉ！") == ("abc def ghi", False)


def test_batch_forms_equal_a_regex_pass_for_every_code_point():
    """Every code point between two letters, in one batch: the lookup tables give what `re`'s
    `[\\W_]` and the CJK ranges give (NFKC expansions and case mappings included)."""
    texts = [f"a{chr(c)}b" for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    forms = minhash.shingle_forms(texts)
    mismatches = [
        (t, forms.text(d), _python_form(t))
        for d, t in enumerate(texts)
        if (forms.text(d), bool(forms.by_chars[d])) != _python_form(t)
    ]
    assert not mismatches[:5]


def test_batch_hashes_equal_each_document_alone(originals):
    """One batch of mixed Chinese, English, short and empty documents gives every document the
    hashes it gets alone: spans never cross a document boundary."""
    docs = originals["zh"][:6] + ["你好", "", "Good night", "。"] + originals["en"][:6]
    hashes, counts = minhash.form_hashes(minhash.shingle_forms(docs))
    assert counts.sum() == len(hashes) and (counts >= 1).all()
    alone = [minhash.shingle_hashes(d) for d in docs]
    assert [len(a) for a in alone] == counts.tolist()
    assert np.array_equal(hashes, np.concatenate(alone))


def test_vectorised_hashes_agree_with_shingle_strings(originals):
    """Equal shingles hash equally and different ones differently, across documents."""
    docs = originals["zh"][:10] + originals["en"][:10]
    pairs = [(d, _edit(d, 0.2, random.Random(i), ["X", "y"])) for i, d in enumerate(docs)]
    for a, b in pairs:
        strings_a, strings_b = minhash.shingle_strings(a), minhash.shingle_strings(b)
        hashes_a = set(minhash.shingle_hashes(a).tolist())
        hashes_b = set(minhash.shingle_hashes(b).tolist())
        assert len(hashes_a) == len(strings_a)
        assert len(hashes_a & hashes_b) == len(strings_a & strings_b)


def test_minhash_estimates_exact_jaccard_and_blocks_do_not_change_it(originals):
    """Signature agreement is an unbiased estimate of the exact Jaccard of the shingle sets,
    and the blockwise minima (hashing in blocks bounds memory) equal the unblocked ones."""
    rng = random.Random(0)
    pools = _pools(originals)
    hasher = minhash.MinHasher(256, seed=1)
    errors = []
    for lang, docs in originals.items():
        for doc in docs[:30]:
            other = _edit(doc, rng.uniform(0.01, 0.1), rng, pools[lang])
            exact = _exact_jaccard(minhash.shingle_strings(doc), minhash.shingle_strings(other))
            sig = _signatures(hasher, [doc, other])
            errors.append((sig[0] == sig[1]).mean() - exact)
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.015
    assert np.abs(errors).max() < 0.15  # 4.5 sigma of a 256-permutation estimate
    whole = _signatures(hasher, originals["zh"][:8])
    hasher.block_rows = 17
    assert (_signatures(hasher, originals["zh"][:8]) == whole).all()


@pytest.mark.parametrize("pieces", [1, 3, 7])
def test_components_from_partial_forests_match_breadth_first_components(pieces):
    """The edges split over any number of forests (as band partitions split them) give the
    components a breadth-first search finds on the whole graph."""
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 300, size=(200, 2))
    part = rng.integers(0, pieces, size=len(edges))
    forests = [components_forest(edges[part == k, 0], edges[part == k, 1]) for k in range(pieces)]
    labels = components_of(forests, 300)
    neighbours = {i: set() for i in range(300)}
    for u, v in edges:
        neighbours[int(u)].add(int(v))
        neighbours[int(v)].add(int(u))
    for start in range(300):
        seen, frontier = {start}, [start]
        while frontier:
            frontier = [n for x in frontier for n in neighbours[x] if n not in seen]
            seen.update(frontier)
        assert {i for i in range(300) if labels[i] == labels[start]} == seen
        assert labels[start] == min(seen)


def test_best_in_groups_prefers_quality_then_first():
    labels = np.array([5, 5, 5, 7, 7, 9])
    quality = np.array([0.2, 0.9, 0.9, np.nan, np.nan, np.nan])
    assert best_in_groups(labels, quality).tolist() == [1, 1, 1, 3, 3, 5]


def test_sentence_drops_keep_first_of_sentences_seen_more_than_k():
    keys = np.array([1, 2, 1, 1, 2, 3, 1, 0, 0, 0], np.uint64)
    active = np.ones(len(keys), bool)
    active[6] = False  # a removed document's sentence does not count
    assert np.flatnonzero(sentence_drops(keys, active, 2)).tolist() == [2, 3]
    assert not sentence_drops(keys, active, 3).any()
    assert not sentence_drops(keys, active, 0).any()


def test_near_duplicates_found_variants_and_unique_documents_kept(originals, tmp_path):
    """Issue 4 acceptance: at threshold 0.8, >= 95% of copies with up to 1% of units edited are
    found, a variant with half its units replaced is never merged with its original, and no
    unique document is lost."""
    rng = random.Random(4)
    pools = _pools(originals)
    records, copies, variants = [], [], []
    for lang, docs in originals.items():
        for i, doc in enumerate(docs):
            records.append({"id": f"{lang}{i}", "text": doc})
    for lang, docs in originals.items():
        for i, doc in enumerate(docs[:80]):
            copies.append((f"{lang}{i}", f"{lang}{i}-copy"))
            text = _edit(doc, rng.uniform(0.001, 0.01), rng, pools[lang])
            records.append({"id": copies[-1][1], "text": text})
        for i, doc in enumerate(docs[80:100], start=80):
            variants.append((f"{lang}{i}", f"{lang}{i}-half"))
            records.append({"id": variants[-1][1], "text": _edit(doc, 0.5, rng, pools[lang])})
    write_jsonl(tmp_path / "in" / "docs.jsonl", records)
    report = dedup_corpus(
        tmp_path / "in", tmp_path / "out", sentence_max_repeats=0, workers=1, progress=False
    )
    kept = {r["id"]: r for r in output_records(tmp_path / "out")}
    rejects = read_jsonl_zst(tmp_path / "out" / "rejects" / "00000-docs.jsonl.zst")
    rejected = {r["record"]["id"]: r for r in rejects}
    found = [c for o, c in copies if c in rejected and o in kept]
    print(f"found {len(found)} of {len(copies)} copies")
    assert len(found) >= 0.95 * len(copies), (len(found), len(copies))
    for original, copy in copies:
        if copy in rejected:
            assert records[rejected[copy]["duplicate_of"]["position"]]["id"] == original
    for original, variant in variants:
        assert original in kept and variant in kept
        assert kept[original]["meta"]["cluster_id"] != kept[variant]["meta"]["cluster_id"]
    originals_ids = [f"{lang}{i}" for lang, docs in originals.items() for i in range(len(docs))]
    assert all(i in kept for i in originals_ids)
    assert set(rejected) <= {c for _, c in copies}
    assert report["kept"] + report["rejected"] == report["read"] == len(records)


def test_counts_fields_and_representative_with_highest_quality(originals, tmp_path):
    """kept + rejected = read (a malformed line included); every field survives; the copy with
    the highest quality represents its cluster and the rejects point at it."""
    doc = originals["en"][0]
    lines = [
        json.dumps({"text": doc, "id": "low", "quality": 0.2, "meta": {"src": "c4"}}),
        "{not json",
        json.dumps({"text": doc.upper(), "id": "high", "quality": 0.9, "lang": "en"}),
        json.dumps({"text": doc + " Thanks.", "id": "mid", "quality": 0.5}),
        json.dumps({"text": originals["zh"][0], "id": "zh", "meta": "not a dict"}),
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    report = dedup_corpus(tmp_path / "in", tmp_path / "out", workers=1, progress=False)
    assert (report["read"], report["kept"], report["rejected"]) == (5, 2, 3)
    assert (report["exact_duplicates"], report["near_duplicates"]) == (1, 1)
    kept = {r["id"]: r for r in output_records(tmp_path / "out")}
    assert kept["high"]["lang"] == "en" and kept["high"]["quality"] == 0.9
    assert kept["high"]["meta"] == {"cluster_id": 1, "cluster_size": 3, "sentence_dups_removed": 0}
    assert kept["zh"]["meta"] == "not a dict" and kept["zh"]["cluster_size"] == 1
    rejects = list(read_jsonl_zst(tmp_path / "out" / "rejects" / "00000-a.jsonl.zst"))
    by_id = {r["record"]["id"]: r for r in rejects if "record" in r}
    assert (
        by_id["low"]["reason"] == "exact duplicate" and by_id["mid"]["reason"] == "near duplicate"
    )
    assert by_id["low"]["duplicate_of"]["line"] == 3 and by_id["low"]["record"]["meta"] == {
        "src": "c4"
    }
    assert report["cluster_sizes"] == {"3": 1}
    assert report["example_clusters"][0]["members"][0]["text"] == doc.upper()[:80]
    assert (tmp_path / "out" / "report.md").read_text().startswith("# chuan data dedup")


def test_sentence_dedup_drops_repeats_after_k(test_data, tmp_path):
    """A sentence in more than K documents survives only in the first; one seen K times stays."""
    rows = (test_data / "text" / "parallel" / "tatoeba_cmn_eng.txt").read_text("utf-8-sig")
    english = list(dict.fromkeys(line.split("\t")[0] for line in rows.split("\n")[5000:5100]))
    boiler, rare = (
        "All rights reserved by the original authors.",
        "这句话在语料里正好出现两次而已。",
    )
    docs = []
    for i in range(8):
        body = " ".join(english[i * 5 : i * 5 + 5])
        extra = [boiler] + ([rare] if i < 2 else [])
        docs.append({"id": str(i), "text": " ".join([body, *extra])})
    write_jsonl(tmp_path / "in" / "d.jsonl", docs)
    report = dedup_corpus(
        tmp_path / "in", tmp_path / "out", sentence_max_repeats=2, workers=1, progress=False
    )
    kept = {r["id"]: r["text"] for r in output_records(tmp_path / "out")}
    assert boiler in kept["0"] and not any(boiler in kept[str(i)] for i in range(1, 8))
    assert rare in kept["0"] and rare in kept["1"]
    assert report["sentence_dups_removed"] == 7
    assert kept["3"] == docs[3]["text"].removesuffix(" " + boiler)
    assert "".join(split_sentences(docs[0]["text"])) == docs[0]["text"]


def test_resume_reuses_finished_signature_shards(originals, tmp_path):
    for name, docs in originals.items():
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", [{"text": d} for d in docs[:30]])
    first = dedup_corpus(tmp_path / "in", tmp_path / "out", workers=1, progress=False)
    assert first["signatures"] == {"computed": 2, "reused": 0}
    outputs = {p.name: p.read_bytes() for p in (tmp_path / "out" / "shards").glob("*.zst")}
    marker = tmp_path / "out" / "work" / "signatures" / "00001-zh.done.json"
    for path in [*(tmp_path / "out" / "shards").iterdir(), marker]:
        path.unlink()
    second = dedup_corpus(tmp_path / "in", tmp_path / "out", workers=1, progress=False)
    assert second["signatures"] == {"computed": 1, "reused": 1}
    assert outputs == {p.name: p.read_bytes() for p in (tmp_path / "out" / "shards").glob("*.zst")}
    # other settings into the same out: refused, naming the difference (issue 20)
    with pytest.raises(OutputExistsError, match=r"other settings.*threshold: was 0.8, now 0.7"):
        dedup_corpus(tmp_path / "in", tmp_path / "out", threshold=0.7, progress=False)
