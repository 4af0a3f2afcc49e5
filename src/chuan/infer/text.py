"""Turning a stream of token ids into a stream of text.

Decoding tokens one at a time garbles Chinese: a character outside the vocabulary arrives as
two to four byte-fallback pieces (`<0xE4><0xBD><0xA0>`), and any prefix of them decodes to
U+FFFD (Lightning-AI/litgpt#1422). SentencePiece decoding is also context dependent (a leading
`▁` is dropped at the start of a text). `TextStream` therefore decodes a short window of
recent tokens, emits only the new part once it no longer ends in an incomplete character,
and slides the window on, so the emitted pieces add up to `tokenizer.decode` of all ids.
It can also watch for stop strings, holding back text that might be the start of one.
"""

from __future__ import annotations

from collections.abc import Sequence

from chuan.errors import InputError

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """Incremental detokenizer with optional stop strings.

    `push(token_id)` returns the text that is now safe to show, `flush()` the rest at the
    end. Once a stop string appears, `stopped` is True and neither it nor anything after it
    is ever returned. `skip_special_tokens` is passed to `tokenizer.decode` (True for chat
    output, as Baichuan's `model.chat` does).
    """

    def __init__(
        self,
        tokenizer,
        stop_strings: Sequence[str] = (),
        *,
        skip_special_tokens: bool = True,
    ):
        if any(not s for s in stop_strings):
            raise InputError("stop strings must not be empty")
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.skip_special_tokens = skip_special_tokens
        self.stopped = False
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: context for the tokens being read
        self._read_offset = 0  # tokens before this have been turned into text
        self._held = ""  # decoded text not yet returned (a possible stop-string start)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(
            self._ids[start:end], skip_special_tokens=self.skip_special_tokens
        )

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that is now complete and cannot start a stop
        string (often "", e.g. inside a multi-byte character)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        known = self._decode(self._prefix_offset, self._read_offset)
        text = self._decode(self._prefix_offset)
        if len(text) <= len(known) or text.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(text[len(known) :], final=False)

    def flush(self) -> str:
        """The remaining text (including an incomplete character as U+FFFD), at the end."""
        if self.stopped:
            return ""
        known = self._decode(self._prefix_offset, self._read_offset)
        rest = self._decode(self._prefix_offset)[len(known) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        return self._release(rest, final=True)

    def _release(self, new_text: str, *, final: bool) -> str:
        """Add `new_text` to the held text and return what may be shown: everything before a
        stop string, else all but the longest tail that could begin one."""
        self._held += new_text
        cut = self._stop_position(self._held)
        if cut is not None:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = 0 if final else self._possible_stop_start(self._held)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def _stop_position(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        return min(found) if found else None

    def _possible_stop_start(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
