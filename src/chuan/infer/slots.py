"""The serving engine's KV cache: a pool of fixed-size slots, one per running row.

Every layer's keys and values live in one buffer `[slots, kv_heads, capacity, head_dim]`,
allocated when the engine starts; a row is handed a slot when it is admitted and returns it
when it finishes, so a request joining a running batch allocates nothing. A row's token at
position p sits at index p of its slot: positions never shift, so nothing is copied as rows
come and go except by `move`/`swap` below.

Why slots and not pages (vLLM's paged layout): attention here is PyTorch's
`scaled_dot_product_attention`, which reads contiguous keys. The rows being decoded are kept
in slots `0..d-1` (the engine compacts the pool when a row leaves, one row's copy), so each
decode step attends over a *view* `keys[:d, :, :L]` and copies nothing; with pages every step
would first gather each row's blocks into such a tensor, a copy of the whole cache per step.
The price is memory: a slot reserves `capacity` positions whether its row uses them or not
(`docs/serve.md` gives the sizes).

`DecodeView` and `PrefillView` are the cache objects one forward pass writes through: they
answer the model attention's `update(key, value, layer)`, writing each row's new keys at its
own positions, and carry the positions and mask the model needs
(`chuan.model.positions.explicit_attention_spec`).
"""

from __future__ import annotations

import torch

from chuan.model.positions import AttentionSpec, explicit_attention_spec

# A padded query's position: past every key, so its softmax row is never empty.
_PAST_EVERY_KEY = 2**30


class SlotPool:
    """Per-layer key/value buffers for `slots` rows of up to `capacity` positions each.

    `tokens[slot]` holds the row's token ids by position (for the repetition penalty); its
    unused tail repeats the row's first prompt token, which is already in its history.
    """

    def __init__(self, model: torch.nn.Module, slots: int, capacity: int):
        config = model.config
        weight = next(model.parameters())
        shape = (slots, config.num_key_value_heads, capacity, config.head_dim)
        layers = config.num_hidden_layers
        # Zeros, not `empty`: a masked-out key still enters the product q.k before the mask
        # adds -inf, and garbage NaN there would make the whole softmax row NaN.
        self.keys = [weight.new_zeros(shape) for _ in range(layers)]
        self.values = [weight.new_zeros(shape) for _ in range(layers)]
        self.tokens = torch.zeros(slots, capacity, dtype=torch.long, device=weight.device)
        self.slots = slots
        self.capacity = capacity
        self.config = config

    @property
    def bytes(self) -> int:
        """Memory the key/value buffers take."""
        return 2 * sum(k.numel() * k.element_size() for k in self.keys)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` (and its token ids) to `dst`."""
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[dst, :, :length] = layer[src, :, :length]
        self.tokens[dst] = self.tokens[src]

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange the first `length` positions of slots `a` and `b`."""
        pair, flipped = [a, b], [b, a]
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[pair, :, :length] = layer[flipped, :, :length]
        self.tokens[pair] = self.tokens[flipped]

    def write(self, slot: int, start: int, keys: list[torch.Tensor], values: list[torch.Tensor]):
        """Put per-layer `[kv_heads, n, head_dim]` keys/values at positions `start..start+n-1`."""
        end = start + keys[0].shape[1]
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.keys[layer][slot, :, start:end] = k
            self.values[layer][slot, :, start:end] = v

    def read(self, slot: int, start: int, end: int) -> tuple[list, list]:
        """Views of positions `start..end-1` of `slot`, per layer (copy them to keep them)."""
        return (
            [layer[slot, :, start:end] for layer in self.keys],
            [layer[slot, :, start:end] for layer in self.values],
        )

    def _spec(self, query_pos, key_pos, key_valid) -> AttentionSpec:
        config = self.config
        return explicit_attention_spec(
            query_positions=query_pos,
            key_positions=key_pos,
            key_valid=key_valid,
            position_encoding=config.position_encoding,
            num_heads=config.num_attention_heads,
            head_dim=config.head_dim,
            rope_theta=config.rope_theta,
        )

    def decode_view(self, positions: list[int]) -> DecodeView:
        """The cache of one decode step over slots `0..len(positions)-1`, each row feeding one
        token at its position."""
        return DecodeView(self, positions)

    def prefill_view(self, slots: list[int], past: list[int], new: list[int]) -> PrefillView:
        """The cache of one prefill forward: row i (slot `slots[i]`) has `past[i]` positions
        cached and feeds `new[i]` tokens, left-padded to the longest."""
        return PrefillView(self, slots, past, new)


class DecodeView:
    """One decode step: rows in slots `0..d-1`, one new token each at its own position."""

    def __init__(self, pool: SlotPool, positions: list[int]):
        device = pool.tokens.device
        self.pool = pool
        self.rows = torch.arange(len(positions), device=device)
        self.positions = torch.tensor(positions, device=device)
        self.length = max(positions) + 1  # keys the attention reads
        key_pos = torch.arange(self.length, device=device)[None]
        self.spec = pool._spec(self.positions[:, None], key_pos, key_pos <= self.positions[:, None])

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int):
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        keys[self.rows, :, self.positions] = key[:, :, 0]
        values[self.rows, :, self.positions] = value[:, :, 0]
        d = len(self.rows)
        return keys[:d, :, : self.length], values[:d, :, : self.length]


class PrefillView:
    """One prefill forward over rows in any slots: each row's new tokens are left-padded to
    `width` columns; its cached past (a reused prefix, an earlier chunk, an adapter's virtual
    tokens) is gathered from its slot in front of them, so the keys the attention sees are
    `[past (padded to the longest past) | new tokens]`."""

    def __init__(self, pool: SlotPool, slots: list[int], past: list[int], new: list[int]):
        device = pool.tokens.device
        self.pool = pool
        self.width = max(new)
        self.past_width = max(past)
        self.slots = torch.tensor(slots, device=device)
        past_t = torch.tensor(past, device=device)[:, None]
        pad = self.width - torch.tensor(new, device=device)[:, None]
        column = torch.arange(self.width, device=device)[None]
        self.real = column >= pad  # [R, width]: which columns hold a token
        query_pos = past_t + column - pad  # a real token's position in its row
        # Where each real token is written: (slot, position) pairs, row-major.
        self.write_slots = self.slots[:, None].expand_as(query_pos)[self.real]
        self.write_positions = query_pos[self.real]
        past_index = torch.arange(self.past_width, device=device)[None].expand(len(slots), -1)
        key_pos = torch.cat((past_index, query_pos), dim=1)
        key_valid = torch.cat((past_index < past_t, self.real), dim=1)
        query_pos = torch.where(self.real, query_pos, _PAST_EVERY_KEY)
        self.spec = pool._spec(query_pos, key_pos, key_valid)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int):
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        keys[self.write_slots, :, self.write_positions] = key.transpose(1, 2)[self.real]
        values[self.write_slots, :, self.write_positions] = value.transpose(1, 2)[self.real]
        if not self.past_width:
            return key, value
        past_keys = keys[self.slots, :, : self.past_width]
        past_values = values[self.slots, :, : self.past_width]
        return torch.cat((past_keys, key), dim=2), torch.cat((past_values, value), dim=2)
