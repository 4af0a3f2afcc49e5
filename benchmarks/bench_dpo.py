"""Preference-optimisation throughput and peak memory: `chuan dpo` against TRL's `DPOTrainer`.

Both sides train the same model (one chuan model dir made by `bench_sft.py`'s prepare worker;
TRL loads it through `AutoModelForCausalLM` after `import chuan`) on the same pairs: the
bundled `src/chuan/assets/preference/translate_zh_en.jsonl` (300 alpaca-style pairs), read by
chuan (`read_preferences`, then `mix`, which puts them in a seeded order) and handed to TRL in
that order as conversational `{prompt, chosen, rejected}` messages, with chuan's Baichuan 2
chat template as `tokenizer.chat_template`. Neither side shuffles (chuan: `shuffle: false`;
TRL: `train_sampling_strategy="sequential"`), so micro-batch k holds the same pairs on both.
The TRL worker compares its tokenized pairs (prompt + answer ids, answer mask) with chuan's
`encode_pairs` and reports how many differ. Runs, each in a fresh process:

- **full** and **LoRA** (peft; the same `r`, alpha, dropout and target modules on both sides;
  TRL's `disable_dropout` is off so that the LoRA dropout is the same too);
- **chuan, reference on the fly** (its default: the frozen reference scores each pair of the
  micro-batch alone during the step) and **chuan, reference precomputed**
  (`precompute_reference: true`: every pair scored once before training; that pass is timed
  apart and is not in the tokens/s);
- **TRL** with its default for the reference, `precompute_ref_log_probs=False` (one batched
  reference forward of the micro-batch per step), and **TRL, reference precomputed**
  (`precompute_ref_log_probs=True`: a batched pass over the data when training starts, inside
  TRL's `train()`, so its memory is in TRL's peak but, being before the warm-up steps, not in
  its tokens/s). Each chuan run is also set against the TRL run that scores its reference the
  same way. Under LoRA both use the model with its
  adapter switched off as the reference; full fine-tunes hold a second, frozen copy (the
  table's "frozen copy held"). TRL is handed that copy (`ref_model`, loaded as it would load
  it): its own loader (`create_model_from_path`) reads `config.auto_map` for any architecture
  not in `transformers`, and a config registered in-process, like chuan's, has none.

Shared settings: DPO's sigmoid loss with beta 0.1, fp32 on the CPU, micro-batches of B pairs
(2B rows: chosen then rejected, padded to the longest) x gradient accumulation, max length,
optimizer steps, fused AdamW (0.9, 0.98), eps 1e-8, weight decay 1e-4, clipping 1.0, constant
learning rate, no activation checkpointing (TRL's config defaults it on and to bf16; both are
set off here to match chuan's defaults). The model has a plain linear head (`norm_head:
false`): TRL's `DPOTrainer` computes its log-probs with a fused head that multiplies by
`lm_head.weight` directly, which would skip the row normalisation of Baichuan 2's NormHead and
train a different model than chuan does.

Measurements, each run in its own process (this script re-invoked with `--worker`):

- tokens/s: real (non-padding) tokens of the chosen and rejected rows of the optimizer steps
  after `--warmup` warm-up steps, over their wall time. chuan: its own `metrics.jsonl`
  (`tokens` = the rows' non-padding count; rate = tokens over the time since the previous
  record). TRL: a `compute_loss` override adds up `attention_mask.sum()` of the concatenated
  chosen + rejected micro-batch, and a callback stamps the end of every optimizer step.
- padding: positions of the trained micro-batches that are padding, in the timed steps.
- peak RSS: the kernel's high-water mark (VmHWM) of the whole process, reset when training
  starts (model and reference loading, tokenizing and chuan's reference precompute are
  excluded) and read after the last optimizer step; "Δ over loaded" is that peak minus the RSS
  at the start of training. The parent process never imports torch.
- first-step loss: policy and reference are the same weights at step 0, so every pair's loss
  is -log σ(0) = ln 2 ≈ 0.6931 on both sides; printed so that a reader sees the objectives
  agree.

    python benchmarks/bench_dpo.py                  # about 5 minutes on 2 idle cores
    python benchmarks/bench_dpo.py --quick          # smoke run, about 2 minutes
    python benchmarks/bench_dpo.py --json dpo.json  # also write every number to dpo.json
"""

from __future__ import annotations

