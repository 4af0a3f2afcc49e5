"""Reward functions the RL tests learn from (TRL's signature: prompts, completions, kwargs)."""

from __future__ import annotations

MAX_NEW_TOKENS = 16  # the tests' rollout.max_new_tokens


def brevity(prompts, completions, completion_ids, **kwargs) -> list[float]:
    """1 for an empty answer down to 0 for one that used every token: learnable by raising the
    probability of the stop token."""
    return [1.0 - len(ids) / MAX_NEW_TOKENS for ids in completion_ids]


def constant(prompts, completions, **kwargs) -> list[float]:
    """The same reward for everything: GRPO has nothing to learn from it."""
    return [0.5] * len(completions)


def broken(prompts, completions, **kwargs) -> list[float]:
    return [None] * len(completions)
