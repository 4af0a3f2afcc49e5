"""`chuan dpo`: preference optimisation (DPO, cDPO, IPO, SLiC hinge, SimPO, ORPO) on the
fine-tuning engine.

The run is `chuan sft`'s trainer (model set-up for full / freeze / LoRA / QLoRA, adapter
merge, checkpoints with exact resume, torchrun, metrics, report) with the data, the step and
the held-out numbers replaced: a micro-batch is B pairs as 2B rows (chosen, then rejected) in
one forward; each row's log-probability is summed over its answer tokens; the loss is the mean
over the pairs of the global batch.

The reference model's log-probs are computed one pair at a time, with no padding beyond the
pair's longer row, whether precomputed before training or on the fly: the numbers then do
not depend on which pairs share a batch, so precomputed and on-the-fly references are the same
bits, before and after a resume. Under LoRA the reference is the same model with its adapter
switched off (the base, with no second copy in memory).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from chuan.align.dpo_config import REFERENCE_FREE_LOSSES, DPOConfig
from chuan.align.losses import dpo_loss, orpo_loss, sequence_logps, simpo_loss
from chuan.align.pair_data import PairBatch, PairRows, encode_pairs, to_pair_rows
from chuan.align.preferences import Preference, read_preferences
from chuan.align.sft import SFTTrainer, run_fine_tune, split_holdout
from chuan.align.sft_data import SFTDataStats, mix, read_source, render_sample
from chuan.infer.loading import load_model
from chuan.tokenizer.chat_templates import get_template
from chuan.tokenizer.hf import load_tokenizer
from chuan.train.distributed import all_reduce
from chuan.train.loop import PretrainResult, StagePlan, eval_mode, global_batch, stage_plan

# What a step logs beside the loss, each a mean over the pairs of the global batch.
PAIR_STATS = (
    "reward_chosen",
    "reward_rejected",
    "reward_margin",
    "reward_accuracy",
    "logp_chosen",
    "logp_rejected",
)


class DPOTrainer(SFTTrainer):
    verb = "dpo"
    title = "Preference run"

    def __init__(self, cfg: DPOConfig, world):
        self.reference: nn.Module | None = None
        self.preference_stats: dict = {}
        super().__init__(cfg, world)

    # -- data --------------------------------------------------------------------------------

    def build_data(self) -> tuple[list[StagePlan], PairRows | None]:
        cfg = self.cfg
        held_out: list[Preference] = []
        plans = []
        for index, stage in enumerate(cfg.stages):
            loaded = [read_source(s, self.stats, read_preferences) for s in stage.data]
            if index == 0 and cfg.eval.holdout:
                held_out, loaded[0] = split_holdout(loaded[0], cfg.eval.holdout, cfg.seed)
            pairs = mix(stage.data, loaded, seed=cfg.seed + index)
            for pair in pairs:
                self.stats.mixed[pair.origin.rsplit(":", 1)[0]] += 1
            encoded = encode_pairs(self.template, pairs, cfg.max_length, self.stats)
            rows = to_pair_rows(
                encoded, shuffle=stage.shuffle, seed=cfg.seed + index, stats=self.stats
            )
            steps = stage.steps or max(
                1, int(stage.epochs * len(rows)) // global_batch(cfg, self.world)
            )
            plans.append(stage_plan(cfg, index, stage, rows, steps))
        if cfg.eval.data:
            held_out = [
                p for s in cfg.eval.data for p in read_source(s, self.eval_stats, read_preferences)
            ]
        self.sample_conversations = [
            p.conversation(p.chosen) for p in held_out[: cfg.samples.prompts]
        ]
        self._write_rejects()
        if not held_out:
            return plans, None
        encoded = encode_pairs(
            self.template, held_out[: cfg.eval.max_rows], cfg.max_length, self.eval_stats
        )
        return plans, to_pair_rows(encoded, shuffle=False, seed=0, stats=self.eval_stats)

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
        return model

    @contextlib.contextmanager
    def _reference_model(self, model: nn.Module):
        """The reference: the frozen copy, or `model` with its LoRA adapter switched off."""
        if self.reference is not None:
            yield self.reference
            return
        base = getattr(model, "module", model)
        with base.disable_adapter(), eval_mode(base):
            yield base

    @torch.no_grad()
    def _reference_logps(self, model: nn.Module, rows: PairRows, pairs: list[int]) -> torch.Tensor:
        """`[2B]` reference log-probs (chosen of each pair, then rejected), a pair at a time."""
        scores = torch.empty(2, len(pairs), dtype=torch.float64)
        with self._reference_model(model) as reference:
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

    def _pair_losses(
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

    def train_step(self, model: nn.Module, batches: list[PairBatch]) -> dict[str, float]:
        """Forward and backward of one step: the gradient of the mean loss over the pairs of
        the whole global batch (all micro-batches and ranks)."""
        world = self.world
        pairs = torch.tensor([float(sum(b.num_pairs for b in batches))], dtype=torch.float64)
        total = max(all_reduce(pairs.to(world.device), world).item(), 1.0)
        scale = world.size / total  # wrappers average gradients over ranks
        sums = torch.zeros(2 + len(PAIR_STATS), dtype=torch.float64, device=world.device)
        max_logit = -float("inf")
        rows = self._rows_of_step
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                losses, numbers = self._pair_losses(model, batch, rows)
                (losses.sum() * scale).backward()
            max_logit = max(max_logit, numbers["max_logit"])
            sums += torch.stack(
                [
                    losses.detach().double().sum(),
                    torch.tensor(float(batch.num_tokens), dtype=torch.float64),
                    *(numbers[k].double() for k in PAIR_STATS),
                ]
            ).to(sums.device)
        all_reduce(sums, world)
        largest = torch.tensor([max_logit], dtype=torch.float64, device=world.device)
        all_reduce(largest, world, op="max")
        return {
            "loss": sums[0].item() / total,
            "tokens": int(sums[1].item()),
            "max_logit": largest.item(),
            **{k: sums[2 + j].item() / total for j, k in enumerate(PAIR_STATS)},
        }

    @torch.no_grad()
    def held_out(self) -> dict[str, float]:
        """The loss and reward numbers of the held-out pairs (every rank scores them all)."""
        rows, per = self.eval_rows, self.cfg.micro_batch_size
        sums = torch.zeros(1 + len(PAIR_STATS), dtype=torch.float64)
        with eval_mode(self.model):
            for start in range(0, len(rows), per):
                batch = rows.rows_batch(list(range(start, min(start + per, len(rows)))))
                losses, numbers = self._pair_losses(self.model, batch.to(self.world.device), rows)
                sums += torch.stack(
                    [losses.double().sum().cpu(), *(numbers[k].double().cpu() for k in PAIR_STATS)]
                )
        if hasattr(self.model, "reshard"):
            self.model.reshard()
        means = (sums / len(rows)).tolist()
        return {
            "eval_loss": means[0],
            **{f"eval_{k}": v for k, v in zip(PAIR_STATS, means[1:], strict=True)},
        }

    def prepare_stage(self, plan: StagePlan) -> None:
        self._rows_of_step = plan.rows

    # -- report ------------------------------------------------------------------------------

    def report_extras(self) -> tuple[dict, list[str]]:
        extra, lines = super().report_extras()
        cfg = self.cfg
        extra["loss"] = cfg.loss
        extra["beta"] = cfg.loss_beta
        extra["reference"] = (
            None
            if cfg.loss in REFERENCE_FREE_LOSSES
            else cfg.reference or ("adapter off" if self.reference is None else cfg.model)
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
                f"- held-out preference accuracy {first['eval_reward_accuracy']:.1%} → "
                f"{last['eval_reward_accuracy']:.1%}, reward margin "
                f"{first['eval_reward_margin']:.4f} → {last['eval_reward_margin']:.4f}",
            ]
        return extra, lines


def inspect_pairs(cfg: DPOConfig, count: int) -> str:
    """The first `count` pairs of the first stage as the model sees them (`--inspect`)."""
    template = get_template(cfg.template, load_tokenizer(cfg.model))
    stats = SFTDataStats()
    stage = cfg.stages[0]
    loaded = [read_source(source, stats, read_preferences) for source in stage.data]
    pairs = mix(stage.data, loaded, seed=cfg.seed)[: 2 * count]  # spares for drops
    shown = []
    for pair, chosen, rejected in encode_pairs(template, pairs, cfg.max_length, stats)[:count]:
        shown += [
            "chosen:\n" + render_sample(template, pair.conversation(pair.chosen), chosen),
            "rejected:\n" + render_sample(template, pair.conversation(pair.rejected), rejected),
        ]
    return "\n\n".join(shown)


def dpo(cfg: DPOConfig, *, resume: str | None = None) -> PretrainResult:
    """Run (or, with `resume="auto"` or a checkpoint path, continue) a preference run."""
    return run_fine_tune(DPOTrainer, cfg, resume)
