"""Online RL throughput and peak memory: `chuan grpo` against TRL's `GRPOTrainer` (no vLLM).

Both sides train the same model (one chuan model dir made by `bench_sft.py`'s prepare worker;
TRL gets the model object, loaded through `AutoModelForCausalLM` after `import chuan`) with
the same LoRA adapter (peft; the same `r`, alpha, dropout and target modules) on the same
prompts: the bundled `src/chuan/assets/preference/translate_zh_en.jsonl` (300 translation
requests; each pair's chosen answer is the prompt's reference), read by chuan
(`read_prompts`, then `mix`, which puts them in a seeded order) and handed to TRL in that
order as conversational prompts with a `reference` column, chuan's Baichuan 2 chat template
as `tokenizer.chat_template`. Neither side shuffles (chuan: `shuffle: false`; TRL:
`shuffle_dataset=False`), so optimizer step k answers the same prompts on both; the TRL worker
checks that, and that its prompt ids are chuan's.

One optimizer step is one rollout on both sides: `--prompts` prompts × `--group` samples
each, at most `--max-new-tokens` new tokens at temperature `--temperature` (no top-k, no
top-p), scored by the same deterministic reward, `chuan.align.rewards.reference_overlap`
(character-bigram F1 with the reference; TRL's completions are assistant messages, so a thin
wrapper hands it their text), advantages normalised within each group, then one pass of
forward + backward in micro-batches of `--micro-batch` completions and one optimizer step.
chuan: `ppo_epochs` 1, `minibatches` 1, `micro_batch_size` = `--micro-batch`. TRL:
`per_device_train_batch_size` = `--micro-batch`, `gradient_accumulation_steps` =
`steps_per_generation` = prompts × group / micro-batch (so `generation_batch_size` is one
step's completions), `num_iterations` 1. Matched: the clipped objective with ε 0.2, no KL term
(chuan `kl_coef: 0`, TRL `beta=0.0`, so neither holds or runs a reference), sequence-level
normalisation (chuan `loss_norm: sequence`, TRL `loss_type="grpo"`: each completion's token
mean, then the mean over completions), group-std scaling (TRL `scale_rewards="group"`; both
divide by std + 1e-4), no masking of truncated completions, fp32 on the CPU, AdamW (0.9,
0.98), eps 1e-8, weight decay 1e-4, clipping 1.0, constant learning rate, no activation
checkpointing, no completion logging. The LoRA dropout defaults to 0 here: TRL samples with
the model in training mode (chuan in eval mode), so a dropout would make the two sample
differently. The model has a plain linear head (`norm_head: false`), as in `bench_dpo.py`.

Work that still differs (by design of each trainer, reported, not removed): chuan scores the
rollout once more without gradients before the update (the "old" log-probs of its clipped
ratio); TRL skips that pass when generation and the optimizer step are aligned, as here, and
uses the detached log-probs of the update's own forward. chuan's log-prob forwards apply the
head at every position, the prompt's included, TRL's only at the completion's
(`logits_to_keep`); and chuan's sampler, with no top-k, sorts the whole vocabulary at every
decode step (`chuan.infer.sampling.candidate_tokens`), which transformers skips. Sampled
completions differ (each side has its own sampler and seeds), so their lengths can differ:
hence tokens per second and seconds per step, with the mean completion length beside them.
(The randomly initialised model almost never samples the stop token, so at the defaults
nearly every completion runs to `--max-new-tokens` on both sides.)

Measurements, each run in its own process (this script re-invoked with `--worker`), chuan and
TRL alternately (`--repeats` runs of each), the faster run of each side reported:

- completion tokens/s: tokens sampled (the stop token included when a completion stopped) in
  the `--steps` optimizer steps after `--warmup` warm-up steps, over their wall time.
- s / step: wall time between the ends of consecutive optimizer steps (rollout, scoring,
  update, logging), split into generation (chuan: `sample`, its KV-cache `BatchDecoder`;
  TRL: `_generate_single_turn`, i.e. `model.generate`), scoring (everything else before the
  update: chuan the reward and the no-gradient log-prob pass; TRL the rest of
  `_generate_and_score_completions`: tokenizing, decoding, reward, padding) and update (the
  rest: forward, backward, optimizer step).
- peak RSS: the kernel's high-water mark (VmHWM) of the whole process, reset when training
  starts and read after the last optimizer step; "Δ over loaded" is that peak minus the RSS
  at the start of training. The parent process never imports torch.

    python benchmarks/bench_grpo.py                   # about 4 minutes on 2 idle cores
    python benchmarks/bench_grpo.py --quick           # smoke run, under a minute
    python benchmarks/bench_grpo.py --json grpo.json  # also write every number to grpo.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_sft
from bench_model import CORES, MIB, cpu_snapshot, environment, markdown_table, others_cpu_share
from bench_sft import (
    BETAS,
    EPS,
    GRAD_CLIP,
    REPO,
    SEED,
    TEMPLATE,
    WEIGHT_DECAY,
    TrainingMemory,
    lifetime_peak,
    step_clock,
    trl_training_args,
    trl_version,
)

# The run settings every worker gets (`args` attributes of the same names).
TASK_SETTINGS = (
    "threads",
    "warmup",
    "steps",
    "prompts",
    "group",
    "micro_batch",
    "max_new_tokens",
    "temperature",
    "max_length",
    "lr",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
)
PROMPT_DATA = REPO / "src" / "chuan" / "assets" / "preference" / "translate_zh_en.jsonl"
REWARD = "chuan.align.rewards:reference_overlap"
CLIP = 0.2
CHUAN, TRL = "chuan grpo", "TRL GRPOTrainer"


# --- workers (each in its own subprocess) ---------------------------------------------------


def chuan_prompts() -> list:
    """The prompt records as chuan's first stage orders them (`mix` with the run's seed)."""
    from chuan.align.prompts import read_prompts
    from chuan.align.rl_config import PromptSource
    from chuan.align.sft_data import SFTDataStats, mix, read_source

    source = PromptSource(path=str(PROMPT_DATA))  # the layout (preference) is detected
    return mix([source], [read_source(source, SFTDataStats(), read_prompts)], seed=SEED)


def prepare_worker(task: dict) -> dict:
    """`bench_sft.py`'s tokenizer and model dir, then the prompts' lengths under the template."""
    made = bench_sft.prepare_worker(task)
    from chuan.tokenizer.chat_templates import get_template
    from chuan.tokenizer.hf import load_tokenizer

    template = get_template(TEMPLATE, load_tokenizer(Path(task["dir"]) / "model"))
    lengths = [len(template.prompt_ids(r.messages())) for r in chuan_prompts()]
    return {
        "params": made["params"],
        "vocab_size": made["vocab_size"],
        "intermediate_size": made["intermediate_size"],
        "prompts": len(lengths),
        "prompt_mean": sum(lengths) / len(lengths),
        "prompt_max": max(lengths),
    }


def chuan_worker(task: dict) -> dict:
    """`chuan.align.rl.grpo()`, its iteration's parts timed by wrappers."""
    from chuan.align import rl
    from chuan.align.rl import GRPOTrainer, grpo
    from chuan.align.rl_config import GRPOConfig
    from chuan.config import from_dict
    from chuan.train.metrics import read_metrics

    root = Path(task["dir"])
    run_dir = root / f"run-chuan-{os.getpid()}"
    memory = TrainingMemory()
    steps: list[dict] = []  # per iteration: end stamp, part times, completion tokens
    current: dict = {}
    originals = (
        GRPOTrainer._run_stage,
        rl.save_checkpoint,
        GRPOTrainer._iteration,
        GRPOTrainer._rollout,
        GRPOTrainer._scores,
        GRPOTrainer._score_rollout,
    )
    holds: dict[str, bool] = {}

    def timed_stage(self, *args, **kwargs):
        holds["reference"] = self.reference is not None
        memory.begin()
        steps.append({"end": time.perf_counter()})  # training starts
        return originals[0](self, *args, **kwargs)

    def first_checkpoint(*args, **kwargs):  # after the last iteration of the (only) stage
        memory.end()
        return originals[1](*args, **kwargs)

    def timed(index: int, key: str):
        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            out = originals[index](self, *args, **kwargs)
            current[key] = current.get(key, 0.0) + time.perf_counter() - start
            if key == "generate":
                current["completion_tokens"] = int(out.lengths.sum())
                current["completions"] = len(out.completions)
                current["ended"] = int(out.ended.sum())
            return out

        return wrapper

    def timed_iteration(self, *args, **kwargs):
        current.clear()
        out = originals[2](self, *args, **kwargs)
        steps.append({**current, "end": time.perf_counter()})
        return out

    GRPOTrainer._run_stage = timed_stage
    rl.save_checkpoint = first_checkpoint
    GRPOTrainer._iteration = timed_iteration
    GRPOTrainer._rollout = timed(3, "generate")
    GRPOTrainer._scores = timed(4, "reward")
    GRPOTrainer._score_rollout = timed(5, "logps")
    total = task["warmup"] + task["steps"]
    lora = dict(
        r=task["lora_r"],
        alpha=task["lora_alpha"],
        dropout=task["lora_dropout"],
        targets=task["lora_targets"],
    )
    optim = dict(lr=task["lr"], warmup_steps=0, schedule="constant", betas=list(BETAS))
    optim.update(eps=EPS, weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP)
    config = dict(
        out=str(run_dir),
        model=str(root / "model"),
        template=TEMPLATE,
        seed=SEED,
        finetune="lora",
        lora=lora,
        reward_function=REWARD,
        group_size=task["group"],
        loss_norm="sequence",
        kl_coef=0.0,
        clip=CLIP,
        ppo_epochs=1,
        minibatches=1,
        rollout=dict(
            prompts=task["prompts"],
            max_new_tokens=task["max_new_tokens"],
            temperature=task["temperature"],
            top_k=0,
            top_p=1.0,
        ),
        max_length=task["max_length"],
        micro_batch_size=task["micro_batch"],
        precision="fp32",
        device="cpu",
        optim=optim,
        eval={"holdout": 0},
        samples={"prompts": 0},
        checkpoint={"every": total + 1, "keep": 1},
        log={"every": 1, "tensorboard": False, "progress": False},
        stages=[{"data": [{"path": str(PROMPT_DATA)}], "steps": total, "shuffle": False}],
    )
    before = cpu_snapshot()
    start = time.perf_counter()
    grpo(from_dict(GRPOConfig, config))
    others = others_cpu_share(before, time.perf_counter() - start)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward" in r]
    report = json.loads((run_dir / "report.json").read_text())
    shutil.rmtree(run_dir)
    return {
        **timing(steps, task["warmup"]),
        "trainable": report["trainable_parameters"],
        "first_reward": records[0]["reward"],
        "last_reward": records[-1]["reward"],
        "reference_model_loaded": holds["reference"],
        "others_cpu": others,
        **memory.as_dict(),
        "lifetime_peak_mib": lifetime_peak() / MIB,
    }


