"""`chuan rag eval --model`: answers scored for exact match and citation precision per question
type, with a deterministic oracle generator (it answers from the first source it is given) and
from the command line with a random tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chuan.cli import main
from chuan.fileio import write_jsonl
from chuan.rag.answer import NO_SOURCE_ANSWER
from chuan.rag.evaluate import ANSWERS, evaluate
from chuan.rag.kb import KnowledgeBase
from chuan.rag.qa import make_qa

POETRY = Path(__file__).resolve().parents[2] / "src/chuan/assets/sample/poetry_zh.jsonl"
# The first source block of a grounded prompt: "[1] file:line\n登鸛雀樓（王之渙）\n...".
FIRST_SOURCE = re.compile(r"\[1\] \S+:\d+\n(.+?)（(.+?)）\n(.*?)\n\n(?:\[2\]|问题)", re.S)


@pytest.fixture(scope="module")
def qa(small_kb, tmp_path_factory) -> Path:
    """Title and masked-verse questions on the KB's 40 poems, unanswerable ones on 20 others."""
    root = tmp_path_factory.mktemp("qa")
    others = POETRY.read_text(encoding="utf-8").splitlines()[40:60]
    absent = write_jsonl(root / "absent.jsonl", [json.loads(line) for line in others])
    make_qa([small_kb.parent / "poems.jsonl"], root / "qa.jsonl", absent=[absent], per_type=8)
    return root / "qa.jsonl"


def oracle(messages):
    """Who wrote the first source, and its text, citing [1]; it never sees the gold."""
    found = FIRST_SOURCE.search(messages[-1]["content"])
    if found is None:
        yield "I do not know."
        return
    title, author, text = found.groups()
    yield f"《{title}》是{author}写的[1]。"
    yield f"全文：{text.replace(chr(10), '')}"


def test_answers_are_scored_per_type(small_kb, qa, tmp_path):
    report = evaluate(small_kb, qa, tmp_path / "ev", k=3, generate=oracle, limit=5, model="oracle")
    types = report["answers"]["types"]
    assert set(types) == {"title", "masked_verse", "unanswerable"}
    assert all(row["answered"] == 5 for row in types.values())

    kb = KnowledgeBase.open(small_kb)
    questions = [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines()]
    titles = [q for q in questions if q["type"] == "title"][:5]
    # The oracle is right exactly when the top hit is the gold poem, and then cites it.
    right = [kb.search(q["question"], 3)[0].line == q["gold"][0]["line"] for q in titles]
    assert types["title"]["exact_match"] == sum(right) / 5 > 0.5
    assert types["title"]["citation_precision_doc"] == sum(right) / 5
    assert types["masked_verse"]["exact_match"] == types["masked_verse"]["citation_precision_doc"]
    unanswerable = [q for q in questions if q["type"] == "unanswerable"][:5]
    abstained = [not kb.search(q["question"], 3) for q in unanswerable]
    assert types["unanswerable"]["exact_match"] == sum(abstained) / 5
    assert types["unanswerable"]["citation_precision_chunk"] is None  # no gold to cite

    answers = [json.loads(line) for line in (tmp_path / "ev" / ANSWERS).read_text().splitlines()]
    assert len(answers) == 15
    for record, no_source in zip(answers[10:], abstained, strict=True):
        assert (record["text"] == NO_SOURCE_ANSWER) == no_source
    markdown = (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")
    assert "## Cited answers" in markdown and "| title | 5 |" in markdown


def test_eval_with_a_model_from_the_command_line(chat_model, small_kb, qa, tmp_path, capsys):
    out = tmp_path / "ev"
    main(["rag", "eval", str(small_kb), str(qa), "--out", str(out), "--model", str(chat_model),
          "--limit", "2", "--max-new-tokens", "8", "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "answers, title: 2 answered" in printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["answers"]["model"] == str(chat_model) and report["answers"]["limit"] == 2
    assert {row["answered"] for row in report["answers"]["types"].values()} == {2}
    assert len((out / ANSWERS).read_text(encoding="utf-8").splitlines()) == 6
