"""Answers with citations: numbered sources into the prompt, the reply's citations checked.

One turn goes: retrieve with the user's last message -> number the hits `[1]..[k]` -> put them,
with an instruction to cite them, into that message (`grounded_messages`) -> the caller renders
the messages in the model's own chat template and generates -> `CitationChecker` (chuan.rag.cite)
checks the reply as it streams -> the cited sources are listed as `[n] file:line`. When the
relevance filter returns nothing, the turn's `fixed_reply` says so in Chinese and English and no
model is asked: a model given no sources would invent an answer that looks grounded.

Generation is not done here: `ask` takes a `generate(messages) -> text pieces` callable, and the
server drives `GroundedTurn` itself, so both `chuan rag ask` / `chuan chat --kb` and
`chuan serve --kb` share this code, and tests run it with a deterministic stub.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chuan.errors import InputError
from chuan.rag.cite import DEFAULT_CITE_THRESHOLD, CitationChecker
from chuan.rag.kb import DEFAULT_THRESHOLD, Hit, KnowledgeBase
from chuan.rag.rerank import Reranker

NO_SOURCE_ANSWER = (
    "知识库中没有找到与这个问题相关的资料，因此无法回答。"
    "No relevant source was found in the knowledge base, so this question is not answered."
)
INSTRUCTION = (
    "请只根据下面的资料回答问题，并在用到资料的句子后用方括号注明资料编号，如 [1]；"
    "资料中没有答案时，请直接说明。\n"
    "Answer the question from the sources below only, and end each sentence that uses a source "
    "with its number in brackets, like [1]; if the sources do not hold the answer, say so."
)
QUESTION_LABEL = "问题 / Question: "
# A source is never cut below this many characters to fit the context: past that point the
# prompt does not fit anyway, and the generator's own limit reports it.
MIN_SOURCE_CHARS = 32
SNIPPET_CHARS = 60

Fits = Callable[[list[dict]], bool]


@dataclass(frozen=True)
class Source:
    """A retrieved chunk numbered for the prompt; `text` is what the prompt shows (the chunk,
    or its start when the whole did not fit the context)."""

    index: int
    hit: Hit
    text: str

    def reference(self) -> dict:
        """Where the source is: its number, file, line and character span."""
        hit = self.hit
        return {"index": self.index, "source": hit.source, "line": hit.line, "start": hit.start,
                "end": hit.end}  # fmt: skip

    def citation(self) -> dict:
        """The citation as the API and `--json` give it: the reference, text and scores."""
        hit = self.hit
        return {
            **self.reference(),
            "text": hit.text,
            "score": hit.score,
            "relevance": hit.relevance,
            "chunk": hit.chunk,
        }


def number_sources(hits: Sequence[Hit]) -> list[Source]:
    """The hits numbered from 1 in rank order."""
    return [Source(index, hit, hit.text.strip()) for index, hit in enumerate(hits, start=1)]


def grounded_messages(messages: Sequence[dict], sources: Sequence[Source]) -> list[dict]:
    """`messages` with the last (user) message replaced by the instruction, the numbered
    sources and the question. Only that message changes, so a system prompt and the earlier
    turns (kept as they were asked) render in the chat template as before."""
    blocks = "\n\n".join(f"[{s.index}] {s.hit.location}\n{s.text}" for s in sources)
    last = dict(messages[-1])
    last["content"] = f"{INSTRUCTION}\n\n{blocks}\n\n{QUESTION_LABEL}{last['content']}"
    return [*messages[:-1], last]


def fit_sources(
    messages: Sequence[dict], sources: list[Source], fits: Fits | None
) -> tuple[list[dict], list[Source]]:
    """The grounded messages and the sources they hold, fitted with `fits` (a check that the
    rendered prompt leaves room for the reply): the lowest-ranked sources go first; a single
    source that still does not fit is cut to its first half, again and again."""
    while True:
        grounded = grounded_messages(messages, sources)
        if fits is None or fits(grounded):
            return grounded, sources
        if len(sources) > 1:
            sources = sources[:-1]
        elif len(sources[0].text) > MIN_SOURCE_CHARS:
            text = sources[0].text
            sources = [dataclasses.replace(sources[0], text=text[: len(text) // 2] + "…")]
        else:
            return grounded, sources


@dataclass
class GroundedTurn:
    """One turn to answer: the messages to generate from and the sources they number.

    With no sources, `fixed_reply` is the answer and nothing is generated."""

    messages: list[dict]
    sources: list[Source]
    terms: Callable[[str], list[str]]
    cite_threshold: float = DEFAULT_CITE_THRESHOLD

    @property
    def fixed_reply(self) -> str | None:
        return None if self.sources else NO_SOURCE_ANSWER

    def checker(self) -> CitationChecker:
        """A checker for one reply (a server makes one per choice)."""
        texts = {s.index: s.hit.text for s in self.sources}
        return CitationChecker(texts, self.terms, self.cite_threshold)

    def citations(self, cited: Iterable[int]) -> list[dict]:
        """The cited sources, by number."""
        wanted = set(cited)
        return [s.citation() for s in self.sources if s.index in wanted]


def ground(
    messages: Sequence[dict],
    hits: Sequence[Hit],
    *,
    terms: Callable[[str], list[str]],
    cite_threshold: float = DEFAULT_CITE_THRESHOLD,
    fits: Fits | None = None,
) -> GroundedTurn:
    """The turn answering `messages` (whose last message is the user's) from `hits`."""
    if not messages or messages[-1].get("role") != "user":
        raise InputError("a grounded answer needs a conversation that ends with a user message")
    if not hits:
        return GroundedTurn(list(messages), [], terms, cite_threshold)
    grounded, sources = fit_sources(messages, number_sources(hits), fits)
    return GroundedTurn(grounded, sources, terms, cite_threshold)


@dataclass
class Answer:
    """A checked answer: its text, the sources it cites, the sources its prompt held (their
    references; empty when nothing relevant was found), and what the checker changed."""

    question: str
    text: str
    citations: list[dict]
    sources: list[dict]
    removed: list[int]
    added: list[int]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def ask(
    messages: Sequence[dict],
    hits: Sequence[Hit],
    generate: Callable[[list[dict]], Iterable[str]],
    *,
    terms: Callable[[str], list[str]],
    cite_threshold: float = DEFAULT_CITE_THRESHOLD,
    fits: Fits | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Answer:
    """Answer the last user message of `messages` from `hits` with `generate` (messages ->
    text pieces); `on_text` sees the checked text as it becomes final (sentence by sentence)."""
    turn = ground(messages, hits, terms=terms, cite_threshold=cite_threshold, fits=fits)
    question = messages[-1]["content"]
    if turn.fixed_reply is not None:
        if on_text is not None:
            on_text(turn.fixed_reply)
        return Answer(question, turn.fixed_reply, [], [], [], [])
    checker = turn.checker()
    parts = []
    for piece in [*generate(turn.messages), None]:
        text = checker.flush() if piece is None else checker.push(piece)
        if text:
            parts.append(text)
            if on_text is not None:
                on_text(text)
    return Answer(
        question,
        "".join(parts),
        turn.citations(checker.cited),
        [s.reference() for s in turn.sources],
        checker.removed,
        checker.added,
    )


def format_citations(citations: Sequence[dict]) -> str:
    """`[n] file:line  snippet…`, one line per cited source."""
    lines = []
    for c in citations:
        snippet = " ".join(c["text"].split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[: SNIPPET_CHARS - 1] + "…"
        lines.append(f"[{c['index']}] {c['source']}:{c['line']}  {snippet}")
    return "\n".join(lines)


@dataclass
class Retrieval:
    """A knowledge base with the settings every grounded turn uses (`chuan chat --kb`,
    `chuan rag ask`, `chuan serve --kb`): what is searched, how, and how citations are
    checked."""

    kb: KnowledgeBase
    k: int = 5
    mode: str = "sparse"
    threshold: float = DEFAULT_THRESHOLD
    cite_threshold: float = DEFAULT_CITE_THRESHOLD
    # An LM that reranks the best `rerank_depth` hits and drops those it finds irrelevant.
    reranker: Reranker | None = None
    rerank_depth: int = 20

    @classmethod
    def open(cls, path: str | Path, *, device: str | None = None, **settings) -> Retrieval:
        return cls(KnowledgeBase.open(path, device=device), **settings)

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        k = k or self.k
        if self.reranker is None:
            return self.kb.search(query, k, mode=self.mode, threshold=self.threshold)
        hits = self.kb.search(
            query, max(k, self.rerank_depth), mode=self.mode, threshold=self.threshold
        )
        return self.reranker.rerank(query, hits)[:k]

    def search_results(self, query: str, k: int | None = None) -> list[dict]:
        """The hits as JSON-ready dicts (`POST /v1/kb/search`)."""
        return [hit.to_dict() for hit in self.search(query, k)]

    def ground(self, messages: Sequence[dict], fits: Fits | None = None) -> GroundedTurn:
        """The turn for `messages`, retrieving with the last user message."""
        hits = self.search(messages[-1]["content"]) if messages else []
        return ground(messages, hits, terms=self.kb.analyzer.terms,
                      cite_threshold=self.cite_threshold, fits=fits)  # fmt: skip

    def ask(
        self,
        messages: Sequence[dict],
        generate: Callable[[list[dict]], Iterable[str]],
        *,
        fits: Fits | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """`ask` with this KB's hits for the last user message."""
        hits = self.search(messages[-1]["content"]) if messages else []
        return ask(messages, hits, generate, terms=self.kb.analyzer.terms,
                   cite_threshold=self.cite_threshold, fits=fits, on_text=on_text)  # fmt: skip