import argparse
import json
import math
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
    MEMORY_GOAL,
    REPO,
    SEED,
    SPEED_GOAL,
    TEMPLATE,
    WEIGHT_DECAY,
    TrainingMemory,
    fmt_ratio,
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
    "micro_batch",
    "grad_accum",
    "max_length",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
)
PREFERENCE_DATA = REPO / "src" / "chuan" / "assets" / "preference" / "translate_zh_en.jsonl"
BETA = 0.1
LN2 = math.log(2)

ON_THE_FLY, PRECOMPUTED, TRL, TRL_PRECOMPUTED = (
    "chuan, reference on the fly",
    "chuan, reference precomputed",
    "TRL DPOTrainer",
    "TRL DPOTrainer, reference precomputed",
)
RUNS = tuple(
    (finetune, runner, precompute)
    for finetune in ("full", "lora")
    for runner, precompute in (("chuan", False), ("chuan", True), ("trl", False), ("trl", True))
)
# Each chuan run against the TRL run that scores its reference the same way.
PEERS = {ON_THE_FLY: TRL, PRECOMPUTED: TRL_PRECOMPUTED}


def run_label(runner: str, precompute: bool) -> str:
    if runner == "trl":
        return TRL_PRECOMPUTED if precompute else TRL
    return PRECOMPUTED if precompute else ON_THE_FLY


# --- workers (each in its own subprocess) ---------------------------------------------------


def chuan_pairs() -> list:
    """The preference set as chuan's first stage orders it (`mix` with the run's seed)."""
    from chuan.align.preferences import read_preferences
    from chuan.align.sft_config import DataSource
    from chuan.align.sft_data import SFTDataStats, mix, read_source

    source = DataSource(path=str(PREFERENCE_DATA))  # the layout (alpaca) is detected
    return mix([source], [read_source(source, SFTDataStats(), read_preferences)], seed=SEED)


def chuan_encoded(template, max_length: int) -> list:
    from chuan.align.pair_data import encode_pairs
    from chuan.align.sft_data import SFTDataStats

    return encode_pairs(template, chuan_pairs(), max_length, SFTDataStats())


def prepare_worker(task: dict) -> dict:
    """`bench_sft.py`'s tokenizer and model dir, then the pairs' lengths and the padding per
    epoch of chuan's micro-batches (TRL's collator pads the same rows to the same width)."""
    made = bench_sft.prepare_worker(task)
    from chuan.tokenizer.chat_templates import get_template
    from chuan.tokenizer.hf import load_tokenizer

    root = Path(task["dir"])
    template = get_template(TEMPLATE, load_tokenizer(root / "model"))
    encoded = chuan_encoded(template, task["max_length"])
    lengths = [(len(c.input_ids), len(r.input_ids)) for _, c, r in encoded]
    answers = sum(
        sum(label != -100 for label in s.labels[1:]) for _, c, r in encoded for s in (c, r)
    )
    tokens = sum(c + r for c, r in lengths)
    positions = 0
    per = task["micro_batch"]
    for start in range(0, len(lengths), per):
        group = lengths[start : start + per]
        positions += 2 * len(group) * max(max(pair) for pair in group)
    return {
        "params": made["params"],
        "vocab_size": made["vocab_size"],
        "intermediate_size": made["intermediate_size"],
        "pairs": len(encoded),
        "tokens": tokens,
        "answer_tokens": int(answers),
        "row_mean": tokens / (2 * len(lengths)),
        "row_max": max(max(pair) for pair in lengths),
        "epoch_padding": positions - tokens,
        "epoch_positions": positions,
    }


