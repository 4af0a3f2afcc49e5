"""Preference losses against the papers' formulas, computed by hand in plain Python."""

from __future__ import annotations

import math

import pytest
import torch

from chuan.align.losses import (
    bradley_terry_loss,
    dpo_loss,
    kto_loss,
    orpo_loss,
    sequence_logps,
    simpo_loss,
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# policy chosen/rejected, reference chosen/rejected: two pairs
PC, PR, RC, RR = _t(-10.0, -3.0), _t(-12.0, -2.5), _t(-11.0, -3.2), _t(-11.5, -2.0)
H = [(-10 + 11) - (-12 + 11.5), (-3 + 3.2) - (-2.5 + 2.0)]  # 1.5, 0.7


def test_dpo_sigmoid_and_cdpo():
    beta = 0.1
    losses, chosen, rejected = dpo_loss(PC, PR, RC, RR, beta=beta)
    assert losses.tolist() == pytest.approx([-_log_sigmoid(beta * h) for h in H], abs=1e-12)
    assert chosen.tolist() == pytest.approx([0.1 * 1.0, 0.1 * 0.2])
    assert rejected.tolist() == pytest.approx([0.1 * -0.5, 0.1 * -0.5])
    eps = 0.2
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    assert losses.tolist() == pytest.approx(
        [-(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h) for h in H]
    )


def test_dpo_starts_at_ln2_when_the_policy_is_the_reference():
    losses, chosen, rejected = dpo_loss(PC, PR, PC, PR, beta=0.5)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-12)
    assert chosen.tolist() == rejected.tolist() == [0.0, 0.0]


def test_ipo_and_hinge():
    beta = 0.25
    ipo, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="ipo")
    assert ipo.tolist() == pytest.approx([(h - 1 / (2 * beta)) ** 2 for h in H])
    hinge, _, _ = dpo_loss(PC, PR, RC, RR, beta=1.0, loss_type="hinge")
    assert hinge.tolist() == pytest.approx([max(0.0, 1 - h) for h in H])  # [0, 0.3]
    assert hinge[0].item() == 0.0 and hinge[1].item() > 0
    with pytest.raises(ValueError, match="unknown DPO loss 'rlhf'"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="rlhf")


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    losses, _, _ = dpo_loss(pc, pr, RC, RR, beta=0.1)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    # d/dh of -log σ(βh) is -β σ(-βh)
    assert pc.grad.tolist() == pytest.approx([-0.1 / (1 + math.exp(0.1 * h)) for h in H])


def test_simpo():
    beta, gamma = 2.0, 0.5
    ac, ar = _t(-1.2, -0.4), _t(-1.0, -1.5)
    losses, chosen, rejected = simpo_loss(ac, ar, beta=beta, gamma=gamma)
    expected = [-_log_sigmoid(beta * (c - r) - gamma) for c, r in [(-1.2, -1.0), (-0.4, -1.5)]]
    assert losses.tolist() == pytest.approx(expected)
    assert chosen.tolist() == pytest.approx([-2.4, -0.8])
    assert rejected.tolist() == pytest.approx([-2.0, -3.0])


def test_orpo_odds_ratio():
    lam = 0.1
    ac, ar = _t(-0.3, -2.0), _t(-1.1, -0.7)
    losses, log_odds = orpo_loss(ac, ar, lam=lam)

    def log_odds_of(avg: float) -> float:
        p = math.exp(avg)
        return math.log(p / (1 - p))

    expected = [log_odds_of(c) - log_odds_of(r) for c, r in [(-0.3, -1.1), (-2.0, -0.7)]]
    assert log_odds.tolist() == pytest.approx(expected)
    assert losses.tolist() == pytest.approx([-lam * _log_sigmoid(x) for x in expected])
    # a sure answer (average log-prob 0) keeps a finite loss and gradient
    sure = _t(0.0).requires_grad_()
    loss, _ = orpo_loss(sure, _t(-1.0), lam=lam)
    loss.sum().backward()
    assert math.isfinite(loss.item()) and math.isfinite(sure.grad.item())


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_against_the_formula_with_weights_and_the_clamped_kl():
    """w_d·(1 − σ(β(r − z0))) for desirable answers, w_u·(1 − σ(β(z0 − r))) for undesirable
    ones, z0 = max(0, kl); the rewards are β·r."""
    policy, reference = _t(-10.0, -3.0, -7.0, -4.0), _t(-11.0, -3.5, -6.0, -4.0)
    desirable = torch.tensor([True, False, True, False])
    r = [1.0, 0.5, -1.0, 0.0]
    beta, w_d, w_u = 0.5, 1.5, 0.75
    for kl, z0 in ((0.4, 0.4), (-0.3, 0.0)):  # a negative KL estimate counts as 0
        losses, rewards = kto_loss(
            policy,
            reference,
            desirable,
            _t(kl),
            beta=beta,
            desirable_weight=w_d,
            undesirable_weight=w_u,
        )
        expected = [
            w_d * (1 - _sigmoid(beta * (x - z0))) if good else w_u * (1 - _sigmoid(beta * (z0 - x)))
            for x, good in zip(r, desirable.tolist(), strict=True)
        ]
        assert losses.tolist() == pytest.approx(expected, abs=1e-12)
        assert rewards.tolist() == pytest.approx([beta * x for x in r])


def test_kto_gradient_raises_desirable_lowers_undesirable_and_skips_the_kl():
    policy = _t(-2.0, -2.0).requires_grad_()
    kl = _t(0.7).requires_grad_()
    losses, rewards = kto_loss(policy, _t(-2.0, -2.0), torch.tensor([True, False]), kl, beta=0.1)
    losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]
    assert kl.grad is None and not rewards.requires_grad
    # at r = 0 with no KL each loss is w·(1 − σ(0)) = 0.5
    same, _ = kto_loss(_t(-2.0), _t(-2.0), torch.tensor([True]), _t(0.0), beta=0.1)
    assert same.item() == 0.5


def test_sequence_logps_sums_labelled_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, dtype=torch.float64)
    labels = torch.tensor([[3, -100, 6, 0], [-100, -100, 2, -100]])
    logps, counts = sequence_logps(logits, labels)
    for row in range(2):
        expected = 0.0
        for t in range(4):
            label = labels[row, t].item()
            if label != -100:
                column = logits[row, t].tolist()
                expected += column[label] - math.log(sum(math.exp(x) for x in column))
        assert logps[row].item() == pytest.approx(expected, abs=1e-12)
    assert counts.tolist() == [3, 1]


def test_bradley_terry_with_margin_and_centring():
    chosen, rejected = _t(1.5, -0.2), _t(0.5, 0.3)
    losses = bradley_terry_loss(chosen, rejected)
    assert losses.tolist() == pytest.approx([-_log_sigmoid(1.0), -_log_sigmoid(-0.5)])
    with_margin = bradley_terry_loss(chosen, rejected, margin=_t(2.0, 0.0), center=0.01)
    assert with_margin.tolist() == pytest.approx(
        [-_log_sigmoid(1.0 - 2.0) + 0.01 * 2.0**2, -_log_sigmoid(-0.5) + 0.01 * 0.1**2]
    )
