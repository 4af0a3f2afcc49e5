"""The acceptance run on the bundled sample: `chuan rag index`, `make-qa` and `eval` from the
command line; title and masked-verse questions are found (recall@5 >= 0.9), questions about
titles absent from the KB get no answer (abstention precision >= 0.9), cross-lingual recall is
reported."""

from __future__ import annotations

import json
from pathlib import Path

from chuan.cli import main
from chuan.rag.evaluate import read_qa

SAMPLE = Path(__file__).resolve().parents[2] / "src/chuan/assets/sample"


def test_retrieval_quality_on_the_bundled_sample(tmp_path, test_data, capsys):
    # poems of 全唐诗 (tests/data), in the sample's layout: most of their titles are not in it
    tang = test_data / "text/zh_classical/chinese_poetry/poet.tang.0.json"
    absent = tmp_path / "absent.jsonl"
    absent.write_text("".join(
        json.dumps({"text": f"{p['title']}（{p['author']}）\n" + "\n".join(p["paragraphs"])},
                   ensure_ascii=False) + "\n"
        for p in json.loads(tang.read_text())
    ))  # fmt: skip
    kb, qa, report = tmp_path / "kb", tmp_path / "qa.jsonl", tmp_path / "report"
    main(["rag", "index", str(SAMPLE), "--out", str(kb), "--quiet"])
    main(["rag", "make-qa", str(SAMPLE), "--out", str(qa), "--absent", str(absent)])
    questions = read_qa(qa)
    assert {q["type"] for q in questions} == {"title", "masked_verse", "cross_lingual",
                                              "unanswerable"}  # fmt: skip
    main(["rag", "eval", str(kb), str(qa), "--out", str(report)])
    result = json.loads((report / "report.json").read_text())
    types = result["types"]
    assert types["title"]["recall@5"] >= 0.9, types
    assert types["masked_verse"]["recall@5"] >= 0.9, types
    assert 0 <= types["cross_lingual"]["recall@5"] <= 1  # reported (lexical BM25: near 0)
    assert result["abstention"]["unanswerable"] == 100
    assert result["abstention"]["precision"] >= 0.9, result["abstention"]
    assert result["abstention"]["recall"] >= 0.8, result["abstention"]
    assert "| title |" in (report / "report.md").read_text()
    assert "abstention precision" in capsys.readouterr().out