def chuan_worker(task: dict) -> dict:
    """`chuan.align.dpo.dpo()`; tokens/s from its own metrics.jsonl."""
    from chuan.align.dpo import DPOTrainer, dpo
    from chuan.align.dpo_config import DPOConfig
    from chuan.align.pair_data import PairRows
    from chuan.config import from_dict
    from chuan.train import loop
    from chuan.train.metrics import read_metrics

    root = Path(task["dir"])
    run_dir = root / f"run-{task['finetune']}-chuan-{int(task['precompute'])}"
    memory = TrainingMemory()
    micro: list[tuple[int, int]] = []  # (positions, real tokens) per trained micro-batch
    reference_pass: list[float] = []
    holds: dict[str, bool] = {}
    originals = (
        loop.Trainer._run_stage,
        loop.save_checkpoint,
        PairRows.batch,
        DPOTrainer._score_reference,
    )

    def timed_stage(self, *args, **kwargs):
        holds["reference"] = self.reference is not None  # a frozen copy beside the policy
        memory.begin()
        return originals[0](self, *args, **kwargs)

    def first_checkpoint(*args, **kwargs):  # after the last step of the (only) stage
        memory.end()
        return originals[1](*args, **kwargs)

    def counted_batch(self, samples):
        out = originals[2](self, samples)
        micro.append((out.batch.input_ids.numel(), out.num_tokens))
        return out

    def timed_reference(self, *args, **kwargs):
        start = time.perf_counter()
        scores = originals[3](self, *args, **kwargs)
        reference_pass.append(time.perf_counter() - start)
        return scores

    loop.Trainer._run_stage = timed_stage
    loop.save_checkpoint = first_checkpoint
    PairRows.batch = counted_batch
    DPOTrainer._score_reference = timed_reference
    steps = task["warmup"] + task["steps"]
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
        finetune=task["finetune"],
        lora=lora,
        loss="sigmoid",
        beta=BETA,
        precompute_reference=task["precompute"],
        max_length=task["max_length"],
        micro_batch_size=task["micro_batch"],
        grad_accum=task["grad_accum"],
        precision="fp32",
        device="cpu",
        optim=optim,
        eval={"holdout": 0},
        samples={"prompts": 0},
        checkpoint={"every": steps + 1, "keep": 1},
        log={"every": 1, "tensorboard": False, "progress": False},
        stages=[{"data": [{"path": str(PREFERENCE_DATA)}], "steps": steps, "shuffle": False}],
    )
    before = cpu_snapshot()
    start = time.perf_counter()
    dpo(from_dict(DPOConfig, config))
    others = others_cpu_share(before, time.perf_counter() - start)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "tokens_per_s" in r]
    report = json.loads((run_dir / "report.json").read_text())
    shutil.rmtree(run_dir)
    timed = records[task["warmup"] :]
    per_step = task["grad_accum"]
    timed_micro = micro[task["warmup"] * per_step : steps * per_step]
    return {
        **timing(
            sum(r["tokens"] for r in timed),
            sum(r["tokens"] / r["tokens_per_s"] for r in timed),
            timed_micro,
        ),
        "trainable": report["trainable_parameters"],
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "reference_pass_s": sum(reference_pass),
        "reference_model_loaded": holds["reference"],
        "others_cpu": others,
        **memory.as_dict(),
        "lifetime_peak_mib": lifetime_peak() / MIB,
    }


def timing(tokens: int, seconds: float, micro: list[tuple[int, int]]) -> dict:
    """The timed steps' numbers: `micro` is (positions, real tokens) per micro-batch."""
    return {
        "tokens_per_s": tokens / seconds,
        "timed_tokens": tokens,
        "timed_seconds": seconds,
        "timed_positions": sum(p for p, _ in micro),
        "timed_padding": sum(p - t for p, t in micro),
    }


def trl_pairs() -> list[dict]:
    """chuan's pairs, in chuan's order, as TRL's conversational preference records."""
    out = []
    for pair in chuan_pairs():
        prompt = [{"role": "system", "content": pair.system}] if pair.system else []
        prompt += [{"role": role, "content": text} for role, text in pair.prompt]
        out.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            }
        )
    return out


def tokenization_mismatches(dataset, template, max_length: int) -> int:
    """Pairs whose TRL rows (prompt + answer ids, answer mask) differ from chuan's rows (ids,
    labelled positions); chuan never labels a row's first token, nor can it be predicted."""
    chuan_side = chuan_encoded(template, max_length)
    if len(dataset) != len(chuan_side):
        return abs(len(dataset) - len(chuan_side)) + min(len(dataset), len(chuan_side))
    differ = 0
    for row, (_, chosen, rejected) in zip(dataset, chuan_side, strict=True):
        prompt = row["prompt_ids"]
        for answer, sample in ((row["chosen_ids"], chosen), (row["rejected_ids"], rejected)):
            mask = [False] * len(prompt) + [True] * len(answer)
            ours = [label != -100 for label in sample.labels]
            if prompt + answer != sample.input_ids or mask[1:] != ours[1:]:
                differ += 1
                break
    return differ