def timing(steps: list[dict], warmup: int) -> dict:
    """The timed steps' numbers. `steps[0]` holds the start of training, `steps[k]` the end
    of optimizer step k with its parts' seconds and its completions."""
    timed = steps[warmup + 1 :]
    seconds = steps[-1]["end"] - steps[warmup]["end"]
    tokens = sum(s["completion_tokens"] for s in timed)
    completions = sum(s["completions"] for s in timed)
    generate = sum(s["generate"] for s in timed)
    score = sum(s.get("score", s.get("reward", 0.0) + s.get("logps", 0.0)) for s in timed)
    logps = sum(s.get("logps", 0.0) for s in timed)
    n = len(timed)
    return {
        "tokens_per_s": tokens / seconds,
        "generation_tokens_per_s": tokens / generate,
        "step_s": seconds / n,
        "generate_s": generate / n,
        "score_s": score / n,
        "update_s": (seconds - generate - score) / n,
        "logps_s": logps / n,
        "completion_tokens": tokens,
        "mean_length": tokens / completions,
        "ended_fraction": sum(s["ended"] for s in timed) / completions,
        "timed_steps": n,
        "step_times": [b["end"] - a["end"] for a, b in zip(steps[warmup:], timed, strict=False)],
    }


def completion_text(completion) -> str:
    """A TRL completion (conversational: `[{"role": "assistant", "content": ...}]`) as text."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def trl_reward(prompts, completions, reference, **kwargs) -> list[float]:
    """chuan's `reference_overlap` on the text of TRL's completions."""
    from chuan.align.rewards import reference_overlap

    texts = [completion_text(c) for c in completions]
    return reference_overlap(prompts, texts, reference)


def trl_worker(task: dict) -> dict:
    """TRL's `GRPOTrainer` on the chuan model object (LoRA through `peft_config`)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    import chuan  # noqa: F401  (registers chuan's classes with the Auto classes)
    from chuan.tokenizer.chat_templates import get_template
    from chuan.tokenizer.hf import load_tokenizer

    root = Path(task["dir"])
    tokenizer = load_tokenizer(root / "model")
    template = get_template(TEMPLATE, tokenizer)
    tokenizer.chat_template = template.jinja()
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    records = chuan_prompts()
    rows = [{"prompt": r.messages(), "reference": r.reference} for r in records]
    dataset = Dataset.from_list(rows)
    total = task["warmup"] + task["steps"]
    per_step = task["prompts"] * task["group"]
    accumulation = per_step // task["micro_batch"]
    targets = task["lora_targets"]
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        r=task["lora_r"],
        lora_alpha=task["lora_alpha"],
        lora_dropout=task["lora_dropout"],
    )
    memory = TrainingMemory()
    current: dict = {}
    drawn: list[list] = []  # each rollout's prompts, one per group

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            drawn.append([x["prompt"] for x in inputs[:: self.num_generations]])
            out = super()._generate_and_score_completions(inputs)
            current["score"] = time.perf_counter() - start - current["generate"]
            return out

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            start = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            current["generate"] = time.perf_counter() - start
            current["completion_tokens"] = sum(len(c) for c in completion_ids)
            current["completions"] = len(completion_ids)
            stops = set(self.eos_token_ids)
            current["ended"] = sum(bool(c) and c[-1] in stops for c in completion_ids)
            return completion_ids, logprobs

    clock = step_clock(memory, [], total)
    steps: list[dict] = []

    class PartsClock(type(clock)):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            steps.append({"end": self.stamps[-1]})

        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            steps.append({**current, "end": self.stamps[-1]})
            current.clear()

    clock = PartsClock()
    with tempfile.TemporaryDirectory(dir=root) as output_dir:
        settings = trl_training_args({**task, "grad_accum": accumulation}, total, output_dir)
        for key in ("max_length", "train_sampling_strategy"):  # not GRPO's; see shuffle_dataset
            settings.pop(key)
        args = GRPOConfig(
            **settings,
            num_generations=task["group"],
            steps_per_generation=accumulation,
            num_iterations=1,
            max_completion_length=task["max_new_tokens"],
            temperature=task["temperature"],
            top_p=1.0,
            top_k=0,
            beta=0.0,
            epsilon=CLIP,
            loss_type="grpo",
            scale_rewards="group",
            mask_truncated_completions=False,
            shuffle_dataset=False,
            log_completions=False,
            use_vllm=False,
            use_liger_kernel=False,
            disable_dropout=False,
        )
        trainer = TimedGRPOTrainer(
            model=model,
            reward_funcs=[trl_reward],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock],
        )
        used = records[: total * task["prompts"]]
        trl_ids, _, _ = trainer._tokenize_prompts([r.messages() for r in used])
        chuan_ids = [template.prompt_ids(r.messages()) for r in used]
        id_mismatches = sum(list(a) != b for a, b in zip(trl_ids, chuan_ids, strict=True))
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        eos_ids = list(trainer.eos_token_ids)
        before = cpu_snapshot()
        trainer.train()
        others = others_cpu_share(before, clock.stamps[-1] - clock.stamps[0])
        rewards = trainer.state.log_history
    memory.end()
    expected = [
        [r.messages() for r in records[k * task["prompts"] : (k + 1) * task["prompts"]]]
        for k in range(total)
    ]
    rewards = [log["reward"] for log in rewards if "reward" in log]
    return {
        **timing(steps, task["warmup"]),
        "trainable": trainable,
        "first_reward": rewards[0],
        "last_reward": rewards[-1],
        "reference_model_loaded": trainer.ref_model is not None,
        "prompt_id_mismatches": id_mismatches,
        "prompt_order_mismatches": sum(a != b for a, b in zip(drawn, expected, strict=False))
        + abs(len(drawn) - len(expected)),
        "eos_ids": eos_ids,
        "chuan_stop_ids": list(template.stop_ids),
        "others_cpu": others,
        **memory.as_dict(),
        "lifetime_peak_mib": lifetime_peak() / MIB,
    }


