"""The quickstart's pretraining stage: a `tiny` Baichuan 2-style model on the packed sample,
as many steps as the time budget leaves, resumable from its newest checkpoint."""

from __future__ import annotations

import json
import time

import torch

from chuan.quickstart.runner import Context

PRESET = "tiny"
MICRO_BATCH = 8
# What the stages after pretraining take on 2 CPU cores (evaluation, generation,
# quantization, serving), kept out of the pretraining budget.
LATER_STAGES_SECONDS = 90.0
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
