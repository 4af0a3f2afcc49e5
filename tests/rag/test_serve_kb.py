"""`chuan serve --kb` end to end: a live server on a loopback port with a tiny random model and
a small knowledge base, read with the official `openai` client. The model's text is noise, so
the question retrieves the glossary of the tokenizer's pieces first (see conftest.py):
whatever the model writes shares terms with it and is cited (the citation threshold is 0).
The tests check the citation side: `citations` in the response (non-streamed) and in the last
chunk (streamed), each resolving to a chunk the knowledge base retrieved for the question, no
`[n]` in the text that is not listed, the fixed answer when nothing is relevant, and
`POST /v1/kb/search` behind the API key."""

from __future__ import annotations

import re

import httpx2
import openai
import pytest

from chuan.rag.answer import NO_SOURCE_ANSWER, Retrieval
from helpers.serving import serving

KEY = "kb-key"
NAME = "tiny-kb"
CITATION_FIELDS = {"index", "source", "line", "start", "end", "text", "score", "relevance"}


@pytest.fixture(scope="module")
def retrieval(glossary_kb) -> Retrieval:
    return Retrieval.open(glossary_kb, k=3, cite_threshold=0.0)


@pytest.fixture(scope="module")
def base_url(chat_model, retrieval) -> str:
    with serving(chat_model, max_batch=4, model_name=NAME, api_key=KEY, grounding=retrieval) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{base_url}/v1", max_retries=0, timeout=60)


def ask(client, question: str, **kwargs):
    messages = [{"role": "user", "content": question}]
    return client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=60, temperature=1.0, seed=11, **kwargs
    )


def check_citations(retrieval: Retrieval, question, text: str, citations: list[dict]) -> None:
    """Every citation is the retrieved chunk its number names, with its file:line; every
    `[n]` left in the text is listed."""
    hits = retrieval.search(question)
    assert hits[0].source.endswith("glossary.jsonl")
    assert citations, "a threshold-0 checker cites the sentences that share terms"
    for c in citations:
        assert set(c) >= CITATION_FIELDS
        hit = hits[c["index"] - 1]
        assert (c["source"], c["line"], c["start"], c["end"], c["text"]) == (
            hit.source,
            hit.line,
            hit.start,
            hit.end,
            hit.text,
        )
        chunk = retrieval.kb.chunks[c["chunk"]]
        assert (chunk["source"], chunk["line"]) == (c["source"], c["line"])
    listed = {c["index"] for c in citations}
    assert {int(n) for n in re.findall(r"\[(\d+)\]", text)} <= listed


def test_chat_completion_lists_checked_citations(client, retrieval, question):
    out = ask(client, question)
    citations = out.model_extra["citations"]
    check_citations(retrieval, question, out.choices[0].message.content, citations)
    assert out.usage.completion_tokens > 0


def test_streamed_chat_carries_citations_in_its_last_chunk(client, retrieval, question):
    chunks = list(ask(client, question, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert all("citations" not in (c.model_extra or {}) for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check_citations(retrieval, question, text, last.model_extra["citations"])
    whole = ask(
        client, question
    )  # same seed: streaming checks sentence by sentence, to the same text
    assert text == whole.choices[0].message.content
    assert last.model_extra["citations"] == whole.model_extra["citations"]


def test_no_relevant_source_is_said_without_generating(client):
    question = "量子色动力学的渐近自由是什么？"
    out = ask(client, question, n=2)
    assert [c.message.content for c in out.choices] == [NO_SOURCE_ANSWER] * 2
    assert out.model_extra["citations"] == [] and out.usage.completion_tokens == 0
    chunks = list(ask(client, question, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        NO_SOURCE_ANSWER
    )
    assert chunks[-1].model_extra["citations"] == []


def test_kb_search_returns_results_behind_the_api_key(base_url, retrieval):
    url = f"{base_url}/v1/kb/search"
    body = {"query": "《登鹳雀楼》是谁写的？", "k": 2}
    response = httpx2.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert results == [h.to_dict() for h in retrieval.search(body["query"], 2)]
    assert results[0]["text"].startswith("登鸛雀樓") and results[0]["line"] == 2
    assert httpx2.post(url, json=body).status_code == 401
    wrong = httpx2.post(url, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    bad = httpx2.post(url, json={"query": "x", "k": 0}, headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "k"


def test_a_conversation_ending_with_the_assistant_is_refused(client, question):
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=4)
    assert err.value.param == "messages" and "user message" in err.value.message
