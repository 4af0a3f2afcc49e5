"""Token-by-token generation with a KV cache: greedy or sampled, one sequence at a time.

Each step feeds only the new token and asks the model for the last position's logits
(`logits_to_keep=1`), so a 125,696-way head costs one row per step, not one per position.
The processors follow transformers' definitions (repetition penalty divides positive and
multiplies negative logits of already-seen tokens; top-p keeps the smallest set whose
probability reaches p) so settings carry over from Baichuan's `generation_config.json`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache


@dataclass
class SamplingConfig:
    """Decoding settings; `temperature=0` means greedy (deterministic)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: int | None = None
    seed: int | None = None


def _next_token(
    logits: torch.Tensor, seen: torch.Tensor, cfg: SamplingConfig, generator
) -> torch.Tensor:
    """Pick the next token id from fp32 logits `[V]` given the ids `seen` so far."""
    if cfg.repetition_penalty != 1.0:
        scores = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(
            scores > 0, scores / cfg.repetition_penalty, scores * cfg.repetition_penalty
        )
    if cfg.temperature <= 0:
        return logits.argmax()
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= cfg.top_p  # mass before it >= p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[0]


@torch.inference_mode()
def stream_tokens(
    model: PreTrainedModel, prompt_ids: list[int], cfg: SamplingConfig
) -> Iterator[int]:
    """Yield new token ids one at a time; stops at `cfg.eos_token_id` (not yielded)."""
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token id (e.g. BOS)")
    device = next(model.parameters()).device
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    ids = torch.tensor(prompt_ids, device=device)
    cache = DynamicCache(config=model.config)
    step_input = ids[None]
    for _ in range(cfg.max_new_tokens):
        out = model(input_ids=step_input, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = _next_token(out.logits[0, -1].float(), ids, cfg, generator)
        if cfg.eos_token_id is not None and token.item() == cfg.eos_token_id:
            return
        yield int(token)
        ids = torch.cat((ids, token[None]))
        step_input = token.view(1, 1)


def generate(model: PreTrainedModel, prompt_ids: list[int], cfg: SamplingConfig) -> list[int]:
    """The new token ids (prompt excluded) as a list."""
    return list(stream_tokens(model, prompt_ids, cfg))
