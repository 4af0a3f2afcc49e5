"""Prompt-learning adapters at inference: the virtual tokens peft puts before every input.

Prefix tuning and P-Tuning v2 (Li & Liang 2021; Liu et al. 2022) learn keys and values that
every layer's attention sees before the input; prompt tuning and P-Tuning (Lester et al.
2021; Liu et al. 2021) learn input embeddings put before it. Neither changes a weight, so
they cannot be folded into the model: a model with one stays a peft `PeftModel`, and chuan's
decoder asks it for its virtual tokens once, then runs the base model itself with them as
the start of its KV cache (prefix) or of its prefill embeddings (prompt), so that generation
keeps chuan's preallocated cache and left-padded batches.

In a padded or packed batch the virtual tokens are a *shared prefix* (`shared_prefix` in
`chuan.model.positions`): every row and every packed document attends to them and counts its
positions after them, which is what each sample sees alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def prompt_learning_config(model: nn.Module):
    """The active peft config of `model` when it is a prompt-learning adapter, else None."""
    config = getattr(model, "active_peft_config", None)
    return config if config is not None and config.is_prompt_learning else None


def virtual_token_count(model: nn.Module) -> int:
    """How many virtual tokens `model` puts before every input (0 for any other model)."""
    config = prompt_learning_config(model)
    return config.num_virtual_tokens if config is not None else 0


def share_virtual_tokens(model: nn.Module) -> None:
    """Make peft's forwards of a prompt-learning `model` read its virtual tokens as a shared
    prefix: peft prepends them (and ones to the attention mask) but cannot tell chuan's
    segment ids that every packed document should see them."""
    count = virtual_token_count(model)
    if not count:
        return

    def add_prefix(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs.setdefault("shared_prefix", count)
        return args, kwargs

    model.get_base_model().register_forward_pre_hook(add_prefix, with_kwargs=True)


@dataclass
class VirtualTokens:
    """One row's virtual tokens, computed once: per-layer `key_values` `[1, kv_heads, P,
    head_dim]` (prefix tuning) or `embeddings` `[1, P, hidden]` (prompt tuning, P-Tuning)."""

    count: int
    key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    embeddings: torch.Tensor | None = None


@torch.inference_mode()
def virtual_tokens(model: nn.Module) -> VirtualTokens | None:
    """The virtual tokens of a prompt-learning peft `model` (None for any other model), as
    peft's own forward would put them before a row."""
    config = prompt_learning_config(model)
    if config is None:
        return None
    prompt = model.get_prompt(batch_size=1)
    if config.peft_type == "PREFIX_TUNING":
        pairs = [(layer.keys, layer.values) for layer in prompt.layers]
        return VirtualTokens(config.num_virtual_tokens, key_values=pairs)
    dtype = model.get_input_embeddings().weight.dtype
    return VirtualTokens(config.num_virtual_tokens, embeddings=prompt.to(dtype))