def trl_worker(task: dict) -> dict:
    """TRL's `DPOTrainer` on the chuan model object (LoRA through `peft_config`)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    import chuan  # noqa: F401  (registers chuan's classes with the Auto classes)
    from chuan.tokenizer.chat_templates import get_template
    from chuan.tokenizer.hf import load_tokenizer

    root = Path(task["dir"])
    tokenizer = load_tokenizer(root / "model")
    template = get_template(TEMPLATE, tokenizer)
    tokenizer.chat_template = template.jinja()
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    steps = task["warmup"] + task["steps"]
    peft_config = reference = None
    if task["finetune"] == "lora":  # the reference is the model with its adapter off
        from peft import LoraConfig

        targets = task["lora_targets"]
        targets = "all-linear" if targets == ["all-linear"] else targets
        peft_config = LoraConfig(
            task_type="CAUSAL_LM",
            target_modules=targets,
            r=task["lora_r"],
            lora_alpha=task["lora_alpha"],
            lora_dropout=task["lora_dropout"],
        )
    else:  # the frozen copy TRL would load itself, were it not for the `auto_map` lookup
        reference = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    memory = TrainingMemory()
    micro: list[tuple[int, int]] = []  # (positions, real tokens) per trained micro-batch

    class CountingDPOTrainer(DPOTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if self.model.training:  # chosen rows, then rejected rows, right-padded
                mask = inputs["attention_mask"]
                micro.append((int(mask.numel()), int(mask.sum())))
            return super().compute_loss(model, inputs, *args, **kwargs)

    clock = step_clock(memory, micro, steps)
    with tempfile.TemporaryDirectory(dir=root) as output_dir:
        args = DPOConfig(
            **trl_training_args(task, steps, output_dir),
            loss_type=["sigmoid"],
            beta=BETA,
            precompute_ref_log_probs=task["precompute"],
            disable_dropout=False,  # chuan keeps the LoRA dropout; so does TRL here
        )
        trainer = CountingDPOTrainer(
            model=model,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(trl_pairs()),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock],
        )
        mismatches = tokenization_mismatches(trainer.train_dataset, template, task["max_length"])
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        before = cpu_snapshot()
        trainer.train()
        others = others_cpu_share(before, clock.stamps[-1] - clock.stamps[0])
    memory.end()
    warm = task["warmup"]
    timed_micro = micro[clock.micro_done[warm - 1] : clock.micro_done[-1]]
    return {
        **timing(
            sum(t for _, t in timed_micro), clock.stamps[-1] - clock.stamps[warm], timed_micro
        ),
        "trainable": trainable,
        "first_loss": clock.losses[0],
        "last_loss": clock.losses[-1],
        "tokenization_mismatches": mismatches,
        "reference_model_loaded": trainer.ref_model is not None,
        "others_cpu": others,
        **memory.as_dict(),
        "lifetime_peak_mib": lifetime_peak() / MIB,
    }


WORKERS = {"dpo-prepare": prepare_worker, "dpo-chuan": chuan_worker, "dpo-trl": trl_worker}


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


def add_ratios(results: dict) -> None:
    """Every row against TRL's run of the same fine-tune."""
    for rows in results.values():
        base = rows.get(TRL, {})
        if not base or "error" in base:
            continue
        for row in rows.values():
            if "error" not in row:
                row["speed_vs_trl"] = row["tokens_per_s"] / base["tokens_per_s"]
                row["memory_vs_trl"] = row["peak_rss_mib"] / base["peak_rss_mib"]
                row["delta_vs_trl"] = row["delta_mib"] / max(base["delta_mib"], 1e-9)


def padding_cell(row: dict) -> str:
    return f"{row['timed_padding']:,} ({row['timed_padding'] / max(row['timed_positions'], 1):.1%})"


# The table's columns after fine-tune and runner: (header, cell of a result row).
COLUMNS = (
    ("tokens/s", lambda row: f"{row['tokens_per_s']:,.0f}"),
    ("vs TRL", lambda row: fmt_ratio(row, "speed_vs_trl")),
    ("padding (timed)", padding_cell),
    ("peak RSS MiB", lambda row: f"{row['peak_rss_mib']:,.0f}"),
    ("vs TRL", lambda row: fmt_ratio(row, "memory_vs_trl")),
    ("Δ over loaded MiB", lambda row: f"{row['delta_mib']:,.0f}"),
    ("vs TRL", lambda row: fmt_ratio(row, "delta_vs_trl")),
    ("frozen copy held", lambda row: "yes" if row["reference_model_loaded"] else "no"),
    ("others' CPU", lambda row: f"{row['others_cpu']:.0%}"),
    ("loss first → last", lambda row: f"{row['first_loss']:.4f} → {row['last_loss']:.4f}"),
)


