"""Prompt prefixes whose keys and values are kept, so that the next request that starts the
same way skips their prefill: a system prompt, few-shot examples, the sources of a RAG answer.

A prompt is cut into blocks of `block` tokens (by default one: a token-level trie, so a
shared prefix is reused to its last token, as SGLang's radix cache does, where vLLM's 16-token
blocks recompute up to 15); a block is stored under its tokens *and* the block before it, so a
hit means the whole prefix up to that block matches (keys at a position depend on every token
before it). Blocks are copied out of a row's slot after its prefill and into a new row's slot
on a hit, one indexed copy per layer: far cheaper than their forward pass. When the store is
full the least recently used block makes room; a block whose parent went first can no longer
be reached and ages out the same way.

A chain link is a number never reused (not the storage index, which is), so an old child can
never be mistaken for the child of a newer block in its parent's place.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from chuan.infer.slots import SlotPool


@dataclass
class _Block:
    index: int  # where its keys/values are stored
    link: int  # the number its children are keyed by


class PrefixCache:
    """Up to `tokens` positions of prompt keys/values in blocks of `block` tokens."""

    def __init__(self, pool: SlotPool, tokens: int, block: int = 1):
        self.block = block
        self.size = tokens // block
        shape = lambda layer: (self.size, layer.shape[1], block, layer.shape[3])  # noqa: E731
        self.keys = [layer.new_empty(shape(layer)) for layer in pool.keys]
        self.values = [layer.new_empty(shape(layer)) for layer in pool.values]
        self.pool = pool
        self._blocks: OrderedDict[tuple, _Block] = OrderedDict()  # oldest use first
        self._free = list(range(self.size))
        self._links = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    @property
    def cached_tokens(self) -> int:
        return len(self._blocks) * self.block

    def _chain(self, prompt: list[int], blocks: int):
        """(key, block) for the prompt's first `blocks` blocks while they are stored."""
        link = -1
        for i in range(blocks):
            key = (link, tuple(prompt[i * self.block : (i + 1) * self.block]))
            found = self._blocks.get(key)
            if found is None:
                return
            yield key, found
            link = found.link

    def load(self, prompt: list[int], slot: int, start: int) -> int:
        """Copy the longest stored prefix of `prompt` (leaving at least its last token to
        compute, whose logits give the first new token) into `slot` from position `start`;
        returns how many tokens it covers."""
        if not self.enabled:
            return 0
        hits = list(self._chain(prompt, (len(prompt) - 1) // self.block))
        if not hits:
            return 0
        for key, _ in hits:
            self._blocks.move_to_end(key)
        index = torch.tensor([block.index for _, block in hits], device=self.keys[0].device)
        self.pool.write(slot, start, self._gather(self.keys, index),
                        self._gather(self.values, index))  # fmt: skip
        return len(hits) * self.block

    @staticmethod
    def _gather(store: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
        """Blocks `index` of each layer as one run of positions `[kv_heads, n * block, D]`."""
        out = []
        for layer in store:
            blocks = layer[index]  # [n, kv_heads, block, D]
            out.append(blocks.transpose(0, 1).flatten(1, 2))
        return out

    def store(self, prompt: list[int], slot: int, start: int) -> None:
        """Keep the full blocks of `prompt`, prefilled in `slot` from position `start`."""
        if not self.enabled:
            return
        count = min(len(prompt) // self.block, self.size)
        known = list(self._chain(prompt, count))
        for key, _ in known:
            self._blocks.move_to_end(key)
        link = known[-1][1].link if known else -1
        new = []
        for i in range(len(known), count):  # after a missing block every block is new
            block = self._new_block((link, tuple(prompt[i * self.block : (i + 1) * self.block])))
            new.append(block.index)
            link = block.link
        if not new:
            return
        index = torch.tensor(new, device=self.keys[0].device)
        begin = start + len(known) * self.block
        keys, values = self.pool.read(slot, begin, begin + len(new) * self.block)
        for store, run in ((self.keys, keys), (self.values, values)):
            for layer, positions in zip(store, run, strict=True):
                heads, _, dim = positions.shape
                layer[index] = positions.reshape(heads, len(new), self.block, dim).transpose(0, 1)

    def _new_block(self, key: tuple) -> _Block:
        if not self._free:
            _, old = self._blocks.popitem(last=False)
            self._free.append(old.index)
        self._links += 1
        block = _Block(self._free.pop(), self._links)
        self._blocks[key] = block
        return block
