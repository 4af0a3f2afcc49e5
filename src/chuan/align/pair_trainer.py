"""The engine of the preference commands (`chuan dpo`, `chuan rm`): `chuan sft`'s trainer
with pairs for rows.

A micro-batch is B pairs as 2B rows (the B prompts with their chosen answers, then with
their rejected ones) in one forward; a subclass's `pair_losses` turns it into one loss per
pair and per-pair numbers for the log; the step's loss is the mean over the pairs of the
global batch (every micro-batch and rank), so accumulation and more ranks give the same
step. Held-out pairs are scored by every rank, all of them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from chuan.align.pair_config import PairConfig
from chuan.align.pair_data import PairBatch, PairRows, encode_pairs, to_pair_rows
from chuan.align.preferences import Preference, read_preferences
from chuan.align.sft import SFTTrainer, split_holdout
from chuan.align.sft_data import SFTDataStats, mix, read_source, render_sample
from chuan.tokenizer.chat_templates import get_template
from chuan.tokenizer.hf import load_tokenizer
from chuan.train.distributed import all_reduce
from chuan.train.loop import StagePlan, eval_mode, global_batch, stage_plan


class PairTrainer(SFTTrainer):
    records = samples = "pairs"
    # What a step logs beside the loss, each a mean over the pairs of the global batch.
    pair_stats: tuple[str, ...] = (
        "reward_chosen",
        "reward_rejected",
        "reward_margin",
        "reward_accuracy",
    )
    # How a data file is read, and its records made pairs (a subclass with other data, KTO's
    # unpaired answers, replaces both).
    read_records = staticmethod(read_preferences)

    @staticmethod
    def as_pairs(records: list) -> list[Preference]:
        """The records, in their order, as the pairs to encode; pairs already are."""
        return records

    @staticmethod
    def titles(pair: Preference) -> tuple[str, str]:
        """What `--inspect` calls a pair's two rows."""
        return "chosen", "rejected"

    def step_means(self, means: dict[str, float]) -> dict[str, float]:
        """The logged numbers, from the means of `pair_stats` over the pairs of a step or of
        the held-out set; a subclass derives others from them."""
        return means

    def pair_losses(
        self, model: nn.Module, pb: PairBatch, rows: PairRows
    ) -> tuple[torch.Tensor, dict]:
        """Per-pair losses of one micro-batch, and per-pair sums of `pair_stats` (plus the
        largest logit, `max_logit`) for the log."""
        raise NotImplementedError

    # -- data --------------------------------------------------------------------------------

    def build_data(self) -> tuple[list[StagePlan], PairRows | None]:
        cfg = self.cfg
        held_out: list = []
        plans = []
        for index, stage in enumerate(cfg.stages):
            loaded = [read_source(s, self.stats, self.read_records) for s in stage.data]
            if index == 0 and cfg.eval.holdout:
                held_out, loaded[0] = split_holdout(loaded[0], cfg.eval.holdout, cfg.seed)
            records = mix(stage.data, loaded, seed=cfg.seed + index)
            for record in records:
                self.stats.mixed[record.origin.rsplit(":", 1)[0]] += 1
            pairs = self.as_pairs(records)
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
                r for s in cfg.eval.data for r in read_source(s, self.eval_stats, self.read_records)
            ]
        held_out = self.as_pairs(held_out)
        references = [p for p in held_out if p.desirable is not False]  # no undesirable one
        self.sample_conversations = [
            p.conversation(p.chosen) for p in references[: cfg.samples.prompts]
        ]
        self._write_rejects()
        if not held_out:
            return plans, None
        encoded = encode_pairs(
            self.template, held_out[: cfg.eval.max_rows], cfg.max_length, self.eval_stats
        )
        return plans, to_pair_rows(encoded, shuffle=False, seed=0, stats=self.eval_stats)

    def train_step(self, model: nn.Module, batches: list[PairBatch]) -> dict[str, float]:
        """Forward and backward of one step: the gradient of the mean loss over the pairs of
        the whole global batch (all micro-batches and ranks)."""
        world = self.world
        pairs = torch.tensor([float(sum(b.num_pairs for b in batches))], dtype=torch.float64)
        total = max(all_reduce(pairs.to(world.device), world).item(), 1.0)
        scale = world.size / total  # wrappers average gradients over ranks
        sums = torch.zeros(2 + len(self.pair_stats), dtype=torch.float64, device=world.device)
        max_logit = -float("inf")
        rows = self._rows_of_step
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                losses, numbers = self.pair_losses(model, batch, rows)
                (losses.sum() * scale).backward()
            max_logit = max(max_logit, numbers["max_logit"])
            sums += torch.stack(
                [
                    losses.detach().double().sum(),
                    torch.tensor(float(batch.num_tokens), dtype=torch.float64),
                    *(numbers[k].double() for k in self.pair_stats),
                ]
            ).to(sums.device)
        all_reduce(sums, world)
        largest = torch.tensor([max_logit], dtype=torch.float64, device=world.device)
        all_reduce(largest, world, op="max")
        return {
            "loss": sums[0].item() / total,
            "tokens": int(sums[1].item()),
            "max_logit": largest.item(),
            **self.step_means(
                {k: sums[2 + j].item() / total for j, k in enumerate(self.pair_stats)}
            ),
        }

    @torch.no_grad()
    def held_out(self) -> dict[str, float]:
        """The loss and reward numbers of the held-out pairs (every rank scores them all)."""
        rows, per = self.eval_rows, self.cfg.micro_batch_size
        sums = torch.zeros(1 + len(self.pair_stats), dtype=torch.float64)
        with eval_mode(self.model):
            for start in range(0, len(rows), per):
                batch = rows.rows_batch(list(range(start, min(start + per, len(rows)))))
                losses, numbers = self.pair_losses(self.model, batch.to(self.world.device), rows)
                sums += torch.stack(
                    [
                        losses.double().sum().cpu(),
                        *(numbers[k].double().cpu() for k in self.pair_stats),
                    ]
                )
        if hasattr(self.model, "reshard"):
            self.model.reshard()
        means = (sums / len(rows)).tolist()
        stats = self.step_means(dict(zip(self.pair_stats, means[1:], strict=True)))
        return {"eval_loss": means[0], **{f"eval_{k}": v for k, v in stats.items()}}

    def prepare_stage(self, plan: StagePlan) -> None:
        self._rows_of_step = plan.rows


def inspect_pairs(cfg: PairConfig, count: int, trainer: type[PairTrainer] = PairTrainer) -> str:
    """The first `count` pairs of the first stage as the model sees them (`--inspect`), read
    and made pairs as `trainer` makes them."""
    template = get_template(cfg.template, load_tokenizer(cfg.model))
    stats = SFTDataStats()
    stage = cfg.stages[0]
    loaded = [read_source(source, stats, trainer.read_records) for source in stage.data]
    pairs = trainer.as_pairs(mix(stage.data, loaded, seed=cfg.seed))[: 2 * count]  # spares
    shown = []
    for pair, chosen, rejected in encode_pairs(template, pairs, cfg.max_length, stats)[:count]:
        first, second = trainer.titles(pair)
        shown += [
            f"{first}:\n" + render_sample(template, pair.conversation(pair.chosen), chosen),
            f"{second}:\n" + render_sample(template, pair.conversation(pair.rejected), rejected),
        ]
    return "\n\n".join(shown)