def print_tables(results: dict, data: dict, args: argparse.Namespace) -> None:
    print(
        f"\n## Throughput and memory (fp32, {args.threads} threads; sigmoid loss, beta {BETA}; "
        f"{args.micro_batch} pairs × grad accum {args.grad_accum}, max length "
        f"{args.max_length}; {args.steps} timed optimizer steps after {args.warmup} warm-up; "
        "ratios against TRL)\n"
    )
    names = {"full": "full", "lora": f"LoRA r{args.lora_r} {'+'.join(args.lora_targets)}"}
    table = []
    for finetune, rows in results.items():
        for index, (label, row) in enumerate(rows.items()):
            first = ["" if index else names[finetune], label]
            if "error" in row:
                table.append([*first, row["error"], *[""] * (len(COLUMNS) - 1)])
            else:
                table.append([*first, *(cell(row) for _, cell in COLUMNS)])
    print(markdown_table(["fine-tune", "runner", *(header for header, _ in COLUMNS)], table))
    print(
        f"\nPadding per epoch ({data['pairs']} pairs in micro-batches of {args.micro_batch}, "
        f"each pair's two rows padded to the micro-batch's longest): "
        f"{data['epoch_padding']:,} of {data['epoch_positions']:,} positions "
        f"({data['epoch_padding'] / data['epoch_positions']:.1%}), the same rows on both sides. "
        '"Frozen copy held": a second model (the reference) in memory during training.'
    )
    print()
    for finetune, rows in results.items():
        for label, peer in PEERS.items():
            if "speed_vs_trl" in rows.get(label, {}):
                print(f"- {finetune}, {label} vs TRL DPOTrainer: {goal_verdict(rows[label])}")
            mine, theirs = rows.get(label, {}), rows.get(peer, {})
            if peer != TRL and "tokens_per_s" in mine and "tokens_per_s" in theirs:
                print(
                    f"- {finetune}, {label} vs {peer}: tokens/s "
                    f"{mine['tokens_per_s'] / theirs['tokens_per_s']:.2f}×, peak RSS "
                    f"{mine['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}×"
                )
    print_notes(results)


def goal_verdict(row: dict) -> str:
    speed, memory = row["speed_vs_trl"], row["memory_vs_trl"]
    return (
        f"tokens/s {speed:.2f}× (goal ≥ {SPEED_GOAL}×: "
        f"{'met' if speed >= SPEED_GOAL else 'NOT met'}), peak RSS {memory:.2f}× "
        f"(goal ≤ {MEMORY_GOAL}×: {'met' if memory <= MEMORY_GOAL else 'NOT met'}); "
        f"both: {'met' if speed >= SPEED_GOAL and memory <= MEMORY_GOAL else 'NOT met'}"
    )


