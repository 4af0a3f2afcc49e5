"""A key/value cache allocated once for the whole generation.

transformers' `DynamicCache` grows every layer's keys and values with `torch.cat` on every
step, which copies the whole cache each time (O(n²) bytes over a generation) and allocates
new memory per token. `KVCache` allocates `[batch, kv_heads, max_len, head_dim]` buffers per
layer on the first write and afterwards only copies the new positions in; attention reads a
view of the filled part. It answers the two calls chuan's attention makes (`update` and
`get_seq_length`), so the model uses it like any transformers `Cache`.
"""

from __future__ import annotations

import torch

from chuan.errors import InputError


class KVCache:
    """Per-layer key/value buffers of a fixed length, filled left to right.

    The buffers take their shape, dtype and device from the first keys written to each layer,
    so the cache needs no model config. Writing past `max_len` is an error, not a reallocation:
    the caller knows the prompt length and the token budget up front.
    """

    def __init__(self, num_layers: int, max_len: int):
        if max_len < 1:
            raise InputError(f"max_len must be at least 1, got {max_len}")
        self.max_len = max_len
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers

    @classmethod
    def for_model(cls, model: torch.nn.Module, max_len: int) -> KVCache:
        """A cache with one slot per decoder layer of `model` (a chuan or HF config)."""
        return cls(model.config.num_hidden_layers, max_len)

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `key`/`value` `[B, kv_heads, T, head_dim]` after the layer's filled part and
        return views of everything filled so far (no copy of the past)."""
        if self.keys[layer_idx] is None:
            self._allocate(key, layer_idx)
        start = self.lengths[layer_idx]
        end = start + key.shape[2]
        if end > self.max_len:
            raise InputError(
                f"the KV cache holds {self.max_len} positions; layer {layer_idx} needs {end}"
            )
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, start:end].copy_(key)
        values[:, :, start:end].copy_(value)
        self.lengths[layer_idx] = end
        return keys[:, :, :end], values[:, :, :end]

    def _allocate(self, key: torch.Tensor, layer_idx: int) -> None:
        batch, heads, _, head_dim = key.shape
        shape = (batch, heads, self.max_len, head_dim)
        self.keys[layer_idx] = key.new_empty(shape)
        self.values[layer_idx] = key.new_empty(shape)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions already cached for `layer_idx` (what the next forward's past length is)."""
        return self.lengths[layer_idx]