WORKERS = {"grpo-prepare": prepare_worker, "grpo-chuan": chuan_worker, "grpo-trl": trl_worker}


# --- orchestration (parent process, no torch) -----------------------------------------------


def run_worker(task: dict, label: str) -> dict:
    """`task` in a fresh interpreter running this file; a failure becomes a row with its
    error (the last line of the worker's stderr)."""
    print(f"running {label} ...", end=" ", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    print(f"{wall:.0f} s", file=sys.stderr, flush=True)
    if done.returncode == 0:
        return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}
    tail = [line for line in done.stderr.splitlines() if line.strip()] or [
        f"exit status {done.returncode}"
    ]
    return {"error": f"exit {done.returncode}: {tail[-1][:200]}", "wall_s": wall}


def best(runs: list[dict]) -> dict:
    """The run with the most completion tokens per second (both sides sample the same
    completions on every run: seeded), or the first error."""
    ok = [run for run in runs if "error" not in run]
    return max(ok, key=lambda run: run["tokens_per_s"]) if ok else runs[0]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"


# The comparison table's rows: (metric, key, cell of a value).
METRICS = (
    ("completion tokens/s (whole step)", "tokens_per_s", lambda v: f"{v:,.1f}"),
    ("s / optimizer step", "step_s", lambda v: f"{v:.3f}"),
    ("  generation s / step", "generate_s", lambda v: f"{v:.3f}"),
    ("  scoring s / step", "score_s", lambda v: f"{v:.3f}"),
    ("  update s / step", "update_s", lambda v: f"{v:.3f}"),
    ("generation tokens/s (generation only)", "generation_tokens_per_s", lambda v: f"{v:,.1f}"),
    ("mean completion length (tokens)", "mean_length", lambda v: f"{v:.2f}"),
    ("completions stopped before the limit", "ended_fraction", lambda v: f"{v:.1%}"),
    ("peak RSS MiB", "peak_rss_mib", lambda v: f"{v:,.0f}"),
    ("Δ over loaded MiB", "delta_mib", lambda v: f"{v:,.0f}"),
    ("trainable parameters", "trainable", lambda v: f"{v:,}"),
)


