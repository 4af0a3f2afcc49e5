"""Where RL's rewards come from: a reward model dir (`chuan rm`'s output), or a Python
function named `module:function` (or `path/to/file.py:function`).

A reward function takes TRL's arguments (`trl` docs, "GRPO Trainer", "Using a custom reward
function"): `fn(prompts, completions, **kwargs) -> list[float]`, prompts and completions as
decoded text, one entry per completion; chuan also passes `completion_ids` (the token ids,
the stop token included when the completion ended) and `reference` (each record's reference
answer or None). A function should accept `**kwargs` for the ones it does not use. A `None`
or non-finite reward is an error naming the function and the completion.

Two functions ship for recipes and tests: `reference_match` (1 when the completion equals the
reference after whitespace folding) and `reference_overlap` (character-bigram F1 with the
reference, which gives partial credit in Chinese and English alike).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from chuan.align.rm import reward_scores
from chuan.errors import InputError
from chuan.model.convert import load_reward_model
from chuan.train.data import Batch

RewardFunction = Callable[..., list[float]]


def load_reward_function(spec: str) -> RewardFunction:
    """The function `spec` names: `package.module:function` or `file.py:function`."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise InputError(
            f"reward_function {spec!r} must be `module:function` or `path/to/file.py:function`"
        )
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise InputError(f"reward_function: {path} not found")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise InputError(f"reward_function: cannot import {module_name!r}: {error}") from error
    function = getattr(module, name, None)
    if not callable(function):
        raise InputError(f"reward_function: {module_name} has no function {name!r}")
    return function


def call_reward_function(function: RewardFunction, spec: str, **arguments) -> torch.Tensor:
    """`[N]` float64 rewards from `function`, checked: one finite number per completion."""
    completions = arguments["completions"]
    rewards = function(**arguments)
    if rewards is None or len(rewards) != len(completions):
        got = "None" if rewards is None else f"{len(rewards)} rewards"
        raise InputError(
            f"reward_function {spec}: returned {got} for {len(completions)} completions"
        )
    for index, reward in enumerate(rewards):
        if reward is None or not math.isfinite(float(reward)):
            raise InputError(
                f"reward_function {spec}: reward {reward!r} for completion {index} "
                f"({completions[index][:60]!r}); return a finite number for every completion"
            )
    return torch.tensor([float(r) for r in rewards], dtype=torch.float64)


def load_scorer(model_dir: str, vocab_size: int, device: torch.device) -> nn.Module:
    """The frozen reward model of `model_dir`, which must read the policy's token ids."""
    model = load_reward_model(model_dir, require_head=True).to(device).eval()
    model.requires_grad_(False)
    if model.config.vocab_size != vocab_size:
        raise InputError(
            f"reward_model {model_dir} has a vocabulary of {model.config.vocab_size} tokens, the "
            f"policy one of {vocab_size}: a reward model scores the policy's token ids, so it "
            "must share its tokenizer (train it with `chuan rm` from the same base)"
        )
    return model


@torch.no_grad()
def score_sequences(model: nn.Module, batch: Batch, micro_batch: int, autocast) -> torch.Tensor:
    """`[N]` float64 reward-model scores of the padded prompt + completion rows of `batch`,
    `micro_batch` rows per forward."""
    scores = []
    for start in range(0, batch.input_ids.shape[0], micro_batch):
        part = slice(start, start + micro_batch)
        rows = Batch.of(batch.input_ids[part], batch.segment_ids[part], batch.labels[part])
        scores.append(reward_scores(model, rows, autocast).double())
    return torch.cat(scores)


def _fold(text: str) -> str:
    return " ".join(text.split())


def reference_match(prompts, completions, reference, **kwargs) -> list[float]:
    """1.0 where the completion equals the reference (whitespace folded), else 0.0."""
    return [
        float(ref is not None and _fold(c) == _fold(ref))
        for c, ref in zip(completions, reference, strict=True)
    ]


def _bigrams(text: str) -> Counter:
    text = _fold(text)
    return (
        Counter(text[i : i + 2] for i in range(len(text) - 1)) if len(text) > 1 else Counter(text)
    )


def reference_overlap(prompts, completions, reference, **kwargs) -> list[float]:
    """Character-bigram F1 between each completion and its reference (0 without one)."""
    rewards = []
    for completion, ref in zip(completions, reference, strict=True):
        got, want = _bigrams(completion), _bigrams(ref or "")
        common = sum((got & want).values())
        if not common:
            rewards.append(0.0)
            continue
        precision, recall = common / sum(got.values()), common / sum(want.values())
        rewards.append(2 * precision * recall / (precision + recall))
    return rewards
