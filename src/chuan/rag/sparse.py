"""The sparse index: BM25 over the analyzer's terms, built and scored by `bm25s`.

bm25s precomputes every (chunk, term) BM25 contribution into a scipy-style CSC matrix, so a
query is a sum of a few columns (numpy, no Python loop over chunks). It is given term ids from a
vocabulary chuan builds itself, sorted, because bm25s's own vocabulary follows the iteration
order of a Python set of strings, which changes between processes, and an index must come out
byte for byte the same from the same input.

The variant is Lucene's (`method="lucene"`), for every chunk d and query term t present in d:

    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(d, q) = sum over t in q of idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

(Lucene drops the constant factor (k1 + 1) of the Robertson form: same ranking, and each
term's contribution stays below its idf). A query is a set of terms: a repeated term counts once.

The relevance filter needs a score that means the same for every query. `relevance(d, q)` is
the BM25 score divided by its limit as the frequencies of all of q's terms grow, the sum of
their idfs, where a term no chunk holds gets the largest idf there is (df = 0): it is the share
of the query's information that the chunk matches, in [0, 1). A query about something absent
from the knowledge base is made of rare or unknown terms that no chunk matches, so its best
relevance stays low whatever the size of the collection.
"""

from __future__ import annotations

import math
from pathlib import Path

import bm25s
import numpy as np

K1 = 1.5
B = 0.75
METHOD = "lucene"


def idf(df: np.ndarray | float, n_docs: int) -> np.ndarray | float:
    """Lucene's idf (the formula in the module docstring); df = 0 gives the largest value."""
    return np.log1p((n_docs - np.asarray(df) + 0.5) / (np.asarray(df) + 0.5))


def build_vocab(token_lists: list[list[str]]) -> dict[str, int]:
    """Term -> id, ids in sorted term order (deterministic across processes)."""
    return {term: i for i, term in enumerate(sorted({t for terms in token_lists for t in terms}))}


class SparseIndex:
    """BM25 over chunks, with the vocabulary and document frequencies the filter needs."""

    def __init__(self, retriever, vocab: dict[str, int], df: np.ndarray, n_docs: int):
        self.retriever = retriever
        self.vocab = vocab
        self.df = df
        self.n_docs = n_docs

    @classmethod
    def build(cls, token_lists: list[list[str]], *, k1: float = K1, b: float = B) -> SparseIndex:
        vocab = build_vocab(token_lists)
        ids = [[vocab[t] for t in terms] for terms in token_lists]
        retriever = bm25s.BM25(k1=k1, b=b, method=METHOD)
        if vocab:
            # a tuple (ids, vocab) is taken as is; no empty-term entry (chuan handles empty
            # queries itself)
            retriever.index((ids, vocab), create_empty_token=False, show_progress=False)
        df = np.zeros(len(vocab), dtype=np.int64)
        for terms in ids:
            df[np.unique(np.asarray(terms, dtype=np.int64))] += 1
        return cls(retriever, vocab, df, len(token_lists))

    def save(self, path: Path) -> None:
        """bm25s's files (arrays as .npy, vocabulary and parameters as JSON) plus `df.npy`."""
        path.mkdir(parents=True, exist_ok=True)
        if self.vocab:
            self.retriever.save(str(path), show_progress=False)
        np.save(path / "df.npy", self.df)

    @classmethod
    def load(cls, path: Path, n_docs: int, *, k1: float, b: float) -> SparseIndex:
        """What `save` wrote (the vocabulary is bm25s's JSON, the same mapping as built)."""
        df = np.load(path / "df.npy")
        if not (path / "params.index.json").is_file():  # a knowledge base without terms
            return cls(bm25s.BM25(k1=k1, b=b, method=METHOD), {}, df, n_docs)
        retriever = bm25s.BM25.load(str(path), mmap=False)
        return cls(retriever, retriever.vocab_dict, df, n_docs)

    def params(self) -> dict:
        return {"k1": self.retriever.k1, "b": self.retriever.b, "method": self.retriever.method}

    def scores(self, terms: list[str]) -> np.ndarray:
        """BM25 score of every chunk for the set of `terms` (float32, zeros when none match)."""
        ids = sorted({self.vocab[t] for t in terms if t in self.vocab})
        if not ids:
            return np.zeros(self.n_docs, dtype=np.float32)
        return self.retriever.get_scores(ids)

    def score_limit(self, terms: list[str]) -> float:
        """The sum of idfs of the set of `terms`: the bound `relevance` divides by."""
        unique = set(terms)
        known = [self.vocab[t] for t in unique if t in self.vocab]
        total = float(np.sum(idf(self.df[known], self.n_docs))) if known else 0.0
        return total + (len(unique) - len(known)) * float(idf(0, self.n_docs))

    def relevance(self, terms: list[str], scores: np.ndarray) -> np.ndarray:
        """`scores` divided by `score_limit(terms)`, in [0, 1) (zeros for a query without
        terms)."""
        limit = self.score_limit(terms)
        if limit <= 0 or not math.isfinite(limit):
            return np.zeros_like(scores, dtype=np.float32)
        return (scores / limit).astype(np.float32)
