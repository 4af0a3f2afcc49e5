"""Quality scores on real text: the hashed n-gram classifier tells Bible, Wikipedia and Tang
poetry from junk made out of them, and the perplexity scorer equals the loss computed window
by window from the model's own logits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from chuan.data.quality_classifier import (
    FeatureSpec,
    QualityModel,
    binary_metrics,
    feature_buckets,
    roc_auc,
    score_corpus,
    span_hashes,
    train_quality_model,
)
from chuan.data.quality_lm import score_perplexity
from chuan.data.shards import output_records, read_jsonl_zst
from helpers.corpus import write_jsonl

BOILERPLATE = [
    "Click here to subscribe to our newsletter.",
    "We use cookies to improve your experience. Accept all cookies.",
    "All rights reserved. Terms of use | Privacy policy | Contact us",
    "Home > News > Sports > More",
    "Share on Facebook Share on Twitter Share by email",
    "Log in | Register | Forgot your password?",
    "本网站使用cookie以改善您的体验。",
    "版权所有 未经许可不得转载",
    "首页 | 新闻 | 体育 | 娱乐 | 联系我们",
    "点击这里订阅我们的新闻邮件",
    "上一篇 下一篇 返回顶部",
]


def real_documents(test_data: Path) -> list[str]:
    """Five-verse Bible passages (KJV and CUV), Wikipedia slices and Tang poems."""
    text = test_data / "text"
    rows = (text / "parallel" / "bible_kjv_cuvs_wenli.tsv").read_text("utf-8").splitlines()[1:]
    docs = []
    for start in range(0, 1000, 5):
        verses = [r.split("\t") for r in rows[start : start + 5]]
        docs += [" ".join(v[1] for v in verses), "".join(v[2] for v in verses)]
    for article in (text / "en" / "wiki_demo.txt").read_text("utf-8").splitlines()[:6]:
        docs += [article[i : i + 800] for i in range(0, min(len(article), 8000), 800)]
    poems = json.loads((text / "zh_classical" / "chinese_poetry" / "poet.tang.0.json").read_text())
    return docs + ["".join(p["paragraphs"]) for p in poems[:150]]


def junk_documents(real: list[str], seed: int) -> list[str]:
    """Shuffled characters, random words / characters from the real vocabulary, boilerplate."""
    rng = random.Random(seed)
    words = sorted({w for doc in real for w in doc.split() if w.isascii()})
    hanzi = sorted({c for doc in real for c in doc if "\u4e00" <= c <= "\u9fff"})
    junk = []
    for doc in rng.sample(real, 200):
        chars = list(doc)
        rng.shuffle(chars)
        junk.append("".join(chars))
    for _ in range(100):
        junk.append(" ".join(rng.choices(words, k=rng.randint(20, 150))))
        junk.append("".join(rng.choices(hanzi, k=rng.randint(20, 150))))
        junk.append("\n".join(rng.choices(BOILERPLATE, k=rng.randint(3, 12))))
    return junk


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, test_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quality")
    real = real_documents(test_data)
    junk = junk_documents(real, seed=0)
    return {
        "good": write_jsonl(root / "good.jsonl", [{"text": t} for t in real]),
        "bad": write_jsonl(root / "bad.jsonl", [{"text": t} for t in junk]),
        "real": real,
        "junk": junk,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model") / "quality"
    report = train_quality_model(corpus["good"], corpus["bad"], out, seed=1)
    return out, report


def test_auc_equals_the_pairwise_count_and_a_hand_example():
    assert roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1]) == 0.75  # 3 of 4 pairs ordered
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = rng.integers(0, 20, 300) / 20  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    metrics = binary_metrics(labels, scores)
    predicted = scores >= 0.5
    assert metrics["precision"] == pytest.approx((predicted & labels).sum() / predicted.sum())
    assert metrics["recall"] == pytest.approx((predicted & labels).sum() / labels.sum())


def test_span_hash_is_the_polynomial_modulo_2_64():
    text = "Hello, 世界! ab"
    codes = np.array([ord(c) for c in text], dtype=np.uint64)
    starts, ends = np.array([0, 3, 7, 0]), np.array([5, 4, 9, len(text)])
    expected = []
    for s, e in zip(starts, ends, strict=True):
        value = 0
        for c in text[s:e]:
            value = (value * 0x100000001B3 + ord(c)) % 2**64
        expected.append(value)
    assert span_hashes(codes, starts, ends).tolist() == expected


def test_features_count_char_and_word_ngrams_and_skip_cjk_words():
    spec = FeatureSpec(buckets=1 << 16)
    # "ab  cd": one space after normalising; 5 + 4 + 3 char n-grams, 2 words, 1 word bigram.
    assert len(feature_buckets("AB  cd", spec)) == 15
    # Chinese is char n-grams only: 4 + 3 + 2; a clause is never one "word" (`\W` splitting).
    assert len(feature_buckets("中文句子", spec)) == 9
    assert feature_buckets("AB cd", spec).tolist() == feature_buckets("ab\ncd", spec).tolist()
    assert feature_buckets("ab cd", spec).max() < 1 << 16


def test_quality_model_separates_real_text_from_junk(trained, corpus):
    model_dir, report = trained
    held = report["held_out"]
    assert held["auc"] > 0.95, held
    assert held["examples"] == round(0.2 * len(corpus["real"])) + round(0.2 * len(corpus["junk"]))
    assert report["documents"] == {
        "good": len(corpus["real"]),
        "bad": len(corpus["junk"]),
        "skipped": 0,
    }
    # Fresh junk from another seed, never seen in training, still scores below real text.
    model = QualityModel.load(model_dir)
    fresh = junk_documents(corpus["real"], seed=7)[::4]
    scores = model.predict(corpus["real"][::4] + fresh)
    labels = [1] * len(corpus["real"][::4]) + [0] * len(fresh)
    assert roc_auc(labels, scores) > 0.95


def test_model_dir_is_safetensors_and_json_and_reloads_identically(trained, corpus):
    model_dir, _ = trained
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json",
        "report.json",
        "report.md",
        "weights.safetensors",
    ]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format"] == "chuan-quality-linear" and config["version"] == 1
    assert config["features"]["buckets"] == 1 << 20
    texts = corpus["real"][:20] + corpus["junk"][:20]
    first, again = QualityModel.load(model_dir), QualityModel.load(model_dir)
    assert np.array_equal(first.predict(texts), again.predict(texts))
    assert first.weight.dtype == torch.float32 and first.weight.shape == (1 << 20,)


def test_same_seed_same_model(tmp_path, corpus, trained):
    model_dir, report = trained
    again = train_quality_model(corpus["good"], corpus["bad"], tmp_path / "again", seed=1)
    assert again["held_out"] == report["held_out"]
    a, b = QualityModel.load(model_dir), QualityModel.load(tmp_path / "again")
    assert torch.equal(a.weight, b.weight)


def test_score_corpus_adds_quality_keeps_fields_and_counts(tmp_path, trained, corpus):
    model_dir, _ = trained
    records = [
        {"text": t, "id": f"r{i}", "meta": {"n": i}} for i, t in enumerate(corpus["real"][:30])
    ]
    records += [{"text": t, "category": "junk"} for t in corpus["junk"][:30]]
    write_jsonl(tmp_path / "a.jsonl", records[::2] + ["{broken", '{"no_text": 1}'])
    write_jsonl(tmp_path / "b.jsonl", records[1::2] + ["[1, 2]"])
    out = tmp_path / "scored"
    report = score_corpus([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], model_dir, out)
    assert (report["read"], report["kept"], report["rejected"]) == (63, 60, 3)
    assert report["read"] == report["kept"] + report["rejected"]
    written = list(output_records(out))
    model = QualityModel.load(model_dir)
    expected = model.predict([r["text"] for r in written])
    assert [r["quality"] for r in written] == pytest.approx(expected.tolist(), abs=1e-12)
    for record in written:
        original = {k: v for k, v in record.items() if k != "quality"}
        assert original in records
    rejects = [r for p in sorted((out / "rejects").glob("*.jsonl.zst")) for r in read_jsonl_zst(p)]
    assert sorted(r["line"] for r in rejects) == [31, 31, 32]
    assert (out / "quality_hist.png").stat().st_size > 0
    assert sum(report["histogram"]["counts"]) == 60
    assert json.loads((out / "report.json").read_text())["kept"] == 60
    # A re-run finds every shard done and reports the same totals.
    again = score_corpus([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], model_dir, out)
    assert again["histogram"] == report["histogram"] and again["kept"] == 60


# --- perplexity --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, test_data) -> Path:
    """A random tiny chuan model with the LLaMA tokenizer beside it."""
    from chuan.model.checkpoint import init_model_dir
    from chuan.tokenizer.hf import write_tokenizer_dir
    from chuan.tokenizer.spm import load_proto

    root = tmp_path_factory.mktemp("lm")
    write_tokenizer_dir(
        root / "tok", load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    )
    init_model_dir(root / "model", "tiny", tokenizer_dir=root / "tok", seed=5)
    return root / "model"


def reference_mean_loss(model, ids: list[int], max_length: int) -> float:
    """Each window run alone (no padding, no batch), log-softmax of the model's logits: inputs
    `ids[start : start + max_length]` predict `ids[start + 1 : start + max_length + 1]`, and
    the next window starts at `start + max_length` (`chuan.model.nll`'s independent chunks)."""
    total, count, start = 0.0, 0, 0
    while start < len(ids) - 1:
        inputs = torch.tensor([ids[start : start + max_length]])
        targets = torch.tensor(ids[start + 1 : start + max_length + 1])
        with torch.no_grad():
            logits = model(input_ids=inputs).logits[0, : len(targets)].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        total -= log_probs.gather(1, targets[:, None]).sum().item()
        count += len(targets)
        start += max_length
    return total / count


def test_perplexity_equals_the_loss_of_each_window_run_alone(tmp_path, lm_dir, test_data):
    from transformers import AutoModelForCausalLM

    from chuan.tokenizer.hf import load_tokenizer

    lines = (test_data / "text" / "parallel" / "tatoeba_cmn_eng.txt").read_text("utf-8-sig")
    pairs = [line.split("\t")[:2] for line in lines.splitlines()[200:206]]
    texts = [en for en, _ in pairs] + [zh for _, zh in pairs] + [" ".join(e for e, _ in pairs)]
    records = [{"text": t, "id": i} for i, t in enumerate(texts)]
    write_jsonl(tmp_path / "in.jsonl", records + ['{"text": ""}', "not json"])
    out = tmp_path / "ppl"
    report = score_perplexity(tmp_path / "in.jsonl", lm_dir, out, batch_size=3, max_length=12)
    written = list(output_records(out))
    assert (report["read"], report["kept"], report["rejected"], report["unscored"]) == (
        15,
        14,
        1,
        1,
    )
    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    tokenizer = load_tokenizer(lm_dir)
    for record in written[:-1]:
        ids = [tokenizer.bos_token_id] + tokenizer.encode(record["text"], add_special_tokens=False)
        expected = np.exp(reference_mean_loss(model, ids, max_length=12))
        assert record["perplexity"] == pytest.approx(expected, rel=1e-4), record["text"]
    assert written[-1] == {"text": "", "perplexity": None}  # a lone BOS predicts nothing
