"""`chuan data mix` on real bilingual text (KJV and CUV Bible passages, Tang poems): the weight
formulas against hand-worked examples, and the written mixture against its targets, counted
back from the output files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from chuan.config import ConfigError, load_config
from chuan.data.mix import (
    MixConfig,
    MixInput,
    estimate_tokens,
    expected_copies,
    explicit_weights,
    mix_corpus,
    systematic_copies,
    temperature_weights,
    unimax_budgets,
)
from chuan.data.shards import output_records, read_jsonl_zst
from helpers.corpus import write_jsonl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, test_data) -> dict[str, Path]:
    """Bible passages tagged en / zh in one file (with a broken line), Tang poems untagged in
    another (their category comes from the config); every record has an id and a score."""
    root = tmp_path_factory.mktemp("mix")
    text = test_data / "text"
    rows = (text / "parallel" / "bible_kjv_cuvs_wenli.tsv").read_text("utf-8").splitlines()[1:]
    bible = []
    for start in range(0, 1500, 5):
        verses = [r.split("\t") for r in rows[start : start + 5]]
        bible.append({"text": " ".join(v[1] for v in verses), "category": "en"})
        bible.append({"text": "".join(v[2] for v in verses), "category": "zh"})
    poems = json.loads((text / "zh_classical" / "chinese_poetry" / "poet.tang.0.json").read_text())
    poetry = [
        {"text": "".join(p["paragraphs"]), "meta": {"title": p["title"]}} for p in poems[:200]
    ]
    for group in (bible[0::2], bible[1::2], poetry):  # en, zh, poetry: scores 0.05 ... 0.95
        for i, record in enumerate(group):
            record["quality"] = 0.1 * (i % 10) + 0.05
    for i, record in enumerate(bible + poetry):
        record["id"] = f"d{i}"
    return {
        "bible": write_jsonl(root / "bible.jsonl", bible[:300] + ["{oops"] + bible[300:]),
        "poetry": write_jsonl(root / "poetry.jsonl", poetry),
    }


def config(corpus: dict[str, Path], **fields) -> MixConfig:
    inputs = [MixInput(str(corpus["bible"])), MixInput(str(corpus["poetry"]), "poetry")]
    return MixConfig(inputs=inputs, **fields)


def written_tokens(out: Path) -> Counter:
    tokens: Counter = Counter()
    for record in output_records(out):
        tokens[record["category"]] += estimate_tokens(record["text"])
    return tokens


def test_token_count_is_cjk_characters_plus_other_words():
    assert estimate_tokens("起初，神创造天地。") == 7 + 2  # 7 hanzi, 2 punctuation "words"
    assert estimate_tokens("In the beginning 神 created") == 5
    assert estimate_tokens("GPT-4很强, really") == 2 + 3  # 很强; "GPT-4", ",", "really"


def test_temperature_weights_hand_example():
    tokens = {"a": 100.0, "b": 900.0}
    assert temperature_weights(tokens, 1.0) == pytest.approx({"a": 0.1, "b": 0.9})
    assert temperature_weights(tokens, 2.0) == pytest.approx({"a": 10 / 40, "b": 30 / 40})
    flat = temperature_weights(tokens, 1e6)
    assert flat["a"] == pytest.approx(0.5, abs=1e-4)


def test_unimax_worked_example():
    # Budget 600, E = 2: a gets min(600/3, 2*10) = 20; b min(580/2, 2*100) = 200;
    # c min(380/1, 2*1000) = 380.
    budgets = unimax_budgets({"c": 1000.0, "a": 10.0, "b": 100.0}, 600, 2)
    assert budgets == pytest.approx({"a": 20.0, "b": 200.0, "c": 380.0})
    # A budget beyond E times everything leaves every category at E epochs.
    assert unimax_budgets({"a": 10.0, "b": 30.0}, 1000, 1.5) == pytest.approx({"a": 15, "b": 45})


def test_explicit_weights_normalise_and_name_missing_categories():
    assert explicit_weights({"a": 5.0, "b": 1.0}, {"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    with pytest.raises(ValueError, match=r"missing \['b'\].*not in the data \['c'\]"):
        explicit_weights({"a": 5.0, "b": 1.0}, {"a": 1, "c": 3})


def test_expected_copies_fill_the_target_below_the_cap():
    lengths = np.array([10.0, 20.0, 30.0, 40.0])
    weights = np.array([4.0, 1.0, 1.0, 0.0])
    copies = expected_copies(lengths, weights, target=70, cap=1.5)
    # λ·4 is capped at 1.5 (15 tokens); the rest share 55 tokens: λ·(20 + 30) = 55.
    assert copies == pytest.approx([1.5, 1.1, 1.1, 0.0])
    assert expected_copies(lengths, weights, target=1e9, cap=2) == pytest.approx([2, 2, 2, 0])


def test_systematic_copies_are_floor_or_ceil_and_sum_to_the_expectation():
    rng = np.random.default_rng(0)
    expected = rng.random(1000) * 3
    lengths = rng.integers(1, 500, 1000).astype(float)
    copies = systematic_copies(expected, lengths, np.random.default_rng(1))
    assert np.all((copies == np.floor(expected)) | (copies == np.ceil(expected)))
    assert abs(copies.sum() - expected.sum()) <= 1
    target = np.dot(expected, lengths)
    assert abs(np.dot(copies, lengths) - target) / target < 0.005
    # Over many seeds each document's mean number of copies is its expectation.
    runs = [
        systematic_copies(expected[:50], lengths[:50], np.random.default_rng(s))
        for s in range(2000)
    ]
    assert np.mean(runs, axis=0) == pytest.approx(expected[:50], abs=0.05)


def test_temperature_mix_hits_its_targets_in_the_written_files(tmp_path, corpus):
    cfg = config(corpus, method="temperature", temperature=2.0, budget_tokens=60_000)
    report = mix_corpus(cfg, tmp_path / "out", progress=False)
    cats = report["categories"]
    before = {c: cats[c]["tokens_before"] for c in cats}
    roots = {c: n**0.5 for c, n in before.items()}
    found = written_tokens(tmp_path / "out")
    for category, plan in cats.items():
        target = 60_000 * roots[category] / sum(roots.values())
        assert plan["target_tokens"] == pytest.approx(target)
        assert found[category] == plan["tokens_after"]
        assert abs(found[category] - target) / target < 0.01, (category, found[category], target)
    assert report["read"] == report["kept"] + report["rejected"]
    assert report["reasons"]["invalid JSON"] == 1


def test_every_field_is_kept_and_counts_add_up(tmp_path, corpus):
    report = mix_corpus(config(corpus, budget_tokens=40_000), tmp_path / "out", progress=False)
    originals = {}
    for path in (corpus["bible"], corpus["poetry"]):
        for line in path.read_text("utf-8").splitlines():
            if line.startswith('{"'):
                record = json.loads(line)
                originals[record["id"]] = record
    for record in output_records(tmp_path / "out"):
        source = originals[record["id"]]
        assert {k: v for k, v in record.items() if k != "category"} == {
            k: v for k, v in source.items() if k != "category"
        }
        assert record["category"] == source.get("category", "poetry")
    assert report["read"] == len(originals) + 1
    assert report["read"] == report["kept"] + report["rejected"]
    rejects = [r for p in (tmp_path / "out" / "rejects").glob("*.zst") for r in read_jsonl_zst(p)]
    assert len(rejects) == report["rejected"]
    not_sampled = [r for r in rejects if r["reason"] == "not sampled"]
    assert len(not_sampled) == report["reasons"]["not sampled"] == report["rejected"] - 1


def test_unimax_repeats_the_small_category_for_exactly_max_epochs(tmp_path, corpus):
    cfg = config(corpus, method="unimax", max_epochs=2.0, budget_tokens=150_000)
    report = mix_corpus(cfg, tmp_path / "out", progress=False)
    cats = report["categories"]
    small = min(cats, key=lambda c: cats[c]["tokens_before"])
    assert small == "poetry" and cats[small]["epochs"] == 2.0
    copies = Counter(r["id"] for r in output_records(tmp_path / "out") if r["category"] == small)
    assert set(copies.values()) == {2} and len(copies) == cats[small]["documents"]
    for plan in cats.values():
        assert plan["tokens_after"] <= 2 * plan["tokens_before"]
    assert sum(p["tokens_after"] for p in cats.values()) == pytest.approx(150_000, rel=0.02)


def test_quality_weighted_sampling_prefers_high_scores(tmp_path, corpus):
    cfg = config(corpus, budget_tokens=25_000, max_epochs=1.0, quality_field="quality")
    picked: Counter = Counter()
    for seed in range(10):  # pooled over seeds: ~1,900 picks
        mix_corpus(cfg, tmp_path / f"gamma{seed}", seed=seed, progress=False)
        picked.update(r["quality"] > 0.5 for r in output_records(tmp_path / f"gamma{seed}"))
    # Scores 0.05 ... 0.95 in equal numbers; P(picked) ∝ quality below the cap, so the top
    # half is picked (0.55 + ... + 0.95) / (0.05 + ... + 0.45) = 3.8 / 1.2 times as often.
    assert picked[True] / picked[False] == pytest.approx(3.8 / 1.2, rel=0.15)
    top = config(corpus, quality_field="quality", quality_top_fraction=0.5, max_epochs=1.0)
    mix_corpus(top, tmp_path / "top", progress=False)
    assert min(r["quality"] for r in output_records(tmp_path / "top")) == pytest.approx(0.55)


def test_records_without_a_usable_score_are_rejected_by_name(tmp_path):
    texts = ["In the beginning God created the heaven and the earth."] * 4
    scores = [0.9, None, "high", -1.0]
    records = [{"text": t, "quality": q} for t, q in zip(texts, scores, strict=True)]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    cfg = MixConfig(inputs=[MixInput(str(path))], quality_field="quality", max_epochs=1.0)
    report = mix_corpus(cfg, tmp_path / "out", progress=False)
    assert (report["read"], report["kept"], report["quality_unusable"]) == (4, 1, 3)
    assert report["reasons"] == {"quality: missing or not a number >= 0": 3}
    assert [r["quality"] for r in output_records(tmp_path / "out")] == [0.9]


def test_same_seed_same_bytes_other_seed_other_sample(tmp_path, corpus):
    cfg = config(corpus, budget_tokens=30_000)

    def shard_bytes(name: str, seed: int) -> list[bytes]:
        mix_corpus(cfg, tmp_path / name, seed=seed, progress=False)
        return [p.read_bytes() for p in sorted((tmp_path / name / "shards").glob("*.zst"))]

    assert shard_bytes("a", 1) == shard_bytes("b", 1)
    assert shard_bytes("a", 1) != shard_bytes("c", 2)


def test_mix_config_loads_from_yaml_and_rejects_bad_settings(tmp_path, corpus):
    path = tmp_path / "mix.yaml"
    path.write_text(
        f"inputs:\n  - path: {corpus['bible']}\n"
        f"  - {{path: {corpus['poetry']}, category: poetry}}\n"
        "method: unimax\nbudget_tokens: 1e5\nmax_epochs: 3\nseed: 4\n"
    )
    cfg = load_config(MixConfig, path)
    assert cfg.inputs[1] == MixInput(str(corpus["poetry"]), "poetry")
    assert (cfg.method, cfg.budget_tokens, cfg.max_epochs, cfg.seed) == ("unimax", 100_000, 3.0, 4)
    with pytest.raises(ConfigError, match="unimax needs max_epochs"):
        load_config(MixConfig, path, ["max_epochs=null"])
    with pytest.raises(ConfigError, match="method"):
        load_config(MixConfig, path, ["method=random"])
