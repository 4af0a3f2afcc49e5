"""`chuan pretrain`: one loop for pretraining from scratch and continued pretraining.

The loop owns the order of things and nothing else: the model comes from `chuan.model`, rows
from `train.data`, the optimizer and schedule from `train.optim`, a ready model from
`train.parallelize`, checkpoints from `train.checkpoint`, logging from `train.metrics`.

Exactness is by construction: a step's rows are a function of (stage, step, rank), the loss of
a step is the token-mean over the whole global batch (summed per micro-batch, divided by the
batch's label count, so gradient accumulation and world size do not change it), and a
checkpoint holds every other piece of state. A resumed run on the CPU is therefore bit-identical
to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm import tqdm

from chuan.config import to_dict
from chuan.errors import ChuanError, OutputExistsError
from chuan.fileio import write_atomic, write_report
from chuan.model.checkpoint import tokenizer_vocab_size
from chuan.model.convert import load_as_baichuan
from chuan.model.modeling import BaichuanForCausalLM, NormHead
from chuan.model.precision import prefers_bf16
from chuan.model.presets import parameter_count, preset_config, training_flops_per_token
from chuan.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
    save_model_dir,
)
from chuan.train.config import PretrainConfig, RunConfig, StageConfig
from chuan.train.data import Batch, PackedRows
from chuan.train.distributed import (
    World,
    all_reduce,
    close_world,
    init_world,
)
from chuan.train.metrics import (
    MetricsLogger,
    peak_flops,
    plot_losses,
    read_metrics,
    truncate_metrics,
)
from chuan.train.optim import build_optimizer, build_scheduler, set_trainable
from chuan.train.parallelize import parallelize, strategy_for, wrap_ddp


class TrainingDiverged(ChuanError, RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class StagePlan:
    index: int
    config: StageConfig  # or another room's stage config with lr / warmup_steps / min_lr_ratio
    rows: PackedRows
    steps: int
    lr: float
    warmup: int
    min_lr_ratio: float


@dataclass
class PretrainResult:
    run_dir: Path
    model_dir: Path | None
    steps: int
    tokens: int
    final_loss: float | None
    eval_loss: float | None
    interrupted: bool
    # The signal that stopped an interrupted run (SIGTERM or SIGINT; None when it finished,
    # or on a rank that stopped because another rank was signalled). `chuan pretrain` exits
    # with 128 + it, as a shell reports a process killed by that signal.
    signal: int | None = None


class RateWindow:
    """Tokens per second since the last logged record."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


class _StopFlag:
    """SIGTERM / SIGINT ask the loop to checkpoint after the current step and return."""

    def __init__(self):
        self.requested = False
        self.signal: int | None = None  # the first signal received
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def initial_model(cfg: PretrainConfig) -> BaichuanForCausalLM:
    """The starting model in fp32: a preset initialised from `seed`, or any model dir."""
    overrides = dict(cfg.model_overrides)
    if cfg.z_loss_weight is not None:
        overrides["z_loss_weight"] = cfg.z_loss_weight
    if cfg.preset is not None:
        vocab = tokenizer_vocab_size(cfg.tokenizer)
        torch.manual_seed(cfg.seed)
        return BaichuanForCausalLM(preset_config(cfg.preset, vocab_size=vocab, **overrides))
    return load_as_baichuan(cfg.model, dtype=torch.float32, **overrides)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked for, or by default where `prefers_bf16`; else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16" or prefers_bf16(device):
        return torch.bfloat16
    return None


def stage_plan(cfg: RunConfig, index: int, stage, rows: PackedRows, steps: int) -> StagePlan:
    """A stage's plan: its learning rate and warmup are the stage's own, else the run's."""
    return StagePlan(
        index=index,
        config=stage,
        rows=rows,
        steps=steps,
        lr=stage.lr if stage.lr is not None else cfg.optim.lr,
        warmup=min(
            stage.warmup_steps if stage.warmup_steps is not None else cfg.optim.warmup_steps,
            steps,
        ),
        min_lr_ratio=(
            stage.min_lr_ratio if stage.min_lr_ratio is not None else cfg.optim.min_lr_ratio
        ),
    )


