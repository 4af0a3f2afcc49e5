"""The quickstart's training stages: pretraining a `tiny` Baichuan 2-style model on the
packed sample, as many steps as the time budget leaves, then LoRA fine-tuning it into a small
chat model on the bundled instruction sets; both resumable from their newest checkpoint."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from chuan.quickstart.data_stages import ASSETS
from chuan.quickstart.runner import Context

PRESET = "tiny"
MICRO_BATCH = 8
# What the stages after pretraining take on 2 CPU cores (fine-tuning, evaluation,
# generation, quantization, serving, cited answers), kept out of the pretraining budget.
SFT_SECONDS = 120.0
RAG_SECONDS = 15.0  # indexing the whole sample (~10 s) and three short answers
LATER_STAGES_SECONDS = 90.0 + SFT_SECONDS + RAG_SECONDS
MIN_STEPS, MAX_STEPS = 30, 1500


def measure_step_seconds(vocab_size: int, seq_len: int, repeats: int = 3) -> float:
    """Seconds per optimizer step of the quickstart model, timed on random tokens."""
    from chuan.model import BaichuanForCausalLM, preset_config

    model = BaichuanForCausalLM(preset_config(PRESET, vocab_size=vocab_size))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(vocab_size, (MICRO_BATCH, seq_len))

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, AdamW state
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - began) / repeats


def plan_steps(ctx: Context, vocab_size: int, seq_len: int) -> dict:
    """The step count: `--steps`, or what the budget leaves after the stages so far and a
    reserve for the later ones. Saved, so a resumed run trains to the same schedule."""
    path = ctx.path("pretrain-plan.json")
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if ctx.options.steps is not None:
        plan = {"steps": ctx.options.steps, "step_seconds": None, "budget_seconds": None}
    else:
        seconds = measure_step_seconds(vocab_size, seq_len)
        budget = ctx.options.minutes * 60 - ctx.elapsed() - LATER_STAGES_SECONDS
        steps = int(min(MAX_STEPS, max(MIN_STEPS, budget / seconds)))
        plan = {"steps": steps, "step_seconds": round(seconds, 4), "budget_seconds": budget}
    path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    return plan


def pretrain(ctx: Context) -> dict:
    from chuan.train.config import (
        CheckpointConfig,
        EvalConfig,
        LogConfig,
        OptimConfig,
        PretrainConfig,
        StageConfig,
    )
    from chuan.train.loop import pretrain as run_pretrain
    from chuan.train.metrics import read_metrics

    packed = ctx.results["pack"]
    vocab = ctx.results["tokenizer"]["vocab_size"]
    plan = plan_steps(ctx, vocab, packed["max_length"])
    steps = plan["steps"]
    cfg = PretrainConfig(
        out=str(ctx.path("pretrain")),
        preset=PRESET,
        tokenizer=str(ctx.path("tokenizer")),
        seed=1234 + ctx.options.seed,
        micro_batch_size=MICRO_BATCH,
        optim=OptimConfig(lr=3e-3, warmup_steps=max(5, steps // 10), min_lr_ratio=0.1),
        eval=EvalConfig(holdout_rows=32, every=max(10, steps // 5)),
        checkpoint=CheckpointConfig(every=max(10, steps // 4), keep=1),
        log=LogConfig(every=max(1, min(10, steps // 20)), progress=ctx.options.progress),
        stages=[StageConfig(name="pretrain", data=[str(ctx.path("packed"))], steps=steps)],
    )
    resume = "auto" if ctx.path("pretrain", "checkpoints").is_dir() else None
    result = run_pretrain(cfg, resume=resume)
    if result.interrupted:
        raise KeyboardInterrupt("pretraining was interrupted")
    losses = [r["loss"] for r in read_metrics(ctx.path("pretrain", "metrics.jsonl")) if "loss" in r]
    return {
        "steps": result.steps,
        "tokens": result.tokens,
        "first_loss": round(losses[0], 4),
        "final_loss": round(result.final_loss, 4),
        "eval_loss": None if result.eval_loss is None else round(result.eval_loss, 4),
        "plan": plan,
        "model_dir": str(result.model_dir),
        "summary": f"{result.steps} steps, {result.tokens:,} tokens: loss {losses[0]:.2f} → "
        f"{result.final_loss:.2f}"
        + ("" if result.eval_loss is None else f", held-out {result.eval_loss:.2f}"),
    }


# The fine-tuning stage: the recipe of configs/sft-tiny-cpu.yaml, held-out set written out.
SFT_DATA = ASSETS / "sft"
SFT_HOLDOUT = 100  # translation conversations never trained on
SFT_MAX_STEPS = 190  # 4 epochs of the 374 packed rows of 256 tokens, 8 rows per step
SFT_MIN_STEPS = 30
SFT_OVERHEAD_SECONDS = 30.0  # data, replies before and after, evaluation, the merge
SFT_PROMPTS = 3


def sft_steps(ctx: Context) -> int:
    """`--steps`, or as many of `SFT_MAX_STEPS` as `SFT_SECONDS` allows at the step time the
    pretraining stage measured (a fine-tuning step is as long: 8 rows of 256 tokens)."""
    if ctx.options.steps is not None:
        return ctx.options.steps
    seconds = ctx.results["pretrain"]["plan"].get("step_seconds")
    if not seconds:
        return SFT_MAX_STEPS
    fits = int((SFT_SECONDS - SFT_OVERHEAD_SECONDS) / seconds)
    return max(SFT_MIN_STEPS, min(SFT_MAX_STEPS, fits))


def _split_translations(ctx: Context) -> tuple[Path, Path]:
    """The bundled translation set split in two, `sft-data/translate_zh_en.jsonl` to train on
    and `sft-data/heldout.jsonl` (`SFT_HOLDOUT` records drawn seeded), both in file order."""
    folder = ctx.path("sft-data")
    train, heldout = folder / "translate_zh_en.jsonl", folder / "heldout.jsonl"
    lines = (SFT_DATA / "translate_zh_en.jsonl").read_text(encoding="utf-8").splitlines()
    held = set(random.Random(ctx.options.seed).sample(range(len(lines)), SFT_HOLDOUT))
    folder.mkdir(parents=True, exist_ok=True)
    for path, keep in ((train, False), (heldout, True)):
        chosen = [line for i, line in enumerate(lines) if (i in held) == keep]
        path.write_text("".join(f"{line}\n" for line in chosen), encoding="utf-8")
    return train, heldout


def sft_config(ctx: Context, base: str | Path):
    """LoRA r 8 on every linear layer of the pretrained model: the translation set (less the
    held-out part) mixed 1:1 with the general set, `sft_steps` steps (4 epochs at most)."""
    from chuan.align.sft_config import (
        DataSource,
        LoraConfig,
        SampleConfig,
        SFTConfig,
        SFTEvalConfig,
        SFTOptimConfig,
        SFTStageConfig,
    )
    from chuan.train.config import CheckpointConfig, LogConfig

    train, heldout = _split_translations(ctx)
    data = [
        DataSource(str(train), format="alpaca", weight=1.0),
        DataSource(str(SFT_DATA / "general_zh_en.jsonl"), format="alpaca", weight=1.0),
    ]
    return SFTConfig(
        out=str(ctx.path("sft")),
        model=str(base),
        seed=1234 + ctx.options.seed,
        finetune="lora",
        lora=LoraConfig(r=8, alpha=16.0, dropout=0.05, targets=["all-linear"]),
        max_length=256,
        micro_batch_size=8,
        optim=SFTOptimConfig(lr=5e-3, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1),
        eval=SFTEvalConfig(data=[DataSource(str(heldout), format="alpaca")]),
        samples=SampleConfig(prompts=SFT_PROMPTS, max_new_tokens=48),
        checkpoint=CheckpointConfig(every=50, keep=1),
        log=LogConfig(every=10, progress=ctx.options.progress),
        stages=[SFTStageConfig(name="sft", data=data, steps=sft_steps(ctx))],
    )


def _first_eval_loss(ctx: Context, report: dict) -> float:
    """The held-out loss before fine-tuning: in the report, or (a resumed run's report has
    none) the step-0 record of the metrics."""
    if report.get("first_eval_loss") is not None:
        return report["first_eval_loss"]
    from chuan.train.metrics import read_metrics

    records = read_metrics(ctx.path("sft", "metrics.jsonl"))
    return next(r["eval_loss"] for r in records if r.get("step") == 0 and "eval_loss" in r)


def sft(ctx: Context) -> dict:
    from chuan.align.sft import sft as run_sft

    base = ctx.results["pretrain"]["model_dir"]
    cfg = sft_config(ctx, base)
    resume = "auto" if ctx.path("sft", "checkpoints").is_dir() else None
    result = run_sft(cfg, resume=resume)
    if result.interrupted:
        raise KeyboardInterrupt("fine-tuning was interrupted")
    report = json.loads(ctx.path("sft", "report.json").read_text(encoding="utf-8"))
    before = _first_eval_loss(ctx, report)
    replies = report["replies"]
    first = replies[0] if replies else {"prompt": "", "after": ""}
    prompt = " ".join(first["prompt"].split())
    return {
        "steps": result.steps,
        "tokens": result.tokens,
        "first_loss": round(report["first_loss"], 4),
        "final_loss": round(result.final_loss, 4),
        "heldout_loss_before": round(before, 4),
        "heldout_loss_after": round(result.eval_loss, 4),
        "heldout_conversations": SFT_HOLDOUT,
        "trainable_parameters": report["trainable_parameters"],
        "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "targets": cfg.lora.targets},
        "data": {k: report["data"][k] for k in ("mixed", "samples", "rows", "trained_tokens")},
        "replies": replies,
        "model_dir": str(result.model_dir),
        "summary": f"LoRA, {result.steps} steps: held-out answer loss {before:.2f} → "
        f"{result.eval_loss:.2f}; {prompt[:24]!r} → {first['after'][:30]!r}",
    }
