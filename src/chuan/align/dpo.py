"""`chuan dpo`: preference optimisation (DPO, cDPO, IPO, SLiC hinge, SimPO, ORPO, and KTO on
unpaired data) on the fine-tuning engine.

The run is the pair engine (`chuan.align.pair_trainer`: `chuan sft`'s model set-up, adapter
merge, checkpoints with exact resume, torchrun, metrics and report, with pairs for rows); this
module adds the reference model and the loss, over each row's log-probability summed over its
answer tokens.

The reference model's log-probs are computed one pair at a time, with no padding beyond the
pair's longer row, whether precomputed before training or on the fly: the numbers then do
not depend on which pairs share a batch, so precomputed and on-the-fly references are the same
bits, before and after a resume. Under LoRA the reference is the same model with its adapter
switched off (the base, with no second copy in memory).

KTO (`KTOTrainer`) trains on answers labelled desirable or not. Each sample is a pair of rows
(`chuan.align.pair_data.kl_pairs`): its own answer, and its prompt with another sample's
answer, from which KTO estimates the KL term; so the reference scores both like a pair's,
with the same guarantees.
"""

from __future__ import annotations

import gc
import logging
import math

import numpy as np
import torch
from torch import nn

from chuan.align.adapters import reference_model
from chuan.align.dpo_config import REFERENCE_FREE_LOSSES, DPOConfig
from chuan.align.losses import dpo_loss, kto_loss, orpo_loss, sequence_logps, simpo_loss
from chuan.align.pair_data import PairBatch, PairRows, kl_pairs
from chuan.align.pair_trainer import PairTrainer
from chuan.align.preferences import Preference, read_unpaired
from chuan.align.sft import run_fine_tune
from chuan.infer.loading import load_model
from chuan.train.data import Batch
from chuan.train.distributed import all_reduce
from chuan.train.loop import PretrainResult, StagePlan

log = logging.getLogger(__name__)

# TRL's advised range of w_d·n_d / (w_u·n_u), the weighted desirable-to-undesirable ratio
# (`trl` docs, "KTO Trainer"; `trl/trainer/kto_trainer.py` warns outside it).
KTO_BALANCE = (1.0, 4 / 3)