def global_batch(cfg: RunConfig, world: World) -> int:
    return cfg.micro_batch_size * cfg.grad_accum * world.size


def plan_stages(cfg: PretrainConfig, world: World, holdout: dict[str, int]) -> list[StagePlan]:
    """Each stage's rows and length in optimizer steps."""
    plans = []
    for index, stage in enumerate(cfg.stages):
        rows = PackedRows.from_disk(
            stage.data,
            buckets=stage.buckets,
            holdout=holdout,
            shuffle=stage.shuffle,
            seed=cfg.seed + index,
        )
        if stage.steps is not None:
            steps = stage.steps
        elif stage.tokens is not None:
            steps = math.ceil(stage.tokens / (global_batch(cfg, world) * rows.row_length))
        else:
            steps = max(1, len(rows) // global_batch(cfg, world))
        plans.append(stage_plan(cfg, index, stage, rows, steps))
    return plans


def _holdout(cfg: PretrainConfig) -> dict[str, int]:
    if not cfg.eval.holdout_rows:
        return {}
    return {str(Path(cfg.stages[0].data[0]).resolve()): cfg.eval.holdout_rows}


def _eval_rows(cfg: PretrainConfig, holdout: dict[str, int]) -> PackedRows | None:
    if cfg.eval.data is not None:
        return PackedRows.from_disk([cfg.eval.data], shuffle=False)
    if holdout:
        return PackedRows.from_disk(
            [cfg.stages[0].data[0]], holdout=holdout, take_holdout=True, shuffle=False
        )
    return None


def _forward(model: nn.Module, batch: Batch, autocast: torch.dtype | None):
    """Summed loss of one micro-batch (and its detached parts)."""
    with torch.autocast(batch.input_ids.device.type, dtype=autocast, enabled=autocast is not None):
        return model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            labels=batch.labels,
            loss_reduction="sum",
            use_cache=False,
        )


def _rank_samples(step: int, micro: int, cfg: RunConfig, world: World) -> range:
    """Global sample indices of micro-batch `micro` of `step` on this rank."""
    per_step = cfg.micro_batch_size * cfg.grad_accum * world.size
    start = step * per_step + (micro * world.size + world.rank) * cfg.micro_batch_size
    return range(start, start + cfg.micro_batch_size)


