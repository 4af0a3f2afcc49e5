"""The corpus verbs chained through the `chuan` command line on real bilingual text:
clean -> dedup -> quality train / score -> mix -> pack, every stage's counts adding up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chuan.cli import main
from chuan.data.shards import output_records
from helpers.corpus import llama_tokenizer, write_jsonl


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Bible chapters in English and Chinese (the bundled sample), exact and lightly edited
    copies, and junk."""
    root = tmp_path_factory.mktemp("raw")
    sample = Path(__file__).resolve().parents[2] / "src" / "chuan" / "assets" / "sample"
    docs = []
    for name in ("bible_kjv_en.jsonl", "bible_cuvs_zh.jsonl"):
        lines = (sample / name).read_text(encoding="utf-8").splitlines()[:60]
        docs += [json.loads(line) for line in lines]
    copies = [{**d, "text": d["text"].replace("the", "teh", 1)} for d in docs[:20]]
    copies += [{**d, "text": d["text"].replace("的", "地", 1)} for d in docs[60:70]]
    junk = [
        {"text": "Accept cookies\nprivacy policy\nsign in\n" * 30, "category": "en"},
        {"text": "lorem ipsum dolor sit amet " * 80, "category": "en"},
        {"text": "<div>{var x = 1;}</div>\n" * 60, "category": "en"},
        {"text": "1234567890 " * 200, "category": "en"},
    ]
    return write_jsonl(root / "raw.jsonl", docs + docs[:10] + copies + junk)


def test_clean_dedup_score_mix_pack(tmp_path, raw, capsys, test_data):
    clean, dedup = tmp_path / "clean", tmp_path / "dedup"
    main(["data", "clean", str(raw), "--out", str(clean), "--quiet"])
    report = _report(clean)
    assert report["read"] == report["kept"] + report["rejected"]
    assert report["rejected"] >= 4  # the junk
    main(["data", "dedup", str(clean / "shards"), "--out", str(dedup), "--workers", "1"])
    report = _report(dedup)
    assert report["read"] == report["kept"] + report["rejected"]
    # 40 planted copies (10 exact, 30 edited); clean drops a few originals with their copies
    assert report["exact_duplicates"] + report["near_duplicates"] >= 34

    good = write_jsonl(tmp_path / "good.jsonl", list(output_records(dedup))[:80])
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"text": " ".join(sorted(r["text"].split(), key=len))} for r in output_records(dedup)][
            :80
        ],
    )
    model = tmp_path / "quality-model"
    main(["data", "quality", "train", "--good", str(good), "--bad", str(bad), "--out", str(model)])
    scored = tmp_path / "scored"
    main(
        [
            "data",
            "quality",
            "score",
            str(dedup / "shards"),
            "--model",
            str(model),
            "--out",
            str(scored),
        ]
    )
    assert all(0.0 <= r["quality"] <= 1.0 for r in output_records(scored))

    recipe = tmp_path / "mix.yaml"
    recipe.write_text(
        f"inputs: [{{path: {scored / 'shards'}}}]\nmethod: temperature\ntemperature: 2.0\n"
        "quality_field: quality\n"
    )
    mixed = tmp_path / "mixed"
    main(["data", "mix", "--config", str(recipe), "--out", str(mixed), "budget_tokens=20000"])
    report = _report(mixed)
    assert set(report["categories"]) == {"en", "zh"}
    packed = tmp_path / "packed"
    main(
        [
            "data",
            "pack",
            str(mixed / "shards"),
            "--tokenizer",
            str(llama_tokenizer(test_data, tmp_path)),
            "--out",
            str(packed),
            "--max-length",
            "128",
        ]
    )
    assert _report(packed)["documents"] == sum(1 for _ in output_records(mixed))
    assert "wrote" in capsys.readouterr().out