class DPOTrainer(PairTrainer):
    verb = "dpo"
    title = "Preference run"
    pair_stats = (*PairTrainer.pair_stats, "logp_chosen", "logp_rejected")

    def __init__(self, cfg: DPOConfig, world):
        self.reference: nn.Module | None = None
        super().__init__(cfg, world)

    # -- model and reference -----------------------------------------------------------------

    def build_model(self) -> nn.Module:
        model = super().build_model()
        cfg = self.cfg
        if cfg.loss in REFERENCE_FREE_LOSSES:
            return model
        if cfg.reference is not None or cfg.finetune not in ("lora", "qlora"):
            self.reference = load_model(
                cfg.reference or cfg.model, device=str(self.world.device), dtype="fp32"
            ).eval()
            self.reference.requires_grad_(False)
        if cfg.precompute_reference:
            model.to(self.world.device)
            for plan in self.plans:
                plan.rows = plan.rows.with_reference(self._score_reference(model, plan.rows))
            if self.eval_rows is not None:
                self.eval_rows = self.eval_rows.with_reference(
                    self._score_reference(model, self.eval_rows)
                )
            self.reference = None  # every batch now carries its numbers: free the copy
            gc.collect()
        return model

    @torch.no_grad()
    def _reference_logps(self, model: nn.Module, rows: PairRows, pairs: list[int]) -> torch.Tensor:
        """`[2B]` reference log-probs (chosen of each pair, then rejected), a pair at a time."""
        scores = torch.empty(2, len(pairs), dtype=torch.float64)
        with reference_model(model, self.reference) as reference:
            for i, row in enumerate(pairs):
                batch = rows.rows_batch([row]).batch.to(self.world.device)
                logps, _, _ = self._logps(reference, batch)
                scores[:, i] = logps.double().cpu()
        return scores.reshape(-1).to(self.world.device)

    def _score_reference(self, model: nn.Module, rows: PairRows) -> np.ndarray:
        scores = self._reference_logps(model, rows, list(range(len(rows))))
        return scores.cpu().numpy().reshape(2, -1).T

    # -- the step ----------------------------------------------------------------------------

    def _logps(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(summed answer log-probs, answer token counts) per row, and the largest logit."""
        with torch.autocast(
            batch.input_ids.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).logits
        logps, counts = sequence_logps(logits[:, :-1].float(), batch.labels[:, 1:])
        return logps, counts, logits.detach().max().item()

    def pair_losses(
        self, model: nn.Module, pb: PairBatch, rows: PairRows
    ) -> tuple[torch.Tensor, dict]:
        """Per-pair losses of one micro-batch and its per-pair numbers for the log."""
        cfg, n = self.cfg, pb.num_pairs
        logps, counts, max_logit = self._logps(model, pb.batch)
        chosen, rejected = logps[:n], logps[n:]
        beta = cfg.loss_beta
        if cfg.loss in REFERENCE_FREE_LOSSES:
            average = logps / counts.clamp(min=1)
            if cfg.loss == "simpo":
                losses, r_chosen, r_rejected = simpo_loss(
                    average[:n], average[n:], beta=beta, gamma=cfg.simpo_gamma
                )
            else:
                odds, _ = orpo_loss(average[:n], average[n:], lam=beta)
                losses = odds - average[:n]  # ORPO adds the chosen answers' NLL
                r_chosen, r_rejected = beta * average[:n].detach(), beta * average[n:].detach()
        else:
            reference = pb.reference
            if reference is None:
                reference = self._reference_logps(model, rows, pb.pairs)
            policy, reference = logps, reference.to(logps.dtype)
            if cfg.loss == "ipo":  # IPO compares per-token averages
                policy, reference = policy / counts.clamp(min=1), reference / counts.clamp(min=1)
            losses, r_chosen, r_rejected = dpo_loss(
                policy[:n],
                policy[n:],
                reference[:n],
                reference[n:],
                beta=beta,
                loss_type=cfg.loss,
                label_smoothing=cfg.label_smoothing,
            )
        if cfg.sft_weight:
            losses = losses - cfg.sft_weight * chosen / counts[:n].clamp(min=1)
        numbers = {
            "reward_chosen": r_chosen.sum(),
            "reward_rejected": r_rejected.sum(),
            "reward_margin": (r_chosen - r_rejected).sum(),
            "reward_accuracy": (r_chosen > r_rejected).double().sum(),
            "logp_chosen": chosen.detach().sum(),
            "logp_rejected": rejected.detach().sum(),
            "max_logit": max_logit,
        }
        return losses, numbers

    # -- report ------------------------------------------------------------------------------

    def report_extras(self) -> tuple[dict, list[str]]:
        extra, lines = super().report_extras()
        cfg = self.cfg
        extra["loss"] = cfg.loss
        extra["beta"] = cfg.loss_beta
        extra["reference"] = (
            None
            if cfg.loss in REFERENCE_FREE_LOSSES
            else cfg.reference
            or ("adapter off" if cfg.finetune in ("lora", "qlora") else cfg.model)
        )
        extra["held_out_first"] = self.first_held_out
        extra["held_out_last"] = self.last_held_out
        lines[:0] = [
            "",
            f"## Preference loss: {cfg.loss}, beta {cfg.loss_beta:g}"
            + (f", label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "")
            + (f", SFT weight {cfg.sft_weight:g}" if cfg.sft_weight else ""),
            "",
            f"- reference: {extra['reference'] or 'none (reference-free loss)'}"
            + (", precomputed" if cfg.precompute_reference else ""),
        ]
        if self.first_held_out and self.last_held_out:
            first, last = self.first_held_out, self.last_held_out
            lines += [
                f"- held-out reward accuracy {first['eval_reward_accuracy']:.1%} → "
                f"{last['eval_reward_accuracy']:.1%}, reward margin "
                f"{first['eval_reward_margin']:.4f} → {last['eval_reward_margin']:.4f}",
            ]
        return extra, lines


def weighted_balance(desirable: int, undesirable: int, cfg: DPOConfig) -> float:
    """w_d·n_d / (w_u·n_u) for n_d desirable and n_u undesirable answers (inf when n_u is 0)."""
    weighted = cfg.undesirable_weight * undesirable
    return cfg.desirable_weight * desirable / weighted if weighted else math.inf


def _rows(batch: Batch, part: slice) -> Batch:
    return Batch.of(batch.input_ids[part], batch.segment_ids[part], batch.labels[part])


class KTOTrainer(DPOTrainer):
    """`loss: kto`: a micro-batch is B samples as 2B rows, their answers then their KL rows
    (each prompt with another sample's answer); the policy scores the KL rows without a
    gradient, as TRL does, since they only give the reference point z0."""

    records = samples = "answers"
    pair_stats = (
        "reward_desirable",
        "reward_undesirable",
        "desirable_fraction",
        "reward_accuracy",
        "kl",
    )
    read_records = staticmethod(read_unpaired)
    as_pairs = staticmethod(kl_pairs)

    @staticmethod
    def titles(pair: Preference) -> tuple[str, str]:
        return (
            "desirable" if pair.desirable else "undesirable",
            "KL row (another sample's answer)",
        )

    def build_data(self) -> tuple[list[StagePlan], PairRows | None]:
        plans, eval_rows = super().build_data()
        self.balance = [self._check_balance(plan) for plan in plans]
        return plans, eval_rows

    def _check_balance(self, plan: StagePlan) -> float:
        """The stage's weighted ratio, with a warning when it is outside `KTO_BALANCE`."""
        labels = np.asarray(plan.rows.data["desirable"])
        desirable, undesirable = int(labels.sum()), int((~labels).sum())
        ratio = weighted_balance(desirable, undesirable, self.cfg)
        low, high = KTO_BALANCE
        if not low <= ratio <= high and self.world.is_main:
            weight = self.cfg.desirable_weight / ratio  # the weight that makes the ratio 1
            advice = (
                f" (desirable_weight {low * weight:.3g} to {high * weight:.3g} is within it)"
                if desirable and undesirable
                else ""
            )
            log.warning(
                "stage %d: %d desirable and %d undesirable answers give w_d·n_d / (w_u·n_u) "
                "= %.3g, outside the advised %g to %.3g%s",
                plan.index,
                desirable,
                undesirable,
                ratio,
                low,
                high,
                advice,
            )
        return ratio

    def pair_losses(
        self, model: nn.Module, pb: PairBatch, rows: PairRows
    ) -> tuple[torch.Tensor, dict]:
        """Per-sample KTO losses, z0 the mean KL-row log-ratio over the micro-batches of
        every rank (each rank's mean, averaged, as TRL gathers them)."""
        cfg, n, world = self.cfg, pb.num_pairs, self.world
        with torch.no_grad():
            kl_logps, _, kl_logit = self._logps(model, _rows(pb.batch, slice(n, None)))
        logps, _, max_logit = self._logps(model, _rows(pb.batch, slice(None, n)))
        reference = pb.reference
        if reference is None:
            reference = self._reference_logps(model, rows, pb.pairs)
        reference = reference.to(logps.dtype)
        kl = (kl_logps - reference[n:]).mean().reshape(1)
        kl = all_reduce(kl, world) / world.size
        losses, rewards = kto_loss(
            logps,
            reference[:n],
            pb.desirable,
            kl,
            beta=cfg.loss_beta,
            desirable_weight=cfg.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
        )
        r, desirable = rewards.double(), pb.desirable
        numbers = {
            "reward_desirable": r[desirable].sum(),
            "reward_undesirable": r[~desirable].sum(),
            "desirable_fraction": desirable.double().sum(),
            "reward_accuracy": torch.where(desirable, r > 0, r < 0).double().sum(),
            "kl": kl.clamp(min=0).double().sum() * n,
            "max_logit": max(max_logit, kl_logit),
        }
        return losses, numbers

    def step_means(self, means: dict[str, float]) -> dict[str, float]:
        """Rewards as means over the desirable and over the undesirable answers (NaN for a
        step that has none of them), and their difference."""
        share = means["desirable_fraction"]
        desirable = means["reward_desirable"] / share if share else math.nan
        undesirable = means["reward_undesirable"] / (1 - share) if share < 1 else math.nan
        return means | {
            "reward_desirable": desirable,
            "reward_undesirable": undesirable,
            "reward_margin": desirable - undesirable,
        }

    def report_extras(self) -> tuple[dict, list[str]]:
        extra, lines = super().report_extras()
        cfg = self.cfg
        extra["desirable_weight"] = cfg.desirable_weight
        extra["undesirable_weight"] = cfg.undesirable_weight
        extra["weighted_balance"] = self.balance
        lines.append(
            f"- desirable weight {cfg.desirable_weight:g}, undesirable weight "
            f"{cfg.undesirable_weight:g}; w_d·n_d / (w_u·n_u) by stage: "
            + ", ".join(f"{b:.3g}" for b in self.balance)
            + " (advised: 1 to 4/3)"
        )
        if self.first_held_out and self.last_held_out:
            first, last = self.first_held_out, self.last_held_out
            lines.append(
                f"- held-out reward of desirable answers {first['eval_reward_desirable']:.4f} "
                f"→ {last['eval_reward_desirable']:.4f}, of undesirable ones "
                f"{first['eval_reward_undesirable']:.4f} → {last['eval_reward_undesirable']:.4f}"
            )
        return extra, lines


def trainer_class(cfg: DPOConfig) -> type[DPOTrainer]:
    """The trainer of `cfg.loss`: KTO's for unpaired answers, else the pair losses'."""
    return KTOTrainer if cfg.loss == "kto" else DPOTrainer


def dpo(cfg: DPOConfig, *, resume: str | None = None) -> PretrainResult:
    """Run (or, with `resume="auto"` or a checkpoint path, continue) a preference run."""
    return run_fine_tune(trainer_class(cfg), cfg, resume)
