"""A language model's second opinion on retrieved chunks: rerank them, and drop the ones it
finds irrelevant, so the relevance filter may return nothing even when BM25 matched words.

Two judges, both on any causal LM on disk (the answering model itself in `chuan rag ask`):

- `likelihood` (the query-likelihood model of IR, Ponte & Croft 1998, with an LM as in
  Sachan et al. 2022, "Improving Passage Retrieval with Zero-Shot Question Generation"): a
  chunk's score is how much it raises the mean log-probability of the question's tokens,
  `mean log P(q | chunk, "Question:") - mean log P(q | "Question:")`, in nats per token. A
  chunk that does not make the question likelier than no chunk at all (score <= 0) is dropped.
- `judge` (a yes/no relevance prompt, as LLM rerankers such as RankGPT's pointwise baselines
  ask): the chunk and question go into the model's chat template with a request to answer
  yes or no, and the score is `log P(yes) - log P(no)` over the first token of the bilingual
  answers (是/yes/Yes against 否/no/No). A chunk scored <= 0 is dropped.

Scores use `chuan.model.nll.window_nats`, the one next-token scorer, for the likelihood, and
one forward's last logits for the judge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from chuan.errors import InputError, MissingError
from chuan.model.nll import Window, window_nats
from chuan.rag.kb import Hit

RERANKERS = ("likelihood", "judge")
QUESTION = "\n\n问题 / Question: "
JUDGE_PROMPT = (
    "资料 / Passage:\n{passage}\n\n问题 / Question: {question}\n\n"
    "这段资料能回答这个问题吗？只回答“是”或“否”。\n"
    "Does the passage help answer the question? Answer only yes or no."
)
YES, NO = ("是", "yes", "Yes"), ("否", "no", "No")
# Chunk tokens kept before the question (the start of the chunk), so a prompt stays short.
MAX_PASSAGE_TOKENS = 384
BATCH = 8


class Reranker:
    """Scores (question, chunk) pairs with a causal LM; see the module docstring."""

    def __init__(self, model, tokenizer, by: str = "likelihood"):
        if by not in RERANKERS:
            raise InputError(f"unknown reranker {by!r}; choose {', '.join(RERANKERS)}")
        self.model, self.tokenizer, self.by = model, tokenizer, by

    @classmethod
    def open(cls, model_dir: str | Path, by: str, *, device: str | None = None) -> Reranker:
        from chuan.infer.loading import load_model, load_saved_tokenizer

        if not Path(model_dir).is_dir():
            raise MissingError(f"--rerank-model {model_dir}: no such model dir")
        tokenizer = load_saved_tokenizer(model_dir)
        if tokenizer is None:
            raise InputError(f"--rerank-model {model_dir}: the model dir has no tokenizer files")
        return cls(load_model(model_dir, device=device, dtype="fp32"), tokenizer, by)

    def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        """The hits the model finds relevant (score > 0), best first, ranks renumbered."""
        scores = self.scores(question, [hit.text for hit in hits])
        kept = sorted(
            (pair for pair in zip(scores, range(len(hits)), strict=True) if pair[0] > 0),
            key=lambda pair: (-pair[0], pair[1]),
        )
        return [dataclasses.replace(hits[i], rank=rank) for rank, (_, i) in enumerate(kept, 1)]

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        if self.by == "likelihood":
            return self._likelihood_gains(question, passages)
        return self._judgments(question, passages)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _likelihood_gains(self, question: str, passages: Sequence[str]) -> list[float]:
        """The same question token ids after the label alone and after each chunk + label."""
        asked = self._encode(question)
        label = self._encode(QUESTION.lstrip("\n"))
        baseline = self._question_nats([label + asked], [len(label)])[0]
        prefixes = [self._encode(p)[:MAX_PASSAGE_TOKENS] + self._encode(QUESTION) for p in passages]
        nats = self._question_nats([p + asked for p in prefixes], [len(p) for p in prefixes])
        return [baseline - value for value in nats]

    def _question_nats(self, sequences: list[list[int]], starts: list[int]) -> list[float]:
        """Mean NLL (nats per token) of each sequence's tokens from `starts[i]` on."""
        out = []
        for lo in range(0, len(sequences), BATCH):
            batch = sequences[lo : lo + BATCH]
            pairs = list(zip(batch, starts[lo : lo + BATCH], strict=True))
            windows = [Window(0, len(s) - 1, max(f - 1, 0)) for s, f in pairs]
            totals = window_nats(self.model, batch, windows)
            out += [t / max(len(s) - f, 1) for t, (s, f) in zip(totals, pairs, strict=True)]
        return out

    @torch.inference_mode()
    def _judgments(self, question: str, passages: Sequence[str]) -> list[float]:
        from chuan.tokenizer.chat_templates import template_for

        template = template_for(self.tokenizer)
        yes, no = self._first_tokens(YES), self._first_tokens(NO)
        device = next(self.model.parameters()).device
        scores = []
        for passage in passages:
            passage = self.tokenizer.decode(self._encode(passage)[:MAX_PASSAGE_TOKENS])
            content = JUDGE_PROMPT.format(passage=passage, question=question)
            ids = template.prompt_ids([{"role": "user", "content": content}],
                                      add_generation_prompt=True)  # fmt: skip
            logits = self.model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]
            logps = torch.log_softmax(logits.float(), -1)
            scores.append(float(torch.logsumexp(logps[yes], 0) - torch.logsumexp(logps[no], 0)))
        return scores

    def _first_tokens(self, words: Sequence[str]) -> list[int]:
        ids = sorted({self._encode(word)[0] for word in words if self._encode(word)})
        if not ids:
            raise InputError("the reranking model's tokenizer cannot encode yes / no")
        return ids