def print_tables(results: dict, args: argparse.Namespace) -> None:
    chuan_row, trl_row = best(results[CHUAN]), best(results[TRL])
    print(
        f"\n## GRPO step time and memory (fp32, {args.threads} threads; LoRA r{args.lora_r} "
        f"{'+'.join(args.lora_targets)}; {args.prompts} prompts × group {args.group} = "
        f"{args.prompts * args.group} completions per optimizer step, ≤ {args.max_new_tokens} "
        f"new tokens at T {args.temperature}, micro-batches of {args.micro_batch}; "
        f"{args.steps} timed steps after {args.warmup} warm-up; the faster of {args.repeats} "
        "runs per side)\n"
    )
    pairs = ((CHUAN, chuan_row), (TRL, trl_row))
    errors = [f"{label}: {row['error']}" for label, row in pairs if "error" in row]
    if errors:
        print("\n".join(f"- {e}" for e in errors))
        return
    table = [
        [name, cell(chuan_row[key]), cell(trl_row[key]), ratio(chuan_row[key], trl_row[key])]
        for name, key, cell in METRICS
    ]
    print(markdown_table(["", CHUAN, TRL, "chuan / TRL"], table))
    print(
        "\nchuan / TRL above 1 is chuan faster for tokens/s, below 1 is chuan faster for "
        "seconds and memory."
    )
    print("\n## Every run, in the order run\n")
    rows = []
    for index in range(args.repeats):
        for label in (CHUAN, TRL):
            run = results[label][index]
            if "error" in run:
                rows.append([label, index + 1, run["error"], "", "", ""])
                continue
            rows.append(
                [
                    label,
                    index + 1,
                    f"{run['tokens_per_s']:,.1f}",
                    f"{run['step_s']:.3f}",
                    " ".join(f"{t:.2f}" for t in run["step_times"]),
                    f"{run['others_cpu']:.0%}",
                ]
            )
    headers = ["runner", "run", "completion tokens/s", "s / step", "each step (s)", "others' CPU"]
    print(markdown_table(headers, rows))
    print_notes(chuan_row, trl_row)


