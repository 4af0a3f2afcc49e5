"""Cited answers without a model: the citation checker on hand-written replies, and `ask` /
`Retrieval` with a deterministic stub generator over a real knowledge base. Dangling `[n]`
are removed, missing citations are added only at or above the overlap threshold, streamed
text is checked exactly as a whole reply is, every listed source resolves to its file and
line, and a question the relevance filter rejects is answered without calling the generator."""

from __future__ import annotations

import json
import re

import pytest

from chuan.rag.analyzer import Analyzer
from chuan.rag.answer import (
    INSTRUCTION,
    NO_SOURCE_ANSWER,
    Retrieval,
    ask,
    fit_sources,
    format_citations,
    grounded_messages,
    number_sources,
)
from chuan.rag.cite import CitationChecker, overlap
from chuan.rag.kb import KnowledgeBase

TERMS = Analyzer(fold_traditional=True).terms
SOURCES = {
    1: "登鸛雀樓（王之渙）\n白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。",
    2: "In the beginning God created the heaven and the earth.",
}


def checker(threshold: float = 0.5) -> CitationChecker:
    return CitationChecker(SOURCES, TERMS, threshold)


def test_dangling_citations_are_removed_and_valid_ones_kept():
    c = checker(threshold=1.0)  # nothing is added: only the given markers are judged
    text = c.check("王之涣写了这首诗[1][7]。It is old [9]. God made it [2, 5]. 黄河【1、3】！")
    assert text == "王之涣写了这首诗[1]。It is old. God made it [2]. 黄河[1]！"
    assert c.removed == [7, 9, 5, 3] and c.added == [] and c.cited == [1, 2]


def test_a_missing_citation_is_added_at_the_threshold_and_not_below():
    sentence = "白日依山尽，黄河东流去。"  # bigrams: 白日 日依 依山 山尽 黄河 河东 东流 流去
    share = overlap(set(TERMS(sentence)), set(TERMS(SOURCES[1])))
    assert share == 5 / 8
    at = checker(threshold=share)
    assert at.check(sentence) == "白日依山尽，黄河东流去[1]。" and at.added == [1]
    above = checker(threshold=share + 0.01)
    assert above.check(sentence) == sentence and above.added == [] and above.cited == []


def test_english_sentences_are_attributed_by_words():
    """ "The end" shares half its words with source 2, but only one ("the"): not a source."""
    c = checker()
    text = c.check("God created the heaven and the earth. Cats like warm milk.\nThe end")
    assert text == "God created the heaven and the earth[2]. Cats like warm milk.\nThe end"
    assert c.added == [2] and c.cited == [2]


def test_a_sentence_without_two_shared_terms_is_never_cited_even_at_threshold_zero():
    c = checker(threshold=0.0)
    text = "…… !!! 猫喜欢牛奶。黄色的猫。The cat sat."
    assert c.check(text) == text and c.cited == []
    assert c.check("God and heaven.") == "God and heaven[2]."


def test_a_citation_after_the_full_stop_belongs_to_that_sentence():
    c = checker(threshold=1.0)
    assert (
        c.check("He made light.[2] 黄河入海流。【1】Then [4]")
        == "He made light.[2] 黄河入海流。[1]Then"
    )
    assert c.cited == [2, 1] and c.removed == [4]


@pytest.mark.parametrize(
    "reply",
    [
        "王之涣写了登鹳雀楼[1]。God created the heaven [2, 8]. 3.14 is pi. 黄河入海流[6]！",
        "In the beginning God created the earth.[2] [3] 白日依山尽。\n\n欲穷千里目，更上一层楼",
        "A [1",
    ],
)
def test_streamed_pieces_are_checked_as_the_whole_reply(reply):
    whole = checker().check(reply)
    c = checker()
    streamed = "".join(c.push(ch) for ch in reply) + c.flush()
    assert streamed == whole


def test_sources_fit_by_dropping_the_lowest_ranked_then_cutting(small_kb):
    kb = KnowledgeBase.open(small_kb)
    sources = number_sources(kb.search("God created the heaven and the earth", 3))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Q?"}]
    grounded = grounded_messages(messages, sources)
    assert grounded[0] == messages[0] and grounded[1]["content"].startswith(INSTRUCTION)
    assert grounded[1]["content"].endswith("Q?") and "[3] " in grounded[1]["content"]
    fitted, kept = fit_sources(messages, sources, lambda m: len(m[-1]["content"]) < 500)
    assert [s.index for s in kept] == [1] and kept[0].text.endswith("…")
    assert len(fitted[-1]["content"]) < 500 and kept[0].text[:-1] in sources[0].text


def _resolves(citation: dict) -> None:
    """The citation's file has, at its line, a document whose text at [start, end) is the
    citation's text."""
    with open(citation["source"], encoding="utf-8") as f:
        record = json.loads(f.readlines()[citation["line"] - 1])
    assert record["text"][citation["start"] : citation["end"]] == citation["text"]


def test_ask_with_a_stub_generator_lists_sources_that_resolve(small_kb):
    retrieval = Retrieval.open(small_kb, k=3)
    seen = []

    def generate(messages):
        seen.append(messages)
        yield from ["《登鹳雀楼》是王之涣写的[1]。", "白日依山尽，", "黄河入海流。", "见 [12]。"]

    answer = retrieval.ask([{"role": "user", "content": "《登鹳雀楼》是谁写的？"}], generate)
    assert len(seen) == 1 and "[1] " in seen[0][-1]["content"]
    assert answer.text == "《登鹳雀楼》是王之涣写的[1]。白日依山尽，黄河入海流[1]。见。"
    assert answer.removed == [12] and answer.added == [1]
    assert [c["index"] for c in answer.citations] == [1]
    hits = retrieval.search("《登鹳雀楼》是谁写的？")
    assert [(s["index"], s["line"]) for s in answer.sources] == [(h.rank, h.line) for h in hits]
    assert {c["index"] for c in answer.citations} <= {s["index"] for s in answer.sources}
    top = hits[0]
    assert answer.citations[0]["source"] == top.source and answer.citations[0]["line"] == top.line
    for citation in answer.citations:
        _resolves(citation)
    listed = format_citations(answer.citations)
    assert re.fullmatch(r"\[1\] \S+poems\.jsonl:2  登鸛雀樓.*", listed)


def test_no_relevant_source_answers_without_the_generator(small_kb):
    def generate(messages):
        raise AssertionError("the generator must not be called without sources")

    retrieval = Retrieval.open(small_kb)
    question = [{"role": "user", "content": "量子色动力学的渐近自由是什么？"}]
    assert retrieval.search(question[0]["content"]) == []
    answer = retrieval.ask(question, generate)
    assert answer.text == NO_SOURCE_ANSWER and answer.citations == answer.sources == []
    shown = []
    direct = ask(question, [], generate, terms=TERMS, on_text=shown.append)
    assert direct.text == NO_SOURCE_ANSWER and shown == [NO_SOURCE_ANSWER]
    assert "没有找到" in NO_SOURCE_ANSWER and "No relevant source" in NO_SOURCE_ANSWER