def train_step(
    model: nn.Module,
    batches: list[Batch],
    world: World,
    autocast: torch.dtype | None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Forward and backward over the micro-batches of one optimizer step (no update).

    `penalty` is a term on the weights, not on tokens (AdaLoRA's orthogonality): it is added
    once per step, to the last micro-batch's loss, at its own weight (every rank adds the
    same term, and the wrappers' average over ranks keeps it once)."""
    labels = torch.tensor(
        [float(sum(b.num_labels for b in batches))], dtype=torch.float64, device=world.device
    )
    total_labels = max(all_reduce(labels, world).item(), 1.0)
    # Wrappers average gradients over ranks; the world size undoes that, so the gradient is
    # that of the token-mean loss over the whole global batch.
    scale = world.size / total_labels
    sums = torch.zeros(3, dtype=torch.float64, device=world.device)
    max_logit = torch.full((1,), -math.inf, dtype=torch.float64, device=world.device)
    for i, batch in enumerate(batches):
        sync = i == len(batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            out = _forward(model, batch, autocast)
            loss = out.loss * scale
            if penalty is not None and i == len(batches) - 1:
                loss = loss + penalty()
            loss.backward()
        sums += torch.stack(
            [out.ce_loss.double(), out.z_loss.double(), torch.tensor(float(batch.num_tokens))]
        ).to(sums.device)
        max_logit = torch.maximum(max_logit, out.max_logit.double().reshape(1))
    all_reduce(sums, world)
    all_reduce(max_logit, world, op="max")
    return {
        "loss": sums[0].item() / total_labels,
        "z_loss": sums[1].item() / total_labels,
        "tokens": int(sums[2].item()),
        "max_logit": max_logit.item(),
    }


@torch.no_grad()
def evaluate(model: nn.Module, rows: PackedRows, cfg: RunConfig, world: World, autocast) -> float:
    """Token-mean cross-entropy over the held-out rows (every rank runs the same batches).

    Dropout (a LoRA adapter's) and input noise (NEFTune) are off; NormHead stays in train
    mode, since its eval-time cache keys on storage that FSDP reuses between gathers.
    """
    n = min(len(rows), cfg.eval.max_rows)
    per = cfg.micro_batch_size
    sums = torch.zeros(2, dtype=torch.float64, device=world.device)
    with eval_mode(model):
        _score_rows(model, rows, n, per, world, autocast, sums)
    if hasattr(model, "reshard"):
        # FSDP2 leaves the root's parameters gathered after a forward without backward; an
        # optimizer built now would hold the gathered tensors instead of the shards.
        model.reshard()
    all_reduce(sums, world)
    return (sums[0] / sums[1].clamp(min=1)).item()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Every module but NormHead in eval mode for the block, then back as it was."""
    switched = [m for m in model.modules() if m.training and not isinstance(m, NormHead)]
    for module in switched:
        module.training = False
    try:
        yield
    finally:
        for module in switched:
            module.training = True


def _score_rows(model, rows: PackedRows, n: int, per: int, world: World, autocast, sums) -> None:
    for start in range(0, n, per * world.size):
        first = start + world.rank * per
        samples = range(first, min(first + per, n))
        # A rank past the end still runs a forward to take part in the collectives.
        batch = rows.batch(samples) if len(samples) else rows.batch([0]).without_labels()
        out = _forward(model, batch.to(world.device), autocast)
        sums += torch.stack([out.ce_loss.double(), torch.tensor(float(batch.num_labels))]).to(
            sums.device
        )


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(_trainable(model), max_norm if max_norm > 0 else math.inf)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def stop_everywhere(flag: _StopFlag, world: World) -> bool:
    """All ranks stop together if any rank was signalled."""
    if not world.distributed:
        return flag.requested
    vote = torch.tensor([float(flag.requested)], device=world.device)
    return bool(all_reduce(vote, world, op="max").item())


class Trainer:
    """One run: its config, world, model, logger and state, and the stage loop over them.

    This class is `chuan pretrain`; another kind of run (`chuan sft`) subclasses it and
    replaces the hooks: `build_data`, `build_model`, `prepare_stage`, `write_model`,
    `finish`, `report_extras`, and (a run with another loss: `chuan dpo`) `train_step` and
    `held_out`. The loop, its exactness and its checkpoints are shared.
    """

    verb = "pretrain"
    title = "Pretraining run"
    # Checkpoints hold only the trainable parameters (the rest is re-read from the base).
    trainable_only_checkpoints = False

    def __init__(self, cfg: RunConfig, world: World):
        self.cfg = cfg
        self.world = world
        self.run_dir = Path(cfg.out)
        self.tokenizer_dir = self.tokenizer_source()
        self.autocast = autocast_dtype(cfg.precision, world.device)
        # The data first: a wrong path fails before any model is built.
        self.plans, self.eval_rows = self.build_data()
        self.strategy = strategy_for(cfg.distributed.strategy, world)
        self.model = parallelize(self.build_model().to(world.device), cfg, world)
        self.model.train()
        self.config = self.model.config
        self.row_length = self.plans[0].rows.row_length
        self.flops_per_token = training_flops_per_token(self.config, self.row_length)
        self.peak, self.peak_source = peak_flops(
            world.device, self.autocast or torch.float32, cfg.peak_flops
        )
        self.state = TrainerState(world_size=world.size)
        self.logger: MetricsLogger | None = None
        self.last: dict = {}
        # The held-out numbers at step 0 (None when resumed) and at the newest evaluation.
        self.first_held_out: dict[str, float] | None = None
        self.last_held_out: dict[str, float] | None = None
        self.last_eval_step = -1

    # -- hooks -------------------------------------------------------------------------------

    def tokenizer_source(self) -> str | None:
        """The dir whose tokenizer files every saved model dir gets."""
        return self.cfg.tokenizer or self.cfg.model

    def build_data(self) -> tuple[list[StagePlan], PackedRows | None]:
        """The stages' plans and the held-out rows (None: no held-out loss)."""
        holdout = _holdout(self.cfg)
        return plan_stages(self.cfg, self.world, holdout), _eval_rows(self.cfg, holdout)

    def build_model(self) -> nn.Module:
        """The model to train, fp32 on the CPU (the trainer moves and wraps it)."""
        return initial_model(self.cfg)

    def prepare_stage(self, plan: StagePlan) -> None:
        """Set what trains in this stage."""
        set_trainable(self.model, plan.config.freeze)

    def write_model(self, out: Path) -> None:
        """Write the model as it is now to `out` (all ranks call this: it may gather)."""
        save_model_dir(self.model, out, self.world, self.tokenizer_dir)

    def finish(self) -> Path:
        """Write the final outputs after the last stage; returns the final model dir."""
        self.write_model(self.run_dir / "model")
        return self.run_dir / "model"

    def report_extras(self) -> tuple[dict, list[str]]:
        """More fields for `report.json` and lines for `report.md`."""
        return {}, []

    def train_step(self, model: nn.Module, batches: list) -> dict[str, float]:
        """Forward and backward of one optimizer step's micro-batches: at least `loss`,
        `tokens` and `max_logit` in the result."""
        return train_step(model, batches, self.world, self.autocast)

    def after_update(self, step: int) -> None:
        """After the optimizer's update of `step` (counted from 0), before the gradients are
        cleared: AdaLoRA reallocates its ranks here from the gradients it just used."""

    def held_out(self) -> dict[str, float]:
        """The held-out numbers at the current step: at least `eval_loss`."""
        return {
            "eval_loss": evaluate(self.model, self.eval_rows, self.cfg, self.world, self.autocast)
        }

    # -- the run -----------------------------------------------------------------------------

    def run(self, resume: str | None) -> PretrainResult:
        cfg, world = self.cfg, self.world
        checkpoint = self._resume_point(resume)
        if world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(
                self.run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False)
            )
            if checkpoint is not None:
                truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        self.logger = MetricsLogger(
            self.run_dir, enabled=world.is_main, tensorboard=cfg.log.tensorboard
        )
        total = sum(p.steps for p in self.plans)
        interrupted = False
        stopped_by = None
        if checkpoint is not None and self.state.stage >= len(self.plans):  # finished already
            load_checkpoint(
                checkpoint, self.model, None, world, trainable_only=self.trainable_only_checkpoints
            )
        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc=self.verb,
            unit="step",
            disable=not (world.is_main and cfg.log.progress),
            dynamic_ncols=True,
        )
        try:
            if self.state.step == 0:  # the held-out loss before any training, to compare
                self._evaluate_and_log()
                self.first_held_out = self.last_held_out
            with _StopFlag() as stop:
                for plan in self.plans[self.state.stage :]:
                    interrupted = self._run_stage(plan, checkpoint, stop, bar)
                    checkpoint = None
                    if interrupted:
                        break
            stopped_by = stop.signal
            eval_loss = None
            model_dir = None
            if not interrupted:
                eval_loss = self._evaluate_and_log()
                model_dir = self.finish()
            self._write_report(interrupted, eval_loss)
        finally:
            bar.close()
            self.logger.close()
        return PretrainResult(
            run_dir=self.run_dir,
            model_dir=model_dir,
            steps=self.state.step,
            tokens=self.state.tokens,
            final_loss=self.last.get("loss"),
            eval_loss=eval_loss,
            interrupted=interrupted,
            signal=stopped_by if interrupted else None,
        )

    def _resume_point(self, resume: str | None) -> Path | None:
        if resume is None:
            if self.world.is_main and (self.run_dir / "checkpoints").is_dir():
                raise OutputExistsError(
                    f"{self.run_dir} holds checkpoints of an earlier run; pass --resume auto to "
                    "continue it, or choose another `out`"
                )
            return None
        checkpoint = latest_checkpoint(self.run_dir) if resume == "auto" else Path(resume)
        if checkpoint is not None:
            self.state = read_trainer_state(checkpoint)
            self.state.world_size = self.world.size
        return checkpoint

    def _run_stage(self, plan: StagePlan, checkpoint: Path | None, stop, bar) -> bool:
        """Train one stage from the current state; True when stopped by a signal."""
        cfg, world, state = self.cfg, self.world, self.state
        base = self.model
        self.prepare_stage(plan)
        model = wrap_ddp(base, world) if self.strategy == "ddp" else base
        optimizer = build_optimizer(base, cfg.optim, plan.lr)
        scheduler = build_scheduler(
            optimizer, plan.steps, plan.warmup, plan.min_lr_ratio, cfg.optim.schedule
        )
        if checkpoint is not None:
            resumed_mid_stage = state.stage_step > 0
            load_checkpoint(
                checkpoint,
                base,
                optimizer if resumed_mid_stage else None,
                world,
                trainable_only=self.trainable_only_checkpoints,
            )
            if resumed_mid_stage:
                scheduler.load_state_dict(state.scheduler)
        bad_in_a_row = 0
        window = RateWindow()
        while state.stage_step < plan.steps:
            step = state.stage_step
            batches = [
                plan.rows.batch(_rank_samples(step, micro, cfg, world)).to(world.device)
                for micro in range(cfg.grad_accum)
            ]
            stats = self.train_step(model, batches)
            stats["grad_norm"] = clip_grad_norm(base, cfg.optim.grad_clip)
            stats["lr"] = scheduler.get_last_lr()[0]
            finite = math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
            if finite:
                optimizer.step()
                self.after_update(state.step)
                bad_in_a_row = 0
            else:
                bad_in_a_row += 1
                state.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            state.stage_step += 1
            state.samples += cfg.micro_batch_size * cfg.grad_accum * world.size
            state.tokens += stats["tokens"]
            window.add(stats["tokens"])
            bar.update(1)
            if finite:
                self.last = stats
                if state.step % cfg.log.every == 0 or state.stage_step == plan.steps:
                    self._log_step(stats, plan, window.rate(), bar)
                    window.reset()
            else:
                self._log({"step": state.step, "skipped": True, **stats})
                if bad_in_a_row >= cfg.max_bad_steps:
                    raise TrainingDiverged(
                        f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (last "
                        f"at step {state.step}); stopped. The newest checkpoint in "
                        f"{self.run_dir / 'checkpoints'} is intact: lower the learning rate or "
                        "check the data, then resume from it with --resume"
                    )
            if cfg.eval.every and state.step % cfg.eval.every == 0:
                self._evaluate_and_log()
            stopping = stop_everywhere(stop, world)
            stage_done = state.stage_step == plan.steps
            if stopping or stage_done or state.step % cfg.checkpoint.every == 0:
                state.scheduler = scheduler.state_dict()
                if stage_done:  # the checkpoint starts the next stage afresh
                    state.stage, state.stage_step, state.samples = plan.index + 1, 0, 0
                save_checkpoint(
                    self.run_dir,
                    base,
                    optimizer,
                    state,
                    world,
                    write_model=self.write_model,
                    keep=cfg.checkpoint.keep,
                    trainable_only=self.trainable_only_checkpoints,
                )
            if stopping:
                if world.is_main:
                    tqdm.write(
                        f"stopped at step {state.step}; checkpoint saved. Continue with: "
                        f"chuan {self.verb} --config {self.run_dir / 'config.yaml'} --resume auto"
                    )
                return True
            if stage_done:
                return False
        return False

    def _log_step(self, stats: dict, plan: StagePlan, rate: float, bar) -> None:
        """A metrics record and the progress line's numbers."""
        state, world = self.state, self.world
        mfu = rate * self.flops_per_token / (self.peak * world.size)
        self._log(
            {
                "step": state.step,
                "stage": plan.index,
                **stats,
                "tokens_per_s": rate,
                "mfu": mfu,
                "tokens_seen": state.tokens,
            }
        )
        bar.set_postfix(
            loss=f"{stats['loss']:.3f}",
            lr=f"{stats['lr']:.2e}",
            gnorm=f"{stats['grad_norm']:.2f}",
            zmax=f"{stats['max_logit']:.1f}",
            tok_s=f"{rate:,.0f}",
            mfu=f"{mfu:.1%}",
        )

    # -- reporting ---------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        self.logger.log(record)

    def _evaluate_and_log(self) -> float | None:
        """Held-out loss at the current step (computed once per step)."""
        if self.eval_rows is None:
            return None
        if self.last_eval_step != self.state.step:
            self.last_held_out = self.held_out()
            self._log({"step": self.state.step, **self.last_held_out})
            self.last_eval_step = self.state.step
        return self.last_held_out["eval_loss"]

    def _write_report(self, interrupted: bool, eval_loss: float | None) -> None:
        if not self.world.is_main:
            return
        records = read_metrics(self.run_dir / "metrics.jsonl")
        plot = plot_losses(records, self.run_dir / "loss.png")
        trained = [r for r in records if "tokens_per_s" in r]
        if self.first_held_out is None:  # resumed: the step-0 numbers are in the metrics
            first = next((r for r in records if r.get("step") == 0 and "eval_loss" in r), None)
            self.first_held_out = first and {k: v for k, v in first.items() if k != "step"}
        if "loss" not in self.last and trained:  # resumed after the last step
            self.last = trained[-1]
        report = {
            "status": "interrupted" if interrupted else "finished",
            "steps": self.state.step,
            "tokens": self.state.tokens,
            "skipped_steps": self.state.skipped_steps,
            "final_loss": self.last.get("loss"),
            "eval_loss": eval_loss,
            "first_eval_loss": self.first_held_out and self.first_held_out["eval_loss"],
            "first_loss": trained[0]["loss"] if trained else None,
            "tokens_per_s": trained[-1]["tokens_per_s"] if trained else None,
            "mfu": trained[-1]["mfu"] if trained else None,
            "peak_flops": self.peak,
            "peak_flops_source": self.peak_source,
            "parameters": parameter_count(self.config),
            "world_size": self.world.size,
            "strategy": self.strategy,
            "precision": str(self.autocast or torch.float32).removeprefix("torch."),
            "stages": [
                {
                    "name": p.config.name or f"stage{p.index}",
                    "steps": p.steps,
                    "rows": len(p.rows),
                    "lr": p.lr,
                    "warmup": p.warmup,
                    "freeze": getattr(p.config, "freeze", "none"),  # SFT: see `finetune`
                }
                for p in self.plans
            ],
            "loss_png": str(plot) if plot else None,
        }
        extra, lines = self.report_extras()
        report.update(extra)
        markdown = _report_markdown(self.title, report) + "".join(f"{line}\n" for line in lines)
        write_report(self.run_dir, report, markdown)


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _report_markdown(title: str, report: dict) -> str:
    lines = [
        f"# {title} ({report['status']})",
        "",
        f"- steps: {report['steps']:,}, tokens: {report['tokens']:,}, "
        f"skipped steps: {report['skipped_steps']}",
        f"- loss: {_fmt(report['first_loss'], '.4f')} → {_fmt(report['final_loss'], '.4f')}; "
        f"held-out: {_fmt(report['first_eval_loss'], '.4f')} → "
        f"{_fmt(report['eval_loss'], '.4f')}",
        f"- throughput: {_fmt(report['tokens_per_s'], ',.0f')} tokens/s, "
        f"MFU {_fmt(report['mfu'], '.1%')} of {report['peak_flops'] / 1e12:.2f} TFLOP/s "
        f"({report['peak_flops_source']})",
        f"- {report['parameters']:,} parameters, {report['world_size']} process(es), "
        f"{report['strategy']}, {report['precision']}",
        "",
        "| stage | steps | rows | lr | warmup | freeze |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in report["stages"]:
        lines.append(
            f"| {s['name']} | {s['steps']} | {s['rows']} | {s['lr']:.2e} | {s['warmup']} | "
            f"{s['freeze']} |"
        )
    return "\n".join(lines) + "\n"


def pretrain(cfg: PretrainConfig, *, resume: str | None = None) -> PretrainResult:
    """Run (or, with `resume="auto"` or a checkpoint path, continue) a pretraining run."""
    world = init_world(cfg.device, cfg.distributed.backend)
    try:
        torch.manual_seed(cfg.seed)
        return Trainer(cfg, world).run(resume)
    finally:
        close_world(world)
