"""Where each token is and what it may attend to: RoPE, ALiBi and the packed-sequence mask.

All tables and biases are computed in fp32 from integer positions on every call (a few
thousand multiplications), so they never live in a bf16 buffer or on the meta device. A bf16
`arange` collides above 256 (Baichuan 2 technical report, arXiv:2309.10305, §2.6); the
absolute ALiBi bias `slope * j` of Baichuan's 13B `modeling_baichuan.py` (see
baichuan-inc/Baichuan2#295) reaches ~3440 at 4k, where bf16 steps by 16: ±8 logits of error.

A 2-D `attention_mask` is read as *segment ids*: 0 is padding, and tokens attend only to
earlier tokens with the same id. A 0/1 padding mask is the one-segment case, and a packed row
`1,1,1,2,2,3,…` gives block-diagonal causal attention with positions restarting per document.

A *shared prefix* of N positions (prefix / prompt tuning's virtual tokens, which peft puts
before every row) is seen by every document of a row, and each document's positions count on
from N: a packed or left-padded row then gives each sample exactly what it gets alone after
its prefix, for RoPE and ALiBi alike (ALiBi's bias is taken between these positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Index of each token inside its run of equal segment ids: `[B, S] -> [B, S]`."""
    index = torch.arange(segments.shape[-1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    run_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - run_start


def _document_positions(segments: torch.Tensor, shared_prefix: int) -> torch.Tensor:
    """`[B, S]` positions: the shared prefix at 0..N-1, then each document's tokens from N."""
    if not shared_prefix:
        return segment_positions(segments)
    prefix = torch.arange(shared_prefix, device=segments.device).expand(segments.shape[0], -1)
    rest = segment_positions(segments[:, shared_prefix:]) + shared_prefix
    return torch.cat((prefix, rest), dim=1)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `cos, sin` of shape `[B, 1, T, head_dim]` in the half-split (HF / NeoX) layout."""
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32)
    inv_freq = 1.0 / (base ** (exponents / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys in fp32 and cast back, as Baichuan's code does."""
    qf, kf = q.float(), k.float()
    q_out = qf * cos + _rotate_half(qf) * sin
    k_out = kf * cos + _rotate_half(kf) * sin
    return q_out.to(q.dtype), k_out.to(k.dtype)


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head ALiBi slopes, Baichuan's `_get_interleave` (ALiBi paper) for any head count."""

    def power_of_two_slopes(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two_slopes(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return power_of_two_slopes(closest) + extra


@dataclass
class AttentionSpec:
    """What every attention layer of one forward pass needs; computed once per forward.

    `mask` is None (plain causal via `is_causal`, or no mask at all for one decode step), a
    boolean `[B, 1, T, S]` "may attend" mask, or for ALiBi an fp32 additive bias
    `[B|1, H, T, S]` with masked entries at -inf. `upcast` runs attention in fp32 (ALiBi).
    """

    mask: torch.Tensor | None
    is_causal: bool
    upcast: bool
    rope: tuple[torch.Tensor, torch.Tensor] | None


def build_attention_spec(
    *,
    batch: int,
    q_len: int,
    past_len: int,
    segments: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    position_encoding: str,
    num_heads: int,
    head_dim: int,
    rope_theta: float,
    device: torch.device,
    shared_prefix: int = 0,
) -> AttentionSpec:
    """Build the causal/segment mask and the RoPE tables or ALiBi bias for one forward pass.

    `shared_prefix` (with `segments`) makes the first that many positions of the past and new
    tokens a prefix every document attends to (see the module's docstring); without segments
    plain causal attention already gives every token the prefix and positions after it.
    """
    total = past_len + q_len
    q_index = torch.arange(past_len, total, device=device)
    k_index = torch.arange(total, device=device)
    # Each token's position: its index, or with segments its index inside its document
    # (after the shared prefix).
    positions = None
    if segments is not None:
        positions = _document_positions(segments, shared_prefix)

    allowed = None
    if segments is not None or (q_len > 1 and past_len > 0) or position_encoding == "alibi":
        allowed = (k_index[None, :] <= q_index[:, None])[None, None]
        if segments is not None:
            seg_q = segments[:, None, past_len:, None]
            seg_k = segments[:, None, None, :]
            same_doc = (seg_q == seg_k) & (seg_k != 0)
            if shared_prefix:
                same_doc = same_doc | (k_index < shared_prefix)[None, None, None]
            # A padding query attends to itself only, so no softmax row is empty (NaN).
            diagonal = (k_index[None, :] == q_index[:, None])[None, None]
            allowed = (allowed & same_doc) | diagonal

    rope = None
    if position_encoding == "rope":
        if position_ids is None:
            if positions is not None:
                position_ids = positions[:, past_len:]
            else:
                position_ids = q_index[None].expand(batch, -1)
        rope = rope_cos_sin(position_ids, head_dim, rope_theta)
        if allowed is None:
            return AttentionSpec(mask=None, is_causal=q_len > 1, upcast=False, rope=rope)
        return AttentionSpec(mask=allowed, is_causal=False, upcast=False, rope=rope)

    slopes = torch.tensor(alibi_slopes(num_heads), device=device, dtype=torch.float32)
    if positions is None:
        distance = (k_index[None, :] - q_index[:, None]).float()[None, None]
    else:  # within a document the same as the index distance; across the prefix, its own
        distance = (positions[:, None, None, :] - positions[:, None, past_len:, None]).float()
    bias = slopes[None, :, None, None] * distance
    bias = torch.where(allowed, bias, torch.tensor(float("-inf"), device=device))
    return AttentionSpec(mask=bias, is_causal=False, upcast=True, rope=None)


def explicit_attention_spec(
    *,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_valid: torch.Tensor,
    position_encoding: str,
    num_heads: int,
    head_dim: int,
    rope_theta: float,
) -> AttentionSpec:
    """The spec for rows whose tokens carry their own positions: a serving engine's rows at
    different lengths in one batch (`chuan.infer.slots`).

    `query_positions` `[B, T]` are the new tokens' positions; `key_positions` / `key_valid`
    `[B, S]` say where each key the attention will see sits and whether it holds a token of
    the row. A query attends to the valid keys at or before its position, which is causal
    attention within each row whatever the layout of the key buffer. A padded query is given
    a position past every key, so it sees the row's keys and never an empty softmax row.
    """
    allowed = key_valid[:, None, None, :] & (
        key_positions[:, None, None, :] <= query_positions[:, None, :, None]
    )
    if position_encoding == "rope":
        rope = rope_cos_sin(query_positions, head_dim, rope_theta)
        return AttentionSpec(mask=allowed, is_causal=False, upcast=False, rope=rope)
    slopes = torch.tensor(alibi_slopes(num_heads), device=query_positions.device)
    distance = (key_positions[:, None, None, :] - query_positions[:, None, :, None]).float()
    bias = slopes[None, :, None, None] * distance
    bias = torch.where(allowed, bias, torch.tensor(float("-inf"), device=bias.device))
    return AttentionSpec(mask=bias, is_causal=False, upcast=True, rope=None)
