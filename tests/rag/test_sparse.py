"""BM25 by bm25s against a hand computation of Lucene's formula, phrase search in unsegmented
Chinese, Traditional text found by a Simplified query, and the relevance normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chuan.rag.analyzer import Analyzer
from chuan.rag.sparse import SparseIndex

DOCS = [
    "the cat sat on the mat",
    "the dog chased the cat and the cat ran",
    "a bird sang",
]


def lucene_bm25(query: list[str], docs: list[list[str]], k1=1.5, b=0.75) -> list[float]:
    """Okapi BM25 as Lucene computes it, written out independently of chuan and bm25s:
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)),
    score(d) = sum_t idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl)), each query term once."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    scores = []
    for doc in docs:
        total = 0.0
        for term in set(query):
            tf = doc.count(term)
            if tf == 0:
                continue
            df = sum(term in d for d in docs)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            total += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(total)
    return scores


@pytest.mark.parametrize("query", ["cat", "the cat", "bird cat mat", "dog dog", "unicorn"])
def test_bm25_scores_equal_the_hand_computation(query):
    analyzer = Analyzer(fold_traditional=False)
    docs = [analyzer.terms(d) for d in DOCS]
    index = SparseIndex.build(docs)
    terms = analyzer.terms(query)
    expected = lucene_bm25(terms, docs)
    np.testing.assert_allclose(index.scores(terms), expected, rtol=1e-5, atol=1e-6)
    # the filter's bound: the sum of idfs, with the largest idf (df = 0) for unknown terms
    n = len(docs)
    bound = sum(
        math.log(1 + (n - sum(t in d for d in docs) + 0.5) / (sum(t in d for d in docs) + 0.5))
        for t in set(terms)
    )
    assert index.score_limit(terms) == pytest.approx(bound)
    relevance = index.relevance(terms, index.scores(terms))
    np.testing.assert_allclose(relevance, np.asarray(expected) / bound, rtol=1e-5)
    assert (relevance < 1).all()


def test_a_four_character_phrase_is_found_inside_an_unsegmented_sentence():
    analyzer = Analyzer.default()
    texts = [
        "孔子曰学而时习之不亦说乎有朋自远方来不亦乐乎",
        "天下大势分久必合合久必分周末七国分争并入于秦",
        "白日依山尽黄河入海流欲穷千里目更上一层楼",
    ]
    index = SparseIndex.build([analyzer.terms(t) for t in texts])
    for phrase, where in (("黄河入海", 2), ("分久必合", 1), ("有朋自远", 0)):
        scores = index.scores(analyzer.terms(phrase))
        assert int(np.argmax(scores)) == where and np.count_nonzero(scores) == 1


def test_traditional_text_is_found_by_a_simplified_query():
    analyzer = Analyzer.default()
    texts = [
        "登鸛雀樓（王之渙）\n白日依山盡，黃河入海流。",
        "靜夜思（李白）\n床前明月光，疑是地上霜。",
    ]
    index = SparseIndex.build([analyzer.terms(t) for t in texts])
    for query, where in (("登鹳雀楼", 0), ("黄河入海流", 0), ("静夜思", 1)):
        scores = index.scores(analyzer.terms(query))
        assert int(np.argmax(scores)) == where and scores[where] > 0


def test_an_empty_index_and_an_empty_query_score_zero():
    index = SparseIndex.build([[], []])
    assert index.scores(["x"]).tolist() == [0.0, 0.0]
    assert index.relevance([], index.scores([])).tolist() == [0.0, 0.0]
