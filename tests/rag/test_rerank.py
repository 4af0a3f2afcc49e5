"""The LM reranker: its two scores against a hand computation from the model's logits, its
ordering and filtering, and `chuan rag search --rerank`."""

from __future__ import annotations

import json

import pytest
import torch

from chuan.cli import main
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.rag.answer import Retrieval
from chuan.rag.kb import KnowledgeBase
from chuan.rag.rerank import JUDGE_PROMPT, NO, QUESTION, YES, Reranker
from chuan.tokenizer.chat_templates import template_for

PASSAGES = ["In the beginning God created the heaven and the earth.", "床前明月光，疑是地上霜。"]
ASKED = "Who created the heaven and the earth?"


@pytest.fixture(scope="module")
def model_and_tokenizer(chat_model):
    return load_model(chat_model, dtype="fp32"), load_saved_tokenizer(chat_model)


def _logps(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)


def _mean_question_logp(model, prefix: list[int], question: list[int]) -> float:
    """Mean log-probability of `question`'s tokens after `prefix`, from one forward's logits."""
    logps = _logps(model, prefix + question)
    rows = range(len(prefix) - 1, len(prefix) + len(question) - 1)
    return sum(float(logps[r, t]) for r, t in zip(rows, question, strict=True)) / len(question)


def test_likelihood_score_is_the_gain_in_question_log_probability(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    question = encode(ASKED)
    baseline = _mean_question_logp(model, encode(QUESTION.lstrip("\n")), question)
    expected = [
        _mean_question_logp(model, encode(p) + encode(QUESTION), question) - baseline
        for p in PASSAGES
    ]
    scores = Reranker(model, tokenizer, "likelihood").scores(ASKED, PASSAGES)
    assert scores == pytest.approx(expected, abs=1e-4)


def test_judge_score_is_the_log_odds_of_yes(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    template = template_for(tokenizer)
    yes = sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in YES})
    no = sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in NO})
    expected = []
    for passage in PASSAGES:
        content = JUDGE_PROMPT.format(passage=passage, question=ASKED)
        ids = template.prompt_ids(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        last = _logps(model, ids)[-1]
        expected.append(float(torch.logsumexp(last[yes], 0) - torch.logsumexp(last[no], 0)))
    scores = Reranker(model, tokenizer, "judge").scores(ASKED, PASSAGES)
    assert scores == pytest.approx(expected, abs=1e-4)


class FixedScores(Reranker):
    def __init__(self, scores: list[float]):
        super().__init__(None, None, "likelihood")
        self.fixed = scores

    def scores(self, question, passages):
        return self.fixed[: len(passages)]


def test_rerank_orders_by_score_and_drops_what_the_model_finds_irrelevant(small_kb):
    kb = KnowledgeBase.open(small_kb)
    hits = kb.search("God created the heaven and the earth", 4, threshold=0)
    assert len(hits) == 4
    reranked = FixedScores([-0.5, 0.2, 1.5, 0.0]).rerank("q", hits)
    assert [h.chunk for h in reranked] == [hits[2].chunk, hits[1].chunk]
    assert [h.rank for h in reranked] == [1, 2]
    assert FixedScores([-1.0] * 4).rerank("q", hits) == []  # the filter may return nothing
    retrieval = Retrieval(kb, k=1, threshold=0, reranker=FixedScores([0.1, 0.9, 0.3, 0.2]),
                          rerank_depth=4)  # fmt: skip
    assert [h.chunk for h in retrieval.search("God created the heaven and the earth")] == [
        hits[1].chunk
    ]


def test_rag_search_reranks_with_a_model_dir(small_kb, chat_model, capsys):
    query = "God created the heaven and the earth"
    main(["rag", "search", str(small_kb), query, "-k", "5", "--threshold", "0", "--json"])
    plain = json.loads(capsys.readouterr().out)["hits"]
    flags = ["--rerank", "likelihood", "--rerank-model", str(chat_model), "--rerank-depth", "5"]
    main(["rag", "search", str(small_kb), query, "-k", "5", "--threshold", "0", "--json", *flags])
    reranked = json.loads(capsys.readouterr().out)["hits"]
    assert {h["chunk"] for h in reranked} <= {h["chunk"] for h in plain}
    assert [h["rank"] for h in reranked] == list(range(1, len(reranked) + 1))
    with pytest.raises(SystemExit, match="--rerank-model"):
        main(["rag", "search", str(small_kb), query, "--rerank", "judge"])
