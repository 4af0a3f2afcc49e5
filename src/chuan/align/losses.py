"""Preference losses, each a per-pair tensor (the caller takes the mean over the global batch).

Formulas and defaults as the papers give them and TRL implements them (`trl/trainer/
dpo_trainer.py`, `cpo_trainer.py`, `orpo_trainer.py`, `kto_trainer.py`), so a run here and a
TRL run of the same settings optimise the same objective:

- DPO (Rafailov et al. 2023): `-log σ(β·[(π_c − ref_c) − (π_r − ref_r)])` over summed answer
  log-probs; cDPO label smoothing ε (Mitchell 2023) mixes in the flipped pair:
  `−(1−ε)·log σ(βh) − ε·log σ(−βh)`.
- IPO (Azar et al. 2023): `(h − 1/(2β))²`, the caller passing average (not summed) answer
  log-probs as TRL does; SLiC hinge (Zhao et al. 2023): `max(0, 1 − βh)`.
- SimPO (Meng et al. 2024): reference-free, average answer log-probs, margin γ:
  `−log σ(β·(avg_c − avg_r) − γ)`.
- ORPO (Hong et al. 2024): `−λ·log σ(log odds(y_c) − log odds(y_r))` with
  `odds(y) = p/(1−p)`, `p = exp(avg log-prob)`; the caller adds the chosen answers' NLL.
- KTO (Ethayarajh et al. 2024): per unpaired answer, with r = π − ref over summed answer
  log-probs, `w_d·(1 − σ(β·(r − z0)))` for a desirable one and `w_u·(1 − σ(β·(z0 − r)))` for
  an undesirable one; z0 is the batch's KL estimate (see `kto_loss`).
- Bradley–Terry reward-model loss (InstructGPT, Ouyang et al. 2022, eq. 1):
  `−log σ(r_c − r_r − m)` with an optional margin m (Llama 2, Touvron et al. 2023, eq. 2) and
  TRL's reward centring `λ·(r_c + r_r)²` (Eisenstein et al. 2023), which keeps the scores
  near zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chuan.model.loss import IGNORE_INDEX

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the log-probability of its labelled tokens summed, and how many there are.

    `logits[i, t]` predicts `labels[i, t]` (shift before calling); `IGNORE_INDEX` labels are not
    answer tokens. Differentiable in `logits`.
    """
    mask = labels != IGNORE_INDEX
    token_logps = -F.cross_entropy(
        logits.transpose(1, 2), labels.masked_fill(~mask, 0), reduction="none"
    )
    return (token_logps * mask).sum(-1), mask.sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses and the implicit rewards `β·(π − ref)` of both answers."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
            -beta * h
        )
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(
    average_chosen: torch.Tensor,
    average_rejected: torch.Tensor,
    *,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair SimPO losses over average answer log-probs, and the rewards `β·avg`."""
    losses = -F.logsigmoid(beta * (average_chosen - average_rejected) - gamma)
    return losses, beta * average_chosen.detach(), beta * average_rejected.detach()


def orpo_loss(
    average_chosen: torch.Tensor, average_rejected: torch.Tensor, *, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair ORPO odds-ratio terms `−λ·log σ(log odds ratio)`, and the log odds ratios.

    `log(1 − p)` is `log1p(−exp(avg))`, finite while `avg < 0` (a sure answer, avg = 0, has
    infinite odds); averages are clamped just below 0 to keep the gradient finite.
    """
    top = torch.tensor(-1e-6, dtype=average_chosen.dtype, device=average_chosen.device)
    c, r = torch.minimum(average_chosen, top), torch.minimum(average_rejected, top)
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    return -lam * F.logsigmoid(log_odds), log_odds.detach()


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample KTO losses (Ethayarajh et al. 2024, arXiv:2402.01306) and the rewards
    `β·r`, r = policy − reference summed answer log-probs:

        desirable:    w_d · (1 − σ(β·(r − z0)))
        undesirable:  w_u · (1 − σ(β·(z0 − r)))
        z0 = max(0, kl), no gradient

    `kl` is the mean log-ratio r of the batch's mismatched pairs (a prompt with another
    sample's answer), averaged over the ranks, as TRL's `kto_loss` gathers it: an estimate of
    KL(π‖ref) that is clamped at 0 because a KL divergence is never negative, and detached
    because it only sets the reference point the rewards are judged against. A desirable
    answer's loss falls as r rises above z0, an undesirable one's as r falls below it, each
    saturating in σ: an answer far on its side of the reference point gives almost no
    gradient.
    """
    z0 = kl.detach().clamp(min=0)
    logratio = policy_logps - reference_logps
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratio - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratio))),
    )
    return losses, beta * logratio.detach()


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center: float = 0.0,
) -> torch.Tensor:
    """Per-pair reward-model losses from the scalar rewards of both answers."""
    difference = chosen - rejected if margin is None else chosen - rejected - margin
    losses = -F.logsigmoid(difference)
    if center:
        losses = losses + center * (chosen + rejected) ** 2
    return losses
