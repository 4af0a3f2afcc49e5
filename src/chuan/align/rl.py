"""`chuan ppo` and `chuan grpo`: online RL on the fine-tuning engine.

The run is `chuan sft`'s trainer (model set-up, LoRA and its merge, checkpoints, torchrun,
metrics, TensorBoard, report) with an iteration for a step. An iteration:

1. rollout: each rank draws its prompts, and the policy samples completions with chuan's
   batched KV-cache generator (`chuan.align.rollout`; seeds from (seed, iteration, index),
   so a resumed run samples what an uninterrupted one did);
2. scoring: the reward model or reward function scores each completion; the policy's and
   the reference's log-probs of the sampled tokens (teacher-forced) and, for PPO, the
   critic's values, all without gradients;
3. advantages: PPO's per-token rewards `−β·KL` plus the score on the last token, then GAE;
   GRPO's group-normalised scores (`chuan.align.rl_losses`);
4. updates: `ppo_epochs` passes over the rollout in `minibatches` optimizer steps each,
   the clipped policy loss on the actor (and for GRPO the KL term when `kl_coef` > 0), the
   clipped value loss on the critic, each model's gradient clipped on its own. During the
   critic warm-up only the critic trains.

Checkpoints are written between iterations and hold the critic and its optimizer beside
the actor's, so a resumed run on a CPU is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from chuan.align.adapters import apply_finetune, reference_model
from chuan.align.conversations import Conversation
from chuan.align.prompts import PromptRecord, read_prompts
from chuan.align.rewards import (
    call_reward_function,
    load_reward_function,
    load_scorer,
    score_sequences,
)
from chuan.align.rl_config import GRPOConfig, PPOConfig, RLConfig
from chuan.align.rl_losses import (
    gae,
    group_advantages,
    kl_coefficient,
    kl_estimate,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from chuan.align.rm import write_reward_model
from chuan.align.rollout import (
    Rollout,
    completion_seed,
    response_logps,
    response_values,
    sample,
)
from chuan.align.sft import SFTTrainer, one_line, run_fine_tune, split_holdout
from chuan.align.sft_data import SFTDataStats, mix, read_source
from chuan.config import ConfigError
from chuan.infer.loading import load_model
from chuan.infer.sampling import SamplingConfig
from chuan.model.checkpoint import read_config_dict
from chuan.model.convert import load_reward_model
from chuan.tokenizer.chat_templates import get_template
from chuan.tokenizer.hf import load_tokenizer
from chuan.train.checkpoint import load_checkpoint, save_checkpoint
from chuan.train.distributed import all_reduce
from chuan.train.loop import (
    PretrainResult,
    RateWindow,
    StagePlan,
    clip_grad_norm,
    eval_mode,
    stage_plan,
    stop_everywhere,
)
from chuan.train.metrics import plot_metrics, read_metrics
from chuan.train.optim import build_optimizer, build_scheduler
from chuan.train.parallelize import parallelize, shard_fsdp, unsharded, wrap_ddp

SHOWN_SAMPLES = 3  # sampled completions of the last iteration kept for the report


@dataclass(eq=False)
class PromptRows:
    """A stage's prompts as token ids, drawn in a seeded order that starts afresh with a new
    permutation on every pass; `row_length` is the longest row a rollout makes."""

    records: list[PromptRecord]
    ids: list[list[int]]
    row_length: int
    shuffle: bool = True
    seed: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def take(self, start: int, count: int) -> list[int]:
        """Record indices at positions `start … start + count − 1` of the drawing order."""
        picked = []
        for position in range(start, start + count):
            passes, offset = divmod(position, len(self))
            picked.append(int(self._order(passes)[offset]))
        return picked

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a stage's rows live as long as the run)
    def _order(self, passes: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self))
        return np.random.default_rng([self.seed, passes]).permutation(len(self))


def _as_conversation(record: PromptRecord) -> Conversation:
    """A prompt with its reference as the answer (the SFT report's replies read these)."""
    answer = ("assistant", record.reference or "")
    return Conversation((*record.prompt, answer), record.system, record.origin)


def _sum(values: torch.Tensor) -> torch.Tensor:
    return values.detach().double().sum().cpu()


class RLTrainer(SFTTrainer):
    """What PPO and GRPO share; `group_size` completions per prompt (1 for PPO)."""

    records = samples = "prompts"
    group_size = 1
    uses_critic = False
    kl_in_loss = False  # GRPO's KL term is in the loss, PPO's in the rewards
    update_stats: tuple[str, ...] = ()  # what `_update` adds up for the log

    def __init__(self, cfg: RLConfig, world):
        self.reference: nn.Module | None = None
        self.scorer: nn.Module | None = None
        # The reward is checked first: a wrong name fails before any model loads.
        self.reward_function = None
        if cfg.reward_function is not None:
            self.reward_function = load_reward_function(cfg.reward_function)
        else:
            read_config_dict(cfg.reward_model)
        self.critic: nn.Module | None = None
        self.shown: list[dict] = []
        super().__init__(cfg, world)

    # -- data --------------------------------------------------------------------------------

    def build_data(self) -> tuple[list[StagePlan], PromptRows | None]:
        cfg = self.cfg
        held_out: list[PromptRecord] = []
        plans = []
        per_iteration = cfg.rollout.prompts * self.world.size
        for index, stage in enumerate(cfg.stages):
            loaded = [read_source(s, self.stats, read_prompts) for s in stage.data]
            if index == 0 and cfg.eval.holdout:
                held_out, loaded[0] = split_holdout(loaded[0], cfg.eval.holdout, cfg.seed)
            records = mix(stage.data, loaded, seed=cfg.seed + index)
            for record in records:
                self.stats.mixed[record.origin.rsplit(":", 1)[0]] += 1
            rows = self._rows(records, self.stats, stage.shuffle, cfg.seed + index)
            steps = stage.steps or max(1, int(stage.epochs * len(rows)) // per_iteration)
            plans.append(stage_plan(cfg, index, stage, rows, steps))
        if cfg.eval.data:
            held_out = [
                r for s in cfg.eval.data for r in read_source(s, self.eval_stats, read_prompts)
            ]
        self.sample_conversations = [_as_conversation(r) for r in held_out[: cfg.samples.prompts]]
        self._write_rejects()
        eval_rows = None
        if held_out:
            eval_rows = self._rows(held_out[: cfg.eval.max_rows], self.eval_stats, False, 0)
        return plans, eval_rows

    def _rows(self, records: list[PromptRecord], stats, shuffle: bool, seed: int) -> PromptRows:
        """The records whose prompt leaves room for `max_new_tokens`, encoded by the template;
        the others counted as too long."""
        cfg = self.cfg
        room = cfg.max_length - cfg.rollout.max_new_tokens
        kept, ids = [], []
        for record in records:
            encoded = self.template.prompt_ids(record.messages())
            if len(encoded) > room:
                stats.dropped_too_long += 1
                continue
            kept.append(record)
            ids.append(encoded)
        if not kept:
            raise ConfigError(
                f"every prompt is longer than max_length - rollout.max_new_tokens = {room} "
                "tokens; raise max_length or lower rollout.max_new_tokens"
            )
        stats.samples += len(kept)
        stats.tokens += sum(len(i) for i in ids)
        return PromptRows(kept, ids, cfg.max_length, shuffle, seed)

    # -- models ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        cfg, device = self.cfg, self.world.device
        model = super().build_model()
        if self.needs_reference and (
            cfg.reference is not None or cfg.finetune not in ("lora", "qlora")
        ):
            self.reference = load_model(
                cfg.reference or cfg.model, device=str(device), dtype="fp32"
            )
            self.reference.requires_grad_(False)
        if cfg.reward_model is not None:
            self.scorer = load_scorer(cfg.reward_model, model.config.vocab_size, device)
        if self.strategy == "fsdp":  # the frozen models are sharded too; each rank runs the
            for frozen in (self.reference, self.scorer):  # same number of forwards on them
                if frozen is not None:
                    shard_fsdp(frozen, self.world)
        if self.uses_critic:
            critic = apply_finetune(load_reward_model(self.critic_source), cfg)
            self.critic = parallelize(critic.to(device), cfg, self.world)
            self.critic.train()
        return model

    @property
    def needs_reference(self) -> bool:
        return True

    @property
    def old_from_update(self) -> bool:
        """Whether the log-probs before the update come from the update's own forward: with
        one epoch of one minibatch the weights have not moved when it runs, so a separate
        scoring pass would compute the same numbers (TRL's GRPO skips it the same way). PPO
        needs them earlier, for its per-token KL rewards."""
        cfg = self.cfg
        return not self.uses_critic and cfg.ppo_epochs == 1 and cfg.minibatches == 1

    # -- one iteration -----------------------------------------------------------------------

    @property
    def critic_warmup(self) -> int:
        """Iterations that train only the critic (PPO's warm-up; none without a critic)."""
        return getattr(self.cfg, "critic_warmup", 0) if self.critic is not None else 0

    def _sampling(self, seed: int) -> SamplingConfig:
        r = self.cfg.rollout
        return SamplingConfig(
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_k=r.top_k,
            top_p=r.top_p,
            stop_token_ids=tuple(self.template.stop_ids),
            seed=seed,
        )

    def _rollout(self, model: nn.Module, rows: PromptRows, indices: list[int], seeds) -> Rollout:
        prompts = [rows.ids[i] for i in indices for _ in range(self.group_size)]
        configs = [self._sampling(s) for s in seeds]
        base = getattr(model, "module", model)
        with eval_mode(base), unsharded(base):
            return sample(base, prompts, configs).to(self.world.device)

    def _scores(self, rollout: Rollout, records: list[PromptRecord]) -> torch.Tensor:
        """`[N]` float64 rewards of the rollout's completions (on the CPU), `records[i]`
        the prompt of completion i."""
        cfg = self.cfg
        if self.scorer is not None:
            scores = score_sequences(
                self.scorer, rollout.batch, self.cfg.micro_batch_size, self.autocast
            ).cpu()
        else:
            decode = self.template.tokenizer.decode
            scores = call_reward_function(
                self.reward_function,
                cfg.reward_function,
                prompts=[self.template.text(r.messages()) for r in records],
                completions=[decode(c, skip_special_tokens=True) for c in rollout.completions],
                completion_ids=rollout.completions,
                reference=[r.reference for r in records],
            )
        if cfg.missing_eos_penalty:
            scores = scores - cfg.missing_eos_penalty * (~rollout.ended.cpu()).double()
        return scores

    def _micro_batches(self, rows: torch.Tensor | range) -> list[list[int]]:
        rows = list(rows)
        per = self.cfg.micro_batch_size
        return [rows[i : i + per] for i in range(0, len(rows), per)]

    @torch.no_grad()
    def _score_rollout(self, model: nn.Module, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Old log-probs, the reference's and the critic's values, micro-batch by micro-batch
        (the policy in training mode, as its updates will see it)."""
        cfg = self.cfg
        parts: dict[str, list[torch.Tensor]] = {"old": [], "ref": [], "values": []}
        for micro in self._micro_batches(range(len(rollout.completions))):
            part = rollout.rows(micro)
            if self.old_from_update:
                parts["old"].append(torch.zeros_like(part.response_mask))
            else:
                parts["old"].append(
                    response_logps(model, part, cfg.rollout.temperature, self.autocast)[0]
                )
            if self.needs_reference:
                with reference_model(model, self.reference) as reference:
                    logps = response_logps(reference, part, cfg.rollout.temperature, self.autocast)
                parts["ref"].append(logps[0])
            if self.critic is not None:
                parts["values"].append(response_values(self.critic, part, self.autocast))
        return {k: torch.cat(v) for k, v in parts.items() if v}

    def advantages(self, rollout: Rollout, scores: torch.Tensor, scored: dict, beta: float):
        """`{"advantages": [N, R]}` (PPO: and `"returns"`) from the rewards `scores` `[N]`
        and what `_score_rollout` gave."""
        raise NotImplementedError

    def _update(
        self,
        model: nn.Module,
        critic: nn.Module | None,
        rollout: Rollout,
        rows: list[int],
        data: dict,
        beta: float,
        train_actor: bool,
        sums: dict,
    ) -> None:
        """Forward and backward of one minibatch (no optimizer step): the actor's policy
        loss normalised by `loss_norm`, the critic's value loss by tokens, each over the
        minibatch of every rank."""
        cfg, world = self.cfg, self.world
        mask = rollout.response_mask
        counts = torch.tensor(
            [float(mask[rows].sum()), float(len(rows))], dtype=torch.float64, device=world.device
        )
        tokens, sequences = all_reduce(counts, world).tolist()
        token_norm = getattr(cfg, "loss_norm", "token") == "token"
        micro_batches = self._micro_batches(rows)
        for i, micro in enumerate(micro_batches):
            part = rollout.rows(micro)
            m = part.response_mask
            sync = i == len(micro_batches) - 1
            if train_actor:
                with (
                    contextlib.nullcontext()
                    if sync or not hasattr(model, "no_sync")
                    else model.no_sync()
                ):
                    logps, entropy = response_logps(
                        model, part, cfg.rollout.temperature, self.autocast, entropy=True
                    )
                    if self.old_from_update:
                        data["old"][micro] = logps.detach()
                    losses, clipped = policy_loss(
                        logps, data["old"][micro], data["advantages"][micro], cfg.clip
                    )
                    if self.kl_in_loss and beta > 0:
                        losses = losses + beta * kl_estimate(
                            logps, data["ref"][micro], cfg.kl_estimator
                        )
                    if token_norm:
                        loss = (losses * m).sum() * world.size / tokens
                    else:
                        per_row = (losses * m).sum(1) / m.sum(1).clamp(min=1)
                        loss = per_row.sum() * world.size / sequences
                    loss.backward()
                log_ratio = (logps - data["old"][micro]).detach()
                sums["policy_loss"] += _sum(loss) / world.size
                sums["clip_fraction"] += _sum(clipped * m) / tokens
                sums["entropy"] += _sum(entropy) / tokens
                sums["approx_kl"] += _sum(0.5 * log_ratio**2 * m) / tokens
            if critic is not None:
                with (
                    contextlib.nullcontext()
                    if sync or not hasattr(critic, "no_sync")
                    else critic.no_sync()
                ):
                    values = response_values(critic, part, self.autocast)
                    losses, clipped = value_loss(
                        values, data["values"][micro], data["returns"][micro], cfg.value_clip
                    )
                    loss = cfg.vf_coef * (losses * m).sum() * world.size / tokens
                    loss.backward()
                sums["value_loss"] += _sum(losses * m) / tokens
                sums["value_clip_fraction"] += _sum(clipped * m) / tokens

    def _iteration(self, model, critic, plan: StagePlan, optimizers) -> dict[str, float]:
        """One rollout and its updates; the iteration's numbers, means over every rank."""
        cfg, world, state = self.cfg, self.world, self.state
        iteration = state.step
        per = cfg.rollout.prompts
        indices = plan.rows.take((state.stage_step * world.size + world.rank) * per, per)
        first = (iteration * world.size + world.rank) * per * self.group_size
        seeds = [
            completion_seed(cfg.seed, iteration, first + k) for k in range(per * self.group_size)
        ]
        rollout = self._rollout(model, plan.rows, indices, seeds)
        records = [plan.rows.records[i] for i in indices for _ in range(self.group_size)]
        scores = self._scores(rollout, records)
        beta = kl_coefficient(iteration, self.iterations, cfg.kl_coef, cfg.kl_coef_final)
        data = self._score_rollout(model, rollout)
        data.update(self.advantages(rollout, scores.to(world.device), data, beta))
        train_actor = iteration >= self.critic_warmup
        sums = {name: torch.zeros((), dtype=torch.float64) for name in self.update_stats}
        norms = {"grad_norm": 0.0, "critic_grad_norm": 0.0}
        updates = 0
        for epoch in range(cfg.ppo_epochs):
            order = np.random.default_rng([cfg.seed, iteration, epoch]).permutation(len(seeds))
            for rows in np.array_split(order, cfg.minibatches):
                self._update(model, critic, rollout, rows.tolist(), data, beta, train_actor, sums)
                updates += 1
                for name, (module, optimizer) in optimizers.items():
                    if name == "actor" and not train_actor:
                        continue
                    norm = clip_grad_norm(module, cfg.optim.grad_clip)
                    norms["grad_norm" if name == "actor" else "critic_grad_norm"] += norm
                    if math.isfinite(norm):
                        optimizer.step()
                    else:
                        state.skipped_steps += 1
                    optimizer.zero_grad(set_to_none=True)
        if self.world.is_main:
            self._keep_samples(rollout, records, scores)
        return self._iteration_stats(rollout, scores, data, beta, sums, norms, updates)

    def _keep_samples(self, rollout: Rollout, records, scores: torch.Tensor) -> None:
        decode = self.template.tokenizer.decode
        self.shown = [
            {
                "prompt": records[i].prompt[-1][1],
                "completion": decode(rollout.completions[i], skip_special_tokens=True),
                "reward": float(scores[i]),
            }
            for i in range(min(SHOWN_SAMPLES * self.group_size, len(scores)))[:: self.group_size]
        ]

    def _iteration_stats(self, rollout, scores, data, beta, sums, norms, updates) -> dict:
        world = self.world
        mask = rollout.response_mask
        n = float(len(scores))
        local = {
            "reward": scores.sum(),
            "reward_sq": (scores**2).sum(),
            "response_length": rollout.lengths.double().sum().cpu(),
            "ended": rollout.ended.double().sum().cpu(),
            "tokens": torch.tensor(float(rollout.batch.num_tokens), dtype=torch.float64),
        }
        if "ref" in data:
            kl = kl_estimate(data["old"], data["ref"], "k1") * mask
            local["kl"] = kl.double().sum().cpu()
        names = list(local) + list(sums)
        packed = torch.stack([*local.values(), *sums.values()]).to(world.device)
        total = all_reduce(
            torch.cat([packed, torch.tensor([n], dtype=torch.float64, device=world.device)]), world
        )
        values = dict(zip(names, total[:-1].tolist(), strict=True))
        count = total[-1].item()
        mean = values["reward"] / count
        stats = {
            "loss": values.get("policy_loss", 0.0) / max(updates, 1),
            "reward": mean,
            "reward_std": math.sqrt(max(values["reward_sq"] / count - mean**2, 0.0)),
            "kl": values["kl"] / count if "kl" in values else None,
            "kl_coef": beta,
            "response_length": values["response_length"] / count,
            "ended_fraction": values["ended"] / count,
            "tokens": int(values["tokens"]),
            "grad_norm": norms["grad_norm"] / max(updates, 1),
        }
        for name in self.update_stats:
            if name != "policy_loss":
                stats[name] = values[name] / max(updates, 1)
        if self.critic is not None:
            stats["critic_grad_norm"] = norms["critic_grad_norm"] / max(updates, 1)
        return {k: v for k, v in stats.items() if v is not None}

    # -- the loop ----------------------------------------------------------------------------

    def _run_stage(self, plan: StagePlan, checkpoint, stop, bar) -> bool:
        """Iterations of one stage from the current state; True when stopped by a signal."""
        cfg, world, state = self.cfg, self.world, self.state
        self.iterations = sum(p.steps for p in self.plans)
        base = self.model
        model = wrap_ddp(base, world) if self.strategy == "ddp" else base
        optimizers = {"actor": (base, build_optimizer(base, cfg.optim, plan.lr))}
        critic = None
        if self.critic is not None:
            critic = wrap_ddp(self.critic, world) if self.strategy == "ddp" else self.critic
            optimizers["critic"] = (self.critic, build_optimizer(self.critic, cfg.optim, plan.lr))
        schedulers = {
            name: build_scheduler(
                opt, plan.steps, plan.warmup, plan.min_lr_ratio, cfg.optim.schedule
            )
            for name, (_, opt) in optimizers.items()
        }
        extras = {"critic": optimizers["critic"]} if "critic" in optimizers else {}
        if checkpoint is not None:
            mid_stage = state.stage_step > 0
            load_checkpoint(
                checkpoint,
                base,
                optimizers["actor"][1] if mid_stage else None,
                world,
                trainable_only=self.trainable_only_checkpoints,
                extras={k: (m, o if mid_stage else None) for k, (m, o) in extras.items()},
            )
            if mid_stage:
                for name, scheduler in schedulers.items():
                    scheduler.load_state_dict(state.scheduler[name])
        window = RateWindow()
        while state.stage_step < plan.steps:
            stats = self._iteration(model, critic, plan, optimizers)
            stats["lr"] = schedulers["actor"].get_last_lr()[0]
            for name, scheduler in schedulers.items():
                if name == "critic" or state.step >= self.critic_warmup:
                    scheduler.step()  # the actor's schedule starts when it first trains
            state.step += 1
            state.stage_step += 1
            state.samples += cfg.rollout.prompts * world.size
            state.tokens += stats["tokens"]
            window.add(stats["tokens"])
            bar.update(1)
            self.last = stats
            if state.step % cfg.log.every == 0 or state.stage_step == plan.steps:
                rate = window.rate()
                self._log(
                    {
                        "step": state.step,
                        "stage": plan.index,
                        **stats,
                        "tokens_per_s": rate,
                        "mfu": None,
                    }
                )
                bar.set_postfix(
                    reward=f"{stats['reward']:.3f}",
                    kl=f"{stats.get('kl', 0.0):.3f}",
                    len=f"{stats['response_length']:.0f}",
                    tok_s=f"{rate:,.0f}",
                )
                window.reset()
            if cfg.eval.every and state.step % cfg.eval.every == 0:
                self._evaluate_and_log()
            stopping = stop_everywhere(stop, world)
            stage_done = state.stage_step == plan.steps
            if stopping or stage_done or state.step % cfg.checkpoint.every == 0:
                state.scheduler = {name: s.state_dict() for name, s in schedulers.items()}
                if stage_done:
                    state.stage, state.stage_step, state.samples = plan.index + 1, 0, 0
                save_checkpoint(
                    self.run_dir,
                    base,
                    optimizers["actor"][1],
                    state,
                    world,
                    write_model=self.write_model,
                    keep=cfg.checkpoint.keep,
                    trainable_only=self.trainable_only_checkpoints,
                    extras=extras,
                )
            if stopping:
                if world.is_main:
                    tqdm.write(
                        f"stopped at iteration {state.step}; checkpoint saved. Continue with: "
                        f"chuan {self.verb} --config {self.run_dir / 'config.yaml'} --resume auto"
                    )
                return True
            if stage_done:
                return False
        return False

    # -- held-out reward and report ----------------------------------------------------------

    @torch.no_grad()
    def held_out(self) -> dict[str, float]:
        """Mean reward and length of greedy completions to the held-out prompts."""
        rows = self.eval_rows
        cfg = self.cfg
        greedy = SamplingConfig(
            max_new_tokens=cfg.rollout.max_new_tokens, stop_token_ids=tuple(self.template.stop_ids)
        )
        scores, lengths = [], []
        base = getattr(self.model, "module", self.model)
        for micro in self._micro_batches(range(len(rows))):
            prompts = [rows.ids[i] for i in micro]
            with eval_mode(base), unsharded(base):
                rollout = sample(base, prompts, [greedy] * len(prompts)).to(self.world.device)
            scores.append(self._scores(rollout, [rows.records[i] for i in micro]))
            lengths.append(rollout.lengths.cpu())
        return {
            "eval_loss": None,
            "eval_reward": torch.cat(scores).mean().item(),
            "eval_response_length": torch.cat(lengths).double().mean().item(),
        }

    @property
    def critic_source(self) -> str:
        """The reward-model dir the critic starts from: `critic`, else the reward model, else
        the base with a new value head."""
        cfg = self.cfg
        return cfg.critic or cfg.reward_model or cfg.model

    def finish(self) -> Path:
        """`OUT/model` as `chuan sft` writes it; with a critic also `OUT/critic`, a reward-model
        dir (a later run's `critic:`, or `chuan rm score`). A QLoRA critic stays in the
        checkpoints: its quantized base cannot be written back."""
        out = super().finish()
        if self.critic is not None and self.cfg.finetune != "qlora":
            critic_dir = self.run_dir / "critic"
            write_reward_model(
                self.critic, self.critic_source, self.cfg, critic_dir, self.world, self.cfg.model
            )
        return out

    def report_extras(self) -> tuple[dict, list[str]]:
        extra, lines = super().report_extras()
        cfg = self.cfg
        records = [r for r in read_metrics(self.run_dir / "metrics.jsonl") if "reward" in r]
        plot = plot_metrics(
            records,
            ["reward", "kl"],
            self.run_dir / "rewards.png",
            xlabel="iteration",
            ylabel="mean reward / KL (nats)",
        )
        extra |= {
            "reward_source": cfg.reward_model or cfg.reward_function,
            "first_reward": records[0]["reward"] if records else None,
            "last_reward": records[-1]["reward"] if records else None,
            "held_out_first": self.first_held_out,
            "held_out_last": self.last_held_out,
            "samples_last_iteration": self.shown,
            "rewards_png": str(plot) if plot else None,
        }
        head = [
            "",
            f"## {self.verb.upper()}: reward from {extra['reward_source']}",
            "",
        ]
        if records:
            first, last = records[0], records[-1]
            head.append(
                f"- mean sampled reward {first['reward']:.4f} (iteration {first['step']}) → "
                f"{last['reward']:.4f} (iteration {last['step']}); KL to the reference "
                f"{first.get('kl', 0.0):.4f} → {last.get('kl', 0.0):.4f}; response length "
                f"{first['response_length']:.1f} → {last['response_length']:.1f}"
            )
        if self.first_held_out and self.last_held_out:
            head.append(
                f"- held-out greedy reward {self.first_held_out['eval_reward']:.4f} → "
                f"{self.last_held_out['eval_reward']:.4f}"
            )
        if plot:
            head.append(f"- curves: {plot.name}")
        if self.shown:
            head += ["", "### Sampled completions (last iteration)", ""]
            for s in self.shown:
                head.append(
                    f"- **prompt**: {one_line(s['prompt'])}\n  - completion "
                    f"(reward {s['reward']:.3f}): {one_line(s['completion'])}"
                )
        return extra, head + lines


class PPOTrainer(RLTrainer):
    verb = "ppo"
    title = "PPO run"
    uses_critic = True
    update_stats = (
        "policy_loss",
        "clip_fraction",
        "entropy",
        "approx_kl",
        "value_loss",
        "value_clip_fraction",
    )

    def advantages(self, rollout: Rollout, scores: torch.Tensor, scored: dict, beta: float):
        cfg = self.cfg
        mask = rollout.response_mask
        kl = kl_estimate(scored["old"], scored["ref"], cfg.kl_estimator) * mask
        rewards = token_rewards(kl, scores.to(kl.dtype), mask, beta)
        advantages, returns = gae(rewards, scored["values"], mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            total = functools.partial(all_reduce, world=self.world)
            advantages = masked_whiten(advantages, mask, total=total) * mask
        return {"advantages": advantages, "returns": returns}


class GRPOTrainer(RLTrainer):
    verb = "grpo"
    title = "GRPO run"
    kl_in_loss = True
    update_stats = ("policy_loss", "clip_fraction", "entropy", "approx_kl")

    def __init__(self, cfg: GRPOConfig, world):
        self.group_size = cfg.group_size
        super().__init__(cfg, world)

    @property
    def needs_reference(self) -> bool:
        return self.cfg.kl_coef > 0

    def advantages(self, rollout: Rollout, scores: torch.Tensor, scored: dict, beta: float):
        per_sequence = group_advantages(scores, self.group_size).to(rollout.response_mask.dtype)
        return {"advantages": per_sequence[:, None] * rollout.response_mask}


def inspect_prompts(cfg: RLConfig, count: int) -> str:
    """The first `count` prompts of the first stage as the policy sees them (`--inspect`)."""
    template = get_template(cfg.template, load_tokenizer(cfg.model))
    stats = SFTDataStats()
    stage = cfg.stages[0]
    loaded = [read_source(source, stats, read_prompts) for source in stage.data]
    shown = []
    for record in mix(stage.data, loaded, seed=cfg.seed)[:count]:
        ids = template.prompt_ids(record.messages())
        shown.append(
            f"{record.origin} ({len(ids)} tokens):\n{template.text(record.messages())}\n"
            f"reference: {record.reference if record.reference is not None else '(none)'}"
        )
    return "\n\n".join(shown)


def ppo(cfg: PPOConfig, *, resume: str | None = None) -> PretrainResult:
    """Run (or, with `resume="auto"` or a checkpoint path, continue) a PPO run."""
    return run_fine_tune(PPOTrainer, cfg, resume)


def grpo(cfg: GRPOConfig, *, resume: str | None = None) -> PretrainResult:
    """Run (or, with `resume="auto"` or a checkpoint path, continue) a GRPO run."""
    return run_fine_tune(GRPOTrainer, cfg, resume)
