"""`chuan rag ask` and `chuan chat --kb` from the command line with a random tiny model: the
answer, then its cited sources as `[n] file:line`, every one a chunk the question retrieved;
`--json`; and the fixed answer, without calling the model, when nothing is relevant."""

from __future__ import annotations

import io
import json
import re

import pytest

from chuan.cli import main
from chuan.rag.answer import NO_SOURCE_ANSWER, Retrieval

SAMPLING = ["--temperature", "1", "--seed", "3", "--max-new-tokens", "40"]
SOURCE_LINE = re.compile(r"\[(\d+)\] (\S+):(\d+)  .+")


def listed_sources(out: str) -> list[tuple[int, str, int]]:
    """The `[n] file:line  snippet` lines after `sources:`."""
    assert "\nsources:\n" in out, out
    lines = out.split("\nsources:\n", 1)[1].splitlines()
    found = [SOURCE_LINE.fullmatch(line) for line in lines]
    assert all(found), lines
    return [(int(m[1]), m[2], int(m[3])) for m in found]


def test_rag_ask_prints_the_answer_and_its_resolving_sources(
    chat_model, glossary_kb, question, capsys
):
    main(["rag", "ask", str(chat_model), str(glossary_kb), question, *SAMPLING,
          "--cite-threshold", "0", "-k", "3"])  # fmt: skip
    out = capsys.readouterr().out
    hits = Retrieval.open(glossary_kb, k=3).search(question)
    listed = listed_sources(out)
    assert listed and all((hits[n - 1].source, hits[n - 1].line) == (f, ln) for n, f, ln in listed)
    answer = out.split("\nsources:\n", 1)[0]
    assert {int(n) for n in re.findall(r"\[(\d+)\]", answer)} <= {n for n, _, _ in listed}

    main(["rag", "ask", str(chat_model), str(glossary_kb), question, *SAMPLING,
          "--cite-threshold", "0", "-k", "3", "--json"])  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["question"] == question and record["text"] == answer.rstrip("\n")
    assert [(c["index"], c["source"], c["line"]) for c in record["citations"]] == listed


def test_rag_ask_without_a_relevant_source_does_not_call_the_model(
    chat_model, small_kb, capsys, monkeypatch
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be asked without sources")

    monkeypatch.setattr("chuan.infer.chat.stream_chat", no_model)
    main(["rag", "ask", str(chat_model), str(small_kb), "量子色动力学的渐近自由是什么？"])
    assert capsys.readouterr().out == NO_SOURCE_ANSWER + "\n"


def test_chat_with_a_kb_cites_each_answer(chat_model, glossary_kb, question, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{question}\n量子色动力学是什么？\n"))
    main(["chat", str(chat_model), "--kb", str(glossary_kb), *SAMPLING, "--cite-threshold", "0"])
    out = capsys.readouterr().out
    first, second = out.split("\nsources:\n", 1)[1].split("\n" + NO_SOURCE_ANSWER + "\n")
    assert second == ""
    assert all(SOURCE_LINE.fullmatch(line) for line in first.splitlines())


def test_kb_flags_are_documented():
    from chuan.cli import build_parser

    parser = build_parser()
    helps = {
        ("chat",): ["--kb", "--kb-k", "--kb-mode", "--kb-threshold", "--cite-threshold"],
        ("serve",): ["--kb", "--kb-k", "--kb-mode", "--kb-threshold", "--cite-threshold"],
        ("rag", "ask"): ["-k", "--mode", "--threshold", "--cite-threshold", "--json", "--system"],
    }
    for path, flags in helps.items():
        text = _subparser(parser, path).format_help()
        for flag in flags:
            assert flag in text, (path, flag)


def _subparser(parser, path):
    for name in path:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("argv", [["rag", "ask", "--help"], ["serve", "--help"]])
def test_help_exits_cleanly(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and "--cite-threshold" in capsys.readouterr().out
