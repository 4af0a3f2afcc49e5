"""The pieces of PPO and GRPO, each a small pure function over `[B, T]` response tensors
(`mask` 1 on response tokens, 0 on padding).

Formulas as the papers give them and as TRL implements them (`trl/trainer/ppo_trainer.py`
of TRL ≤ 0.19, `trl/trainer/grpo_trainer.py`), so that a setting carries over:

- KL estimators per token (Schulman, "Approximating KL divergence", 2020), with
  `d = log π(a) − log π_ref(a)`: k1 = `d`, k3 = `exp(−d) − 1 + d` (unbiased, never negative).
- PPO per-token rewards (Ziegler et al. 2019; Baichuan 2 report §5.3):
  `r_t = −β·KL_t`, plus the reward model's score on the last response token.
- GAE (Schulman et al. 2016): `δ_t = r_t + γ·V_{t+1} − V_t`,
  `A_t = δ_t + γλ·A_{t+1}`, returns `A_t + V_t`; TRL's defaults γ = 1, λ = 0.95.
- Clipped policy loss (PPO, Schulman et al. 2017): `max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))`
  with `ρ = exp(log π − log π_old)`; clipped value loss:
  `½·max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²)`.
- GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath §4.1):
  `(r − mean(group)) / (std(group) + ε)` (TRL's unbiased std), the same for every token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over `dim`, or over everything)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    total: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums,
):
    """`values` scaled to unit variance (and zero mean unless `shift_mean` is False) over
    the masked entries, as PPO implementations normalise advantages. `total` sums a tensor
    over every rank, so that the statistics are the whole batch's: two ranks then whiten as
    one process does."""
    sums = total(torch.stack([(values * mask).sum(), mask.sum()]).double())
    mean = (sums[0] / sums[1]).to(values.dtype)
    squares = total((((values - mean) ** 2) * mask).sum().double()[None])[0]
    var = (squares / sums[1]).to(values.dtype)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from the sampled tokens' log-probs: `k1` or `k3`."""
    delta = logps - ref_logps
    if estimator == "k1":
        return delta
    if estimator == "k3":
        return torch.exp(-delta) - 1 + delta
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1 or k3")


def kl_coefficient(iteration: int, iterations: int, start: float, final: float | None) -> float:
    """β at 0-based `iteration` of `iterations`: linear from `start` to `final` (reached at
    the last iteration), or `start` throughout when `final` is None."""
    if final is None or iterations <= 1:
        return start
    return start + (final - start) * min(iteration / (iterations - 1), 1.0)


def token_rewards(
    kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """`[B, T]` rewards: `−β·kl` on every response token, plus `scores` `[B]` on each row's
    last response token."""
    rewards = -beta * kl * mask
    last = (mask.long().cumsum(1) == mask.sum(1, keepdim=True)) & mask.bool()
    return rewards + last * scores[:, None]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) `[B, T]` by generalised advantage estimation; the value after a
    row's last token is 0 (padding holds no value)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss `[B, T]` and whether each token was clipped."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped value loss `[B, T]` and whether each token's clipped term won."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages `[N]` of rewards `[N]` laid out as consecutive groups of `group_size`
    samples of one prompt; a group whose rewards are all equal gets 0 (nothing to learn).
    `eps` is TRL's."""
    groups = rewards.reshape(-1, group_size)
    mean = groups.mean(1, keepdim=True)
    std = groups.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    advantages = (groups - mean) / (std + eps)
    return torch.where(std > 0, advantages, torch.zeros_like(advantages)).reshape(-1)