def print_notes(chuan_row: dict, trl_row: dict) -> None:
    print()
    print(
        f"- same work: TRL's rollouts drew the prompts chuan draws, step for step "
        f"({trl_row['prompt_order_mismatches']} steps differ); TRL's prompt ids differ from "
        f"chuan's template ids in {trl_row['prompt_id_mismatches']} prompts; stop ids: chuan "
        f"{trl_row['chuan_stop_ids']}, TRL {trl_row['eos_ids']}"
    )
    print(
        f"- chuan's scoring includes its no-gradient pass for the old log-probs: "
        f"{chuan_row['logps_s']:.3f} s / step (TRL skips it when generation and optimizer "
        "steps are aligned, as here)"
    )
    print(
        f"- mean sampled reward (reference_overlap), first → last step: chuan "
        f"{chuan_row['first_reward']:.4f} → {chuan_row['last_reward']:.4f}, TRL "
        f"{trl_row['first_reward']:.4f} → {trl_row['last_reward']:.4f}"
    )
    held = [
        f"{label} {'yes' if row['reference_model_loaded'] else 'no'}"
        for label, row in ((CHUAN, chuan_row), (TRL, trl_row))
    ]
    print(f"- reference model held (no KL term): {', '.join(held)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `chuan grpo` against TRL's GRPOTrainer (completion tokens/s, "
        "seconds per optimizer step split into generation / scoring / update, peak RSS), "
        "LoRA; prints markdown tables.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: small model, few steps, one run each")
    add("--json", metavar="PATH", help="also write all results to PATH")
    add("--steps", type=int, default=12, help="timed optimizer steps (12)")
    add("--warmup", type=int, default=2, help="untimed warm-up steps (2)")
    add("--repeats", type=int, default=3, help="runs per side, alternating (3)")
    add("--prompts", type=int, default=8, help="prompts per optimizer step (8)")
    add("--group", type=int, default=4, help="samples per prompt (4)")
    add("--micro-batch", type=int, default=8, help="completions per forward/backward (8)")
    add("--max-new-tokens", type=int, default=32, help="completion length limit (32)")
    add("--temperature", type=float, default=1.0, help="sampling temperature (1.0)")
    add("--max-length", type=int, default=256, help="chuan's max prompt + completion (256)")
    add("--hidden-size", type=int, default=256, help="model width (256)")
    add("--layers", type=int, default=8, help="blocks (8)")
    add("--heads", type=int, default=8, help="attention heads (8)")
    add("--vocab-size", type=int, default=8000, help="tokenizer size (8000)")
    add("--lr", type=float, default=2e-4, help="LoRA LR (2e-4)")
    add("--lora-r", type=int, default=8, help="LoRA rank (8)")
    add("--lora-alpha", type=float, default=16.0, help="LoRA alpha (16)")
    add("--lora-dropout", type=float, default=0.0, help="LoRA dropout (0; see the docstring)")
    add("--lora-targets", nargs="+", default=["all-linear"], help="LoRA targets (all-linear)")
    add("--threads", type=int, default=CORES, help=f"torch threads per worker ({CORES})")
    add("--workdir", help="where the temporary files go (default: system temp)")
    add("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 2, 1, 1
        args.hidden_size, args.layers, args.heads = 128, 4, 4
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        parser.error("--steps, --warmup and --repeats must be at least 1")
    if (args.prompts * args.group) % args.micro_batch:
        parser.error("--prompts × --group must be a multiple of --micro-batch")
    if args.max_new_tokens >= args.max_length:
        parser.error("--max-new-tokens must be below --max-length")
    args.device = "cpu"  # read by bench_model.environment
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        bench_sft.WORKERS.update(WORKERS)  # its worker_main: threads, warnings, JSON result
        bench_sft.worker_main(json.loads(args.worker))
        return
    trl = trl_version()
    if trl is None:
        sys.exit(
            "bench_grpo.py compares against TRL, which is not installed: "
            "pip install -e '.[bench]' (or pip install trl)"
        )
    started = time.perf_counter()
    env = environment(args)
    from importlib.metadata import version

    env["trl"], env["peft"] = trl, version("peft")
    libraries = ", ".join(f"{lib} {env[lib]}" for lib in ("torch", "transformers", "trl", "peft"))
    print(f"# chuan grpo benchmark\n\n- {libraries}, Python {env['python']}")
    print(f"- CPU: {env['cpu']}, {env['cores']} cores (torch threads = {args.threads})")
    common = {key: getattr(args, key) for key in TASK_SETTINGS}
    results: dict = {CHUAN: [], TRL: []}
    with tempfile.TemporaryDirectory(prefix="bench_grpo-", dir=args.workdir) as work:
        common["dir"] = work
        shape = {
            "vocab_size": args.vocab_size,
            "hidden_size": args.hidden_size,
            "num_layers": args.layers,
            "num_heads": args.heads,
        }
        data = run_worker({**common, **shape, "kind": "grpo-prepare"}, "prepare")
        if "error" in data:
            sys.exit(f"preparing failed: {data['error']}")
        print(
            f"- model: {data['params'] / 1e6:.1f} M parameters (h{args.hidden_size} "
            f"L{args.layers} F{data['intermediate_size']} V{data['vocab_size']:,}, plain head, "
            f"randomly initialised); prompts: {data['prompts']:,} (mean "
            f"{data['prompt_mean']:.1f} tokens, max {data['prompt_max']}) with references"
        )
        drawn = (args.steps + args.warmup) * args.prompts
        if drawn > data["prompts"]:
            sys.exit(
                f"{drawn} prompts would be drawn, more than the {data['prompts']} of the file; "
                "lower --steps or --prompts"
            )
        for index in range(args.repeats):
            for label, kind in ((CHUAN, "grpo-chuan"), (TRL, "grpo-trl")):
                task = {**common, "kind": kind}
                results[label].append(run_worker(task, f"{label}, run {index + 1}"))
    print_tables(results, args)
    wall = time.perf_counter() - started
    print(f"\nTotal wall time: {wall:.0f} s")
    if args.json:
        saved = dict(environment=env, args=vars(args), data=data, results=results)
        Path(args.json).write_text(json.dumps({**saved, "wall_seconds": wall}, indent=2))


if __name__ == "__main__":
    main()
