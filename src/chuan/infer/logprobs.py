"""Token log-probabilities in OpenAI's two shapes: chat's `logprobs.content` list and the
legacy completions' parallel lists (which `echo` extends over the prompt, the shape
lm-evaluation-harness reads for loglikelihood).

A token is shown as its text; a SentencePiece byte piece (`<0xE4>`, one byte of a character
split over several tokens) is not text on its own, so, as OpenAI does, its string is
`bytes:\\xe4` and chat's `bytes` field carries the raw bytes.
"""

from __future__ import annotations

import functools
import re

from chuan.infer import openai_schema as oa
from chuan.infer.engine import TokenLogprob

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenText:
    """A tokenizer's tokens as bytes and display strings (cached per id)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one per server, lives as long)
    def bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        byte = _BYTE_PIECE.fullmatch(piece)
        if byte:
            return bytes([int(byte[1], 16)])
        return piece.replace("\u2581", " ").encode()

    def string(self, token: int) -> str:
        raw = self.bytes(token)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def top(self, entry: TokenLogprob) -> list[oa.TopLogprob]:
        return [
            oa.TopLogprob(token=self.string(t), logprob=lp, bytes=list(self.bytes(t)))
            for t, lp in entry.top
        ]

    def chat(self, entries: list[TokenLogprob]) -> oa.ChatLogprobs:
        """Chat's `logprobs` object for generated tokens."""
        return oa.ChatLogprobs(
            content=[
                oa.ChatTokenLogprob(
                    token=self.string(e.token),
                    logprob=e.logprob,
                    bytes=list(self.bytes(e.token)),
                    top_logprobs=self.top(e),
                )
                for e in entries
            ]
        )

    def completion(
        self, entries: list[TokenLogprob | None], tokens: list[int], offset: int = 0
    ) -> oa.CompletionLogprobs:
        """Completions' `logprobs` for `tokens` (prompt tokens first with `echo`), whose
        entries are None where there is no log-probability (the prompt's first token);
        `offset` is where the first token's text starts in the choice's text."""
        strings = [self.string(t) for t in tokens]
        offsets = []
        for text in strings:
            offsets.append(offset)
            offset += len(text)
        return oa.CompletionLogprobs(
            tokens=strings,
            token_logprobs=[None if e is None else e.logprob for e in entries],
            top_logprobs=[
                None if e is None else {self.string(t): lp for t, lp in e.top} for e in entries
            ],
            text_offset=offsets,
        )
