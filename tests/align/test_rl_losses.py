"""The PPO and GRPO pieces against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from chuan.align.rl_losses import (
    gae,
    group_advantages,
    kl_coefficient,
    kl_estimate,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_on_three_tokens_by_hand():
    """Row 0: gamma 0.9, lambda 0.8, delta_t = r_t + gamma V_{t+1} - V_t worked backwards.
    Row 1: its last position is padding, so the value after its second token is 0."""
    rewards = t([0.1, -0.2, 1.0], [0.0, 2.0, 0.0])
    values = t([0.5, 0.4, 0.3], [1.0, 0.5, 9.0])
    mask = t([1, 1, 1], [1, 1, 0])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    a2 = 1.0 - 0.3
    a1 = (-0.2 + 0.9 * 0.3 - 0.4) + 0.72 * a2
    a0 = (0.1 + 0.9 * 0.4 - 0.5) + 0.72 * a1
    torch.testing.assert_close(advantages[0], t(a0, a1, a2))
    torch.testing.assert_close(returns[0], t(a0 + 0.5, a1 + 0.4, a2 + 0.3))
    b1 = 2.0 - 0.5
    b0 = (0.0 + 0.9 * 0.5 - 1.0) + 0.72 * b1
    torch.testing.assert_close(advantages[1], t(b0, b1, 0.0))


def test_token_rewards_put_the_score_on_the_last_response_token():
    kl = t([0.1, 0.2, 0.3], [0.4, 0.5, 0.0])
    mask = t([1, 1, 1], [1, 1, 0])
    got = token_rewards(kl, t(1.0, 2.0), mask, beta=0.5)
    torch.testing.assert_close(got, t([-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]))


def test_kl_coefficient_decays_linearly_from_start_to_final():
    assert kl_coefficient(0, 350, 0.2, 0.005) == 0.2
    assert kl_coefficient(349, 350, 0.2, 0.005) == pytest.approx(0.005)
    assert kl_coefficient(1, 350, 0.2, 0.005) == pytest.approx(0.2 - 0.195 / 349)
    assert kl_coefficient(200, 350, 0.2, None) == 0.2


def test_kl_estimators():
    logps, ref = t(-1.0, -2.0), t(-1.3, -1.5)
    torch.testing.assert_close(kl_estimate(logps, ref, "k1"), t(0.3, -0.5))
    expected = [math.exp(-0.3) - 1 + 0.3, math.exp(0.5) - 1 - 0.5]
    torch.testing.assert_close(kl_estimate(logps, ref, "k3"), t(*expected))
    assert (kl_estimate(logps, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(logps, ref, "k2")


def test_policy_loss_clips_the_ratio_against_the_advantage():
    logps, old = t(0.5, 0.5, 0.0), t(0.0, 0.0, 0.0)
    losses, clipped = policy_loss(logps, old, t(1.0, -1.0, 2.0), clip=0.2)
    torch.testing.assert_close(losses, t(-1.2, math.exp(0.5), -2.0))
    assert clipped.tolist() == [True, False, False]


def test_value_loss_clips_around_the_old_values():
    values, old, returns = t(1.0, 1.2), t(0.5, 0.5), t(0.0, 1.0)
    losses, clipped = value_loss(values, old, returns, clip=0.2)
    torch.testing.assert_close(losses, t(0.5, 0.5 * 0.3**2))
    assert clipped.tolist() == [False, True]


def test_group_advantages_for_a_group_of_four_and_a_flat_group():
    """TRL's normalisation: (r - mean) / (unbiased std + 1e-4); a group of equal rewards
    gets 0 exactly."""
    got = group_advantages(t(1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3), 4)
    scale = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(got, t(scale, -scale, -scale, scale, 0, 0, 0, 0))
    assert (got[4:] == 0).all()


def test_masked_mean_and_whiten_ignore_padding():
    values, mask = t([1.0, 3.0, 100.0]), t([1, 1, 0])
    assert masked_mean(values, mask).item() == 2.0
    whitened = masked_whiten(values, mask)
    torch.testing.assert_close(whitened[0, :2], t(-1.0, 1.0), atol=1e-6, rtol=0)
