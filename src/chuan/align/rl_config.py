"""The `chuan ppo` and `chuan grpo` recipes: the fine-tuning recipe's keys, prompt stages,
rollout settings and each algorithm's own.

PPO defaults are Baichuan 2's published RLHF settings (Baichuan 2 report, arXiv:2309.10305,
§5.3): critic warm-up 20 iterations with the actor frozen, PPO clip 0.1, KL coefficient 0.2
decaying to 0.005 (linearly over the run: the shape is not published), gradient clipping 0.5
for every model, a constant learning rate of 5e-6 and 350 iterations; what the report leaves
out takes TRL's PPO defaults (`trl/trainer/ppo_config.py`, TRL ≤ 0.19): k1 KL estimator,
value clip 0.2, value-loss weight 0.1, γ = 1, λ = 0.95, 4 PPO epochs, temperature 0.7.
GRPO defaults are DeepSeekMath's (Shao et al. 2024, arXiv:2402.03300) as TRL's
`GRPOConfig` sets them: 8 samples per prompt, clip 0.2, one update per rollout, no KL term
unless `kl_coef` > 0 (then the k3 estimator), temperature 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chuan.align.sft_config import (
    DataSource,
    SFTConfig,
    SFTEvalConfig,
    SFTOptimConfig,
    SFTStageConfig,
)
from chuan.config import ConfigError, bounded, load_config


@dataclass
class PromptSource(DataSource):
    """One prompt file, its layout (detected when omitted; see `chuan.align.prompts`) and
    its mixing weight (as in `chuan sft`)."""

    format: Literal["prompt", "preference", "alpaca", "sharegpt", "messages", "colossal"] | None = (
        None
    )


@dataclass
class PromptStageConfig(SFTStageConfig):
    """One stage: its prompts and its length in iterations (`steps`, else `epochs` passes
    over the prompts)."""

    data: list[PromptSource]


@dataclass
class PromptEvalConfig(SFTEvalConfig):
    """Held-out prompts (`holdout` taken out of the first stage's first source, or files of
    their own), answered greedily and scored: the mean reward before, every `every`
    iterations, and after; at most `max_rows` prompts."""

    data: list[PromptSource] | None = None
    max_rows: int = bounded(32, ge=1)


@dataclass
class RolloutConfig:
    """Sampling for rollouts: `prompts` per iteration on each rank, and the settings of
    `chuan generate` (no repetition penalty: it would change the sampled distribution away
    from the policy's). A prompt longer than `max_length - max_new_tokens` is dropped and
    counted."""

    prompts: int = bounded(8, ge=1)
    max_new_tokens: int = bounded(64, ge=1)
    temperature: float = bounded(0.7, gt=0)
    top_k: int = bounded(0, ge=0)
    top_p: float = bounded(1.0, gt=0, le=1)


@dataclass
class RLOptimConfig(SFTOptimConfig):
    """Baichuan 2's RLHF optimizer settings: constant LR 5e-6, gradient clipping 0.5."""

    lr: float = bounded(5e-6, gt=0)
    grad_clip: float = bounded(0.5, ge=0)


@dataclass(kw_only=True)
class RLConfig(SFTConfig):
    """What `chuan ppo` and `chuan grpo` share.

    The reward is `reward_model` (a `chuan rm` model dir sharing the policy's tokenizer) or
    `reward_function` (`module:function` or `file.py:function`, TRL's signature; see
    `chuan.align.rewards`); `missing_eos_penalty` is subtracted from the reward of a
    completion that hit `max_new_tokens` without stopping. `reference` is the frozen model
    the KL term compares with (default: the starting model; under LoRA the same model with
    its adapter off). `kl_estimator` is `k1` or `k3`; `kl_coef` decays linearly to
    `kl_coef_final` over the run when that is set. `clip` is PPO's ε; each rollout is used
    for `ppo_epochs` passes in `minibatches` optimizer steps each.
    """

    stages: list[PromptStageConfig]
    packing: bool = False
    reward_model: str | None = None
    reward_function: str | None = None
    missing_eos_penalty: float | None = None
    reference: str | None = None
    kl_coef: float = bounded(0.2, ge=0)
    kl_coef_final: float | None = bounded(None, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    clip: float = bounded(0.1, gt=0)
    ppo_epochs: int = bounded(4, ge=1)
    minibatches: int = bounded(1, ge=1)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: RLOptimConfig = field(default_factory=RLOptimConfig)
    eval: PromptEvalConfig = field(default_factory=PromptEvalConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refuse_sft_only_methods()
        if (self.reward_model is None) == (self.reward_function is None):
            raise ConfigError(
                "give exactly one reward: `reward_model` (a `chuan rm` model dir) or "
                "`reward_function` (`module:function`)"
            )
        if self.packing or self.mask_history:
            raise ConfigError("packing and mask_history do not apply to RL rollouts; remove them")
        if self.rollout.max_new_tokens >= self.max_length:
            raise ConfigError(
                f"rollout.max_new_tokens ({self.rollout.max_new_tokens}) leaves no room for a "
                f"prompt in max_length {self.max_length}"
            )


@dataclass(kw_only=True)
class PPOConfig(RLConfig):
    """`chuan ppo`: the RL keys plus the critic. `critic` is the model dir the value model
    starts from (default: `reward_model`, else the policy's base, with a new head; a
    previous run's `OUT/critic` continues its training);
    `critic_warmup` iterations train only the critic (the actor frozen); values are
    clipped to `value_clip` around the rollout's, their loss weighted by `vf_coef`;
    advantages by GAE (`gamma`, `lam`), whitened per rollout when `whiten_advantages`."""

    kl_coef_final: float | None = bounded(0.005, ge=0)
    critic: str | None = None
    critic_warmup: int = bounded(20, ge=0)
    value_clip: float = bounded(0.2, gt=0)
    vf_coef: float = bounded(0.1, gt=0)
    gamma: float = bounded(1.0, ge=0, le=1)
    lam: float = bounded(0.95, ge=0, le=1)
    whiten_advantages: bool = True


@dataclass
class GRPORolloutConfig(RolloutConfig):
    temperature: float = bounded(1.0, gt=0)


@dataclass(kw_only=True)
class GRPOConfig(RLConfig):
    """`chuan grpo`: `group_size` completions per prompt, advantages normalised within each
    group; `loss_norm` `sequence` averages each completion's tokens, then the completions
    (DeepSeekMath), `token` averages over all tokens of the batch (DAPO, Yu et al. 2025)."""

    group_size: int = bounded(8, ge=2)
    loss_norm: Literal["sequence", "token"] = "sequence"
    kl_coef: float = bounded(0.0, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k3"
    clip: float = bounded(0.2, gt=0)
    ppo_epochs: int = bounded(1, ge=1)
    rollout: GRPORolloutConfig = field(default_factory=GRPORolloutConfig)


def load_ppo_config(path: str | Path | None, overrides: list[str] = ()) -> PPOConfig:
    """Read a `chuan ppo` recipe; relative paths are taken from the working dir."""
    return load_config(PPOConfig, path, overrides)


def load_grpo_config(path: str | Path | None, overrides: list[str] = ()) -> GRPOConfig:
    """Read a `chuan grpo` recipe; relative paths are taken from the working dir."""
    return load_config(GRPOConfig, path, overrides)