def print_notes(results: dict) -> None:
    print()
    for finetune, rows in results.items():
        ok = {label: row for label, row in rows.items() if "error" not in row}
        if not ok:
            continue
        losses = "; ".join(f"{label} {row['first_loss']:.6f}" for label, row in ok.items())
        print(f"- {finetune}: first-step loss (ln 2 = {LN2:.6f} expected): {losses}")
        counts = "; ".join(f"{label} {row['trainable']:,}" for label, row in ok.items())
        print(f"- {finetune}: trainable parameters: {counts}")
        if TRL in ok:
            print(
                f"- {finetune}: TRL's tokenized pairs (prompt + answer ids, answer mask) differ "
                f"from chuan's rows in {ok[TRL]['tokenization_mismatches']} pairs"
            )
        if PRECOMPUTED in ok:
            print(
                f"- {finetune}: chuan's reference precompute (every pair of the file, one at a "
                f"time, before training; not in tokens/s) took "
                f"{ok[PRECOMPUTED]['reference_pass_s']:.1f} s"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `chuan dpo` against TRL's DPOTrainer (tokens/s, peak RSS, "
        "padding, first-step loss), full fine-tune and LoRA; prints markdown tables.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: small model, few steps")
    add("--json", metavar="PATH", help="also write all results to PATH")
    add("--steps", type=int, default=32, help="timed optimizer steps (32)")
    add("--warmup", type=int, default=2, help="untimed warm-up steps (2)")
    add("--micro-batch", type=int, default=4, help="pairs per micro-batch (4, i.e. 8 rows)")
    add("--grad-accum", type=int, default=2, help="gradient accumulation (2)")
    add("--max-length", type=int, default=256, help="max length of a row (256; none is cut)")
    add("--hidden-size", type=int, default=256, help="model width (256)")
    add("--layers", type=int, default=8, help="blocks (8)")
    add("--heads", type=int, default=8, help="attention heads (8)")
    add("--vocab-size", type=int, default=8000, help="tokenizer size (8000)")
    add("--lr", type=float, default=1e-6, help="full fine-tune LR (1e-6, both trainers' default)")
    add("--lora-lr", type=float, default=2e-4, help="LoRA LR (2e-4)")
    add("--lora-r", type=int, default=8, help="LoRA rank (8)")
    add("--lora-alpha", type=float, default=16.0, help="LoRA alpha (16)")
    add("--lora-dropout", type=float, default=0.05, help="LoRA dropout (0.05)")
    add("--lora-targets", nargs="+", default=["all-linear"], help="LoRA targets (all-linear)")
    add("--only", nargs="+", choices=("full", "lora"), default=["full", "lora"])
    add("--threads", type=int, default=CORES, help=f"torch threads per worker ({CORES})")
    add("--workdir", help="where the temporary files go (default: system temp)")
    add("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 4, 1
        args.hidden_size, args.layers, args.heads = 128, 4, 4
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
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
            "bench_dpo.py compares against TRL, which is not installed: "
            "pip install -e '.[bench]' (or pip install trl)"
        )
    started = time.perf_counter()
    env = environment(args)
    from importlib.metadata import version

    env["trl"], env["peft"] = trl, version("peft")
    libraries = ", ".join(f"{lib} {env[lib]}" for lib in ("torch", "transformers", "trl", "peft"))
    print(f"# chuan dpo benchmark\n\n- {libraries}, Python {env['python']}")
    print(f"- CPU: {env['cpu']}, {env['cores']} cores (torch threads = {args.threads})")
    common = {key: getattr(args, key) for key in TASK_SETTINGS}
    results: dict = {finetune: {} for finetune in ("full", "lora") if finetune in args.only}
    with tempfile.TemporaryDirectory(prefix="bench_dpo-", dir=args.workdir) as work:
        common["dir"] = work
        shape = {
            "vocab_size": args.vocab_size,
            "hidden_size": args.hidden_size,
            "num_layers": args.layers,
            "num_heads": args.heads,
        }
        data = run_worker({**common, **shape, "kind": "dpo-prepare"}, "prepare")
        if "error" in data:
            sys.exit(f"preparing failed: {data['error']}")
        print(
            f"- model: {data['params'] / 1e6:.1f} M parameters (h{args.hidden_size} "
            f"L{args.layers} F{data['intermediate_size']} V{data['vocab_size']:,}, plain head); "
            f"data: {data['pairs']:,} pairs, {data['tokens']:,} tokens in their chosen and "
            f"rejected rows (mean {data['row_mean']:.1f}, max {data['row_max']}), "
            f"{data['answer_tokens']:,} answer tokens scored"
        )
        trained = (args.steps + args.warmup) * args.micro_batch * args.grad_accum
        if trained > data["pairs"]:
            sys.exit(
                f"{trained} pairs would be trained, more than the {data['pairs']} of one epoch "
                "(at an epoch's end TRL's last step has fewer micro-batches than chuan's); "
                "lower --steps, --micro-batch or --grad-accum"
            )
        for finetune, runner, precompute in RUNS:
            if finetune not in results:
                continue
            task = {
                **common,
                "kind": f"dpo-{runner}",
                "finetune": finetune,
                "precompute": precompute,
                "lr": args.lr if finetune == "full" else args.lora_lr,
            }
            label = run_label(runner, precompute)
            results[finetune][label] = run_worker(task, f"{finetune} {label}")
    add_ratios(results)
    print_tables(results, data, args)
    wall = time.perf_counter() - started
    print(f"\nTotal wall time: {wall:.0f} s")
    if args.json:
        saved = dict(environment=env, args=vars(args), data=data, results=results)
        Path(args.json).write_text(json.dumps({**saved, "wall_seconds": wall}, indent=2))


if __name__ == "__main__":
    main()
