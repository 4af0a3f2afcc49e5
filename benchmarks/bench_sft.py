"""Supervised fine-tuning throughput and peak memory: `chuan sft` against TRL's `SFTTrainer`.

Both sides fine-tune the same model (one chuan model dir, loaded by TRL through
`AutoModelForCausalLM` after `import chuan`) on the same conversations: the bundled
`src/chuan/assets/sft/translate_zh_en.jsonl` (alpaca format), read and ordered by chuan
(`read_conversations` + `mix`) and handed to TRL as conversational `messages`. TRL gets
chuan's Baichuan 2 chat template as `tokenizer.chat_template` (its `{% generation %}` blocks
give `assistant_only_loss=True` the same loss mask chuan trains on); the TRL worker checks
that its tokenized dataset has chuan's ids and labels. Runs:

- **full** and **LoRA** (peft; the same `r`, alpha, dropout and target modules on both sides);
- **chuan packed** (its default: first-fit-decreasing rows with segment ids, no
  cross-sample attention) and **chuan unpacked** (one conversation per row);
- **TRL default** (no packing, each micro-batch padded to its longest row) and **TRL
  packed** (`packing=True`: best-fit-decreasing + padding-free, i.e. the micro-batch flattened
  into one row with `position_ids` restarting per sample; the model must read those resets
  as attention boundaries, which only FlashAttention kernels do; see the notes printed).

Shared settings: fp32 on the CPU, the same micro-batch x gradient accumulation, max length,
optimizer steps, AdamW (0.9, 0.98), eps 1e-8, weight decay 1e-4, clipping 1.0, constant
learning rate, no activation checkpointing (TRL's `SFTConfig` defaults it on and to bf16;
both are set off here to match chuan's defaults), no shuffling (the unpacked runs see the
same batches, so their first losses must agree), plain linear head (`norm_head: false`; see
the notes for why).

Measurements, each run in its own fresh process (this script re-invoked with `--worker`):

- tokens/s: real (non-padding) tokens of the optimizer steps after `--warmup` warm-up steps
  over their wall time. chuan: its own `metrics.jsonl` (`tokens` = segment-id count; rate =
  tokens over the time since the previous record). TRL: a `compute_loss` override adds up
  `attention_mask.sum()` (padding-free: the flattened row length, which has no padding) per
  micro-batch, and a callback stamps the end of every optimizer step.
- padding: positions in the trained micro-batches that are padding, in the timed steps.
- peak RSS: the kernel's high-water mark (VmHWM) of the whole process, reset when training
  starts (so model loading and data preparation transients are excluded) and read after the
  last optimizer step (chuan's end-of-stage checkpoint and LoRA merge come after and are
  excluded); "Δ over loaded" is that peak minus the RSS at the start of training (the loaded
  model, data and libraries). The parent process never imports torch.

    python benchmarks/bench_sft.py                 # about 8 minutes on 2 cores
    python benchmarks/bench_sft.py --quick         # smoke run, about 2 minutes
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_model import CORES, MIB, cpu_snapshot, environment, markdown_table, others_cpu_share

REPO = Path(__file__).resolve().parent.parent
SFT_DATA = REPO / "src" / "chuan" / "assets" / "sft" / "translate_zh_en.jsonl"
SAMPLE_CORPUS = REPO / "src" / "chuan" / "assets" / "sample"
SEED = 1234
TEMPLATE = "baichuan2"
BETAS = (0.9, 0.98)  # Baichuan 2's fine-tuning AdamW (chuan's SFT defaults)
EPS = 1e-8
WEIGHT_DECAY = 1e-4
GRAD_CLIP = 1.0
# Goals from the issue: chuan >= 1.2x TRL's tokens/s at <= 0.8x its peak memory.
SPEED_GOAL = 1.2
MEMORY_GOAL = 0.8
PADDING_GOAL = 3.0  # at least this many times fewer padding tokens per epoch with packing

RUNS = (
    ("full", "chuan", True),
    ("full", "chuan", False),
    ("full", "trl", False),
    ("full", "trl", True),
    ("lora", "chuan", True),
    ("lora", "chuan", False),
    ("lora", "trl", False),
    ("lora", "trl", True),
)


def run_label(runner: str, packing: bool) -> str:
    if runner == "chuan":
        return "chuan packed" if packing else "chuan unpacked"
    return "TRL packed (padding-free)" if packing else "TRL default (no packing)"


# --- memory inside a worker -----------------------------------------------------------------


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> int:
    """Restart the kernel's RSS high-water mark from now; returns the RSS now."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return current_rss()


def high_water_mark() -> int:
    """VmHWM: the peak RSS since the last `reset_peak` (or the process start)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def lifetime_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TrainingMemory:
    """RSS at the start of training and the peak from there to the end of the last step."""

    def __init__(self):
        self.start = 0
        self.peak = 0

    def begin(self) -> None:
        self.start = reset_peak()

    def end(self) -> None:
        if not self.peak:
            self.peak = high_water_mark()

    def as_dict(self) -> dict:
        return {
            "start_rss_mib": self.start / MIB,
            "peak_rss_mib": self.peak / MIB,
            "delta_mib": (self.peak - self.start) / MIB,
        }


# --- workers (each in its own subprocess) ---------------------------------------------------


def prepare_worker(task: dict) -> dict:
    """A tokenizer (sample corpus + the SFT texts), the model dir, and the data statistics:
    conversation lengths and padding per epoch, chuan's rows packed and unpacked."""
    import numpy as np
    import torch

    from chuan.align.sft_config import DataSource
    from chuan.align.sft_data import (
        SFTDataStats,
        encode_fitting,
        mix,
        padding_tokens,
        read_source,
        to_rows,
    )
    from chuan.model import swiglu_intermediate_size
    from chuan.model.checkpoint import init_model_dir
    from chuan.model.presets import parameter_count
    from chuan.tokenizer.chat_templates import get_template
    from chuan.tokenizer.hf import load_tokenizer
    from chuan.tokenizer.train import train_tokenizer

    root = Path(task["dir"])
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as out:
        for path in sorted(glob.glob(str(SAMPLE_CORPUS / "*.jsonl"))):
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                text = json.loads(line)["text"]
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        for line in SFT_DATA.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            text = "\n".join(record[k] for k in ("instruction", "input", "output") if record[k])
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    train_tokenizer(corpus, root / "tok", vocab_size=task["vocab_size"], progress=False)
    hidden = task["hidden_size"]
    config = init_model_dir(
        root / "model",
        "tiny",
        tokenizer_dir=root / "tok",
        seed=SEED,
        hidden_size=hidden,
        intermediate_size=swiglu_intermediate_size(hidden),
        num_hidden_layers=task["num_layers"],
        num_attention_heads=task["num_heads"],
        max_position_embeddings=max(512, task["max_length"]),
        norm_head=False,
    )
    template = get_template(TEMPLATE, load_tokenizer(root / "model"))
    stats = SFTDataStats()
    source = DataSource(path=str(SFT_DATA))
    conversations = mix([source], [read_source(source, stats)], seed=SEED)
    encoded = encode_fitting(
        template, conversations, task["max_length"], mask_history=False, stats=stats
    )
    samples = [e for _, e in encoded]
    lengths = np.array([len(s.input_ids) for s in samples])
    per_epoch = {}
    for packing in (True, False):
        rows = to_rows(samples, task["max_length"], packing=packing, shuffle=False, seed=SEED)
        batch = task["micro_batch"]
        per_epoch["packed" if packing else "unpacked"] = {
            "rows": len(rows),
            "micro_batches": -(-len(rows) // batch),
            "padding_tokens": padding_tokens(rows, batch),
        }
    del torch
    return {
        "params": parameter_count(config),
        "vocab_size": config.vocab_size,
        "intermediate_size": config.intermediate_size,
        "conversations": len(samples),
        "tokens": int(lengths.sum()),
        "trained_tokens": int(sum(sum(label != -100 for label in s.labels[1:]) for s in samples)),
        "length_mean": float(lengths.mean()),
        "length_max": int(lengths.max()),
        "per_epoch": per_epoch,
    }


def chuan_worker(task: dict) -> dict:
    """`chuan.align.sft.sft()`; tokens/s from its own metrics.jsonl."""
    from chuan.align.sft import sft
    from chuan.align.sft_config import SFTConfig
    from chuan.config import from_dict
    from chuan.train import data as train_data
    from chuan.train import loop
    from chuan.train.metrics import read_metrics

    root = Path(task["dir"])
    run_dir = root / f"run-{task['finetune']}-chuan-{int(task['packing'])}"
    memory = TrainingMemory()
    batches: list[tuple[int, int]] = []  # (positions, real tokens) per trained micro-batch

    run_stage, save_checkpoint, batch = (
        loop.Trainer._run_stage,
        loop.save_checkpoint,
        train_data.PackedRows.batch,
    )

    def timed_stage(self, *args, **kwargs):
        memory.begin()
        return run_stage(self, *args, **kwargs)

    def first_checkpoint(*args, **kwargs):  # after the last step of the (only) stage
        memory.end()
        return save_checkpoint(*args, **kwargs)

    def counted_batch(self, samples):
        out = batch(self, samples)
        batches.append((out.input_ids.numel(), out.num_tokens))
        return out

    loop.Trainer._run_stage = timed_stage
    loop.save_checkpoint = first_checkpoint
    train_data.PackedRows.batch = counted_batch
    steps = task["warmup"] + task["steps"]
    config = {
        "out": str(run_dir),
        "model": str(root / "model"),
        "template": TEMPLATE,
        "seed": SEED,
        "finetune": task["finetune"],
        "lora": {
            "r": task["lora_r"],
            "alpha": task["lora_alpha"],
            "dropout": task["lora_dropout"],
            "targets": task["lora_targets"],
        },
        "max_length": task["max_length"],
        "packing": task["packing"],
        "micro_batch_size": task["micro_batch"],
        "grad_accum": task["grad_accum"],
        "precision": "fp32",
        "device": "cpu",
        "optim": {
            "lr": task["lr"],
            "warmup_steps": 0,
            "schedule": "constant",
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
            "grad_clip": GRAD_CLIP,
        },
        "eval": {"holdout": 0},
        "samples": {"prompts": 0},
        "checkpoint": {"every": steps + 1, "keep": 1},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [
            {"data": [{"path": str(SFT_DATA)}], "steps": steps, "shuffle": False},
        ],
    }
    before = cpu_snapshot()
    start = time.perf_counter()
    sft(from_dict(SFTConfig, config))
    others = others_cpu_share(before, time.perf_counter() - start)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "tokens_per_s" in r]
    report = json.loads((run_dir / "report.json").read_text())
    shutil.rmtree(run_dir)
    timed = records[task["warmup"] :]
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    per_step = task["grad_accum"]
    timed_batches = batches[task["warmup"] * per_step : steps * per_step]
    return {
        "tokens_per_s": tokens / seconds,
        "timed_tokens": tokens,
        "timed_seconds": seconds,
        "timed_positions": sum(p for p, _ in timed_batches),
        "timed_padding": sum(p - t for p, t in timed_batches),
        "trainable": report["trainable_parameters"],
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "others_cpu": others,
        **memory.as_dict(),
        "lifetime_peak_mib": lifetime_peak() / MIB,
    }


def trl_conversations(task: dict) -> list[dict]:
    """The translation set in chuan's order (`mix` with the run's seed), as TRL's
    conversational format."""
    from chuan.align.sft_config import DataSource
    from chuan.align.sft_data import SFTDataStats, mix, read_source

    source = DataSource(path=str(SFT_DATA))
    conversations = mix([source], [read_source(source, SFTDataStats())], seed=SEED)
    out = []
    for c in conversations:
        messages = [{"role": "system", "content": c.system}] if c.system else []
        messages += [{"role": role, "content": text} for role, text in c.messages]
        out.append({"messages": messages})
    return out


def check_tokenization(trainer, template, task: dict) -> int:
    """Conversations whose TRL ids or labels differ from chuan's (unpacked runs only)."""
    from chuan.align.sft_config import DataSource
    from chuan.align.sft_data import SFTDataStats, encode_fitting, mix, read_source

    source = DataSource(path=str(SFT_DATA))
    conversations = mix([source], [read_source(source, SFTDataStats())], seed=SEED)
    chuan_side = encode_fitting(
        template, conversations, task["max_length"], mask_history=False, stats=SFTDataStats()
    )
    data = trainer.train_dataset
    if len(data) != len(chuan_side):
        return abs(len(data) - len(chuan_side)) + len(data)
    differ = 0
    for row, (_, sample) in zip(data, chuan_side, strict=True):
        # chuan's rows never label the first token of a segment; neither is it predicted.
        if row["input_ids"] != sample.input_ids or row["labels"][1:] != sample.labels[1:]:
            differ += 1
    return differ


def packing_cross_talk(trainer, model) -> dict:
    """TRL's first padding-free batch scored as TRL feeds it (one flattened row, position
    ids restarting per sample) and with every sample alone: the difference is what the
    model's attention across sample boundaries changes."""
    import torch

    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    starts = (positions[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    was_training = model.training
    model.eval()  # no LoRA dropout: the two scorings must differ only by the attention
    with torch.no_grad():
        flat = model(input_ids=ids, labels=labels, position_ids=positions, use_cache=False)
        alone_sum, count = 0.0, 0
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            out = model(input_ids=ids[:, a:b], labels=labels[:, a:b], use_cache=False)
            n = int((labels[:, a + 1 : b] != -100).sum())
            alone_sum += float(out.loss) * n
            count += n
    model.train(was_training)
    return {
        "flattened_loss": float(flat.loss),
        "per_sample_loss": alone_sum / max(count, 1),
        "samples_in_batch": len(starts) - 1,
        "flattened_row": int(ids.shape[1]),
    }


def step_clock(memory: TrainingMemory, micro: list, steps: int):
    """A transformers `TrainerCallback`: wall time at the start of training and at the end of
    every optimizer step, how many micro-batches were trained by then, the logged losses; it
    closes the memory window at step `steps`."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.stamps, self.micro_done, self.losses = [], [], []

        def on_train_begin(self, args, state, control, **kwargs):
            memory.begin()
            self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())
            self.micro_done.append(len(micro))
            if state.global_step == steps:
                memory.end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    return StepClock()


def trl_training_args(task: dict, steps: int, output_dir: str) -> dict:
    """The TRL trainer settings both TRL benchmarks share, matched to chuan's run."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": task["micro_batch"],
        "gradient_accumulation_steps": task["grad_accum"],
        "max_steps": steps,
        "learning_rate": task["lr"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": WEIGHT_DECAY,
        "adam_beta1": BETAS[0],
        "adam_beta2": BETAS[1],
        "adam_epsilon": EPS,
        "max_grad_norm": GRAD_CLIP,
        "max_length": task["max_length"],
        "gradient_checkpointing": False,
        "bf16": False,
        "train_sampling_strategy": "sequential",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "seed": SEED,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def trl_worker(task: dict) -> dict:
    """TRL's `SFTTrainer` on the chuan model object (LoRA through `peft_config`)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    import chuan  # noqa: F401  (registers chuan's classes with the Auto classes)
    from chuan.tokenizer.chat_templates import get_template
    from chuan.tokenizer.hf import load_tokenizer

    root = Path(task["dir"])
    tokenizer = load_tokenizer(root / "model")
    template = get_template(TEMPLATE, tokenizer)
    tokenizer.chat_template = template.jinja()
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    dataset = Dataset.from_list(trl_conversations(task))
    steps = task["warmup"] + task["steps"]
    peft_config = None
    if task["finetune"] == "lora":
        from peft import LoraConfig

        targets = task["lora_targets"]
        peft_config = LoraConfig(
            r=task["lora_r"],
            lora_alpha=task["lora_alpha"],
            lora_dropout=task["lora_dropout"],
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )
    memory = TrainingMemory()
    micro: list[tuple[int, int]] = []  # (positions, real tokens) per trained micro-batch

    class CountingSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if self.model.training:
                if "attention_mask" in inputs:
                    real = int(inputs["attention_mask"].sum())
                else:  # padding-free: one flattened row without padding
                    real = int(inputs["position_ids"].shape[1])
                micro.append((int(inputs["input_ids"].numel()), real))
            return super().compute_loss(model, inputs, *args, **kwargs)

    clock = step_clock(memory, micro, steps)
    with tempfile.TemporaryDirectory(dir=root) as output_dir:
        args = SFTConfig(
            **trl_training_args(task, steps, output_dir),
            packing=task["packing"],
            assistant_only_loss=True,
        )
        trainer = CountingSFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock],
        )
        extra = {}
        if task["packing"]:
            extra["cross_talk"] = packing_cross_talk(trainer, trainer.model)
        else:
            extra["tokenization_mismatches"] = check_tokenization(trainer, template, task)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        before = cpu_snapshot()
        trainer.train()
        others = others_cpu_share(before, clock.stamps[-1] - clock.stamps[0])
    memory.end()
    warm = task["warmup"]
    start_micro = clock.micro_done[warm - 1] if warm else 0
    timed = micro[start_micro : clock.micro_done[-1]]
    seconds = clock.stamps[-1] - clock.stamps[warm]
    tokens = sum(t for _, t in timed)
    return {
        "tokens_per_s": tokens / seconds,
        "timed_tokens": tokens,
        "timed_seconds": seconds,
        "timed_positions": sum(p for p, _ in timed),
        "timed_padding": sum(p - t for p, t in timed),
        "trainable": trainable,
        "first_loss": clock.losses[0],
        "last_loss": clock.losses[-1],
        "others_cpu": others,
        **memory.as_dict(),
        "lifetime_peak_mib": lifetime_peak() / MIB,
        **extra,
    }


WORKERS = {"prepare": prepare_worker, "chuan": chuan_worker, "trl": trl_worker}


def worker_main(task: dict) -> None:
    """Entry point of a subprocess: run one task, print its result as the last stdout line."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(task["threads"])
    result = WORKERS[task["kind"]](task)
    sys.stdout.flush()
    print("\n" + json.dumps(result))


# --- orchestration (parent process, no torch) -----------------------------------------------


def run_worker(task: dict, label: str) -> dict:
    """Run `task` in a fresh interpreter; a failure becomes a row with its error."""
    print(f"running {label} ...", end=" ", file=sys.stderr, flush=True)
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(f"{wall:.0f} s", file=sys.stderr, flush=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        return {"error": f"exit {done.returncode}: {reason[:200]}", "wall_s": wall}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}


def trl_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return None


def add_ratios(results: dict) -> None:
    """Every row against TRL's default (no packing) run of the same fine-tune."""
    for finetune in ("full", "lora"):
        rows = results[finetune]
        base = rows.get("TRL default (no packing)", {})
        if "error" in base or not base:
            continue
        for row in rows.values():
            if "error" not in row:
                row["speed_vs_trl"] = row["tokens_per_s"] / base["tokens_per_s"]
                row["memory_vs_trl"] = row["peak_rss_mib"] / base["peak_rss_mib"]
                row["delta_vs_trl"] = row["delta_mib"] / max(base["delta_mib"], 1e-9)


def fmt_ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}×" if key in row else "n/a"


def print_tables(results: dict, data: dict, args: argparse.Namespace) -> None:
    steps = f"{args.steps} timed optimizer steps after {args.warmup} warm-up"
    print(
        f"\n## Throughput and memory (fp32, {args.threads} threads; micro-batch "
        f"{args.micro_batch} × grad accum {args.grad_accum}, max length {args.max_length}; "
        f"{steps}; ratios against TRL default)\n"
    )
    headers = [
        "fine-tune",
        "runner",
        "tokens/s",
        "vs TRL",
        "padding (timed)",
        "peak RSS MiB",
        "vs TRL",
        "Δ over loaded MiB",
        "vs TRL",
        "others' CPU",
        "loss first → last",
    ]
    table = []
    for finetune in ("full", "lora"):
        for index, (label, row) in enumerate(results[finetune].items()):
            name = (
                ""
                if index
                else (
                    "full"
                    if finetune == "full"
                    else f"LoRA r{args.lora_r} {'+'.join(args.lora_targets)}"
                )
            )
            if "error" in row:
                table.append([name, label, row["error"], *[""] * 8])
                continue
            share = row["timed_padding"] / max(row["timed_positions"], 1)
            table.append(
                [
                    name,
                    label,
                    f"{row['tokens_per_s']:,.0f}",
                    fmt_ratio(row, "speed_vs_trl"),
                    f"{row['timed_padding']:,} ({share:.1%})",
                    f"{row['peak_rss_mib']:,.0f}",
                    fmt_ratio(row, "memory_vs_trl"),
                    f"{row['delta_mib']:,.0f}",
                    fmt_ratio(row, "delta_vs_trl"),
                    f"{row['others_cpu']:.0%}",
                    f"{row['first_loss']:.4f} → {row['last_loss']:.4f}",
                ]
            )
    print(markdown_table(headers, table))

    print(f"\n## Padding tokens per epoch (chuan rows, micro-batches of {args.micro_batch})\n")
    epoch = data["per_epoch"]
    pad_rows = []
    for key in ("unpacked", "packed"):
        e = epoch[key]
        positions = data["tokens"] + e["padding_tokens"]
        pad_rows.append(
            [
                key,
                f"{e['rows']:,}",
                f"{e['micro_batches']:,}",
                f"{e['padding_tokens']:,}",
                f"{e['padding_tokens'] / positions:.1%}",
            ]
        )
    print(
        markdown_table(
            ["chuan rows", "rows", "micro-batches", "padding tokens", "of positions"], pad_rows
        )
    )
    fewer = epoch["unpacked"]["padding_tokens"] / max(epoch["packed"]["padding_tokens"], 1)
    verdict = "met" if fewer >= PADDING_GOAL else "NOT met"
    print(
        f"\nPacking leaves {fewer:,.1f}× fewer padding tokens per epoch "
        f"(goal ≥ {PADDING_GOAL:.0f}×: {verdict}). TRL default pads exactly as chuan unpacked "
        "(same order, same micro-batches); TRL packed is padding-free."
    )
    print_goals(results)
    print_notes(results)


def print_goals(results: dict) -> None:
    print()
    for finetune in ("full", "lora"):
        rows = results[finetune]
        for label in ("chuan packed", "chuan unpacked"):
            row = rows.get(label, {})
            if "speed_vs_trl" not in row:
                continue
            fast = "met" if row["speed_vs_trl"] >= SPEED_GOAL else "NOT met"
            lean = "met" if row["memory_vs_trl"] <= MEMORY_GOAL else "NOT met"
            print(
                f"- {finetune}, {label} vs TRL default: tokens/s {row['speed_vs_trl']:.2f}× "
                f"(goal ≥ {SPEED_GOAL}×: {fast}); peak RSS {row['memory_vs_trl']:.2f}× "
                f"(goal ≤ {MEMORY_GOAL}×: {lean}); Δ over loaded {row['delta_vs_trl']:.2f}×"
            )
        packed = rows.get("chuan packed", {})
        trl_packed = rows.get("TRL packed (padding-free)", {})
        if "error" not in packed and trl_packed and "error" not in trl_packed:
            print(
                f"- {finetune}, chuan packed vs TRL packed: tokens/s "
                f"{packed['tokens_per_s'] / trl_packed['tokens_per_s']:.2f}×, peak RSS "
                f"{packed['peak_rss_mib'] / trl_packed['peak_rss_mib']:.2f}×"
            )


def print_notes(results: dict) -> None:
    print()
    for finetune in ("full", "lora"):
        rows = results[finetune]
        chuan = rows.get("chuan unpacked", {})
        trl = rows.get("TRL default (no packing)", {})
        if "error" not in chuan and "error" not in trl and chuan and trl:
            print(
                f"- {finetune}: first-step loss chuan unpacked {chuan['first_loss']:.6f}, TRL "
                f"default {trl['first_loss']:.6f} (same batches); TRL's tokenized dataset "
                f"differs from chuan's ids/labels in {trl['tokenization_mismatches']} "
                "conversations"
            )
        packed = rows.get("TRL packed (padding-free)", {})
        if "cross_talk" in packed:
            c = packed["cross_talk"]
            print(
                f"- {finetune}: TRL packed feeds {c['samples_in_batch']} samples as one "
                f"{c['flattened_row']}-token row; chuan's attention reads no position-id "
                f"resets, so they attend across boundaries: loss {c['flattened_loss']:.4f} "
                f"as fed vs {c['per_sample_loss']:.4f} with each sample alone (before training)"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `chuan sft` against TRL's SFTTrainer (tokens/s, peak RSS, "
        "padding), full fine-tune and LoRA; prints markdown tables.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small model, few steps")
    parser.add_argument("--json", metavar="PATH", help="also write all results to PATH")
    parser.add_argument("--steps", type=int, default=24, help="timed optimizer steps (24)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (2)")
    parser.add_argument("--micro-batch", type=int, default=4, help="micro-batch size (4)")
    parser.add_argument("--grad-accum", type=int, default=2, help="gradient accumulation (2)")
    parser.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="max length (256: the longest conversation of the set is 105 tokens)",
    )
    parser.add_argument("--hidden-size", type=int, default=256, help="model width (256)")
    parser.add_argument("--layers", type=int, default=8, help="blocks (8)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (8)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="tokenizer size (8000)")
    parser.add_argument("--lr", type=float, default=2e-5, help="full fine-tune LR (2e-5)")
    parser.add_argument("--lora-lr", type=float, default=2e-4, help="LoRA LR (2e-4)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (8)")
    parser.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (16)")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (0.05)")
    parser.add_argument(
        "--lora-targets",
        nargs="+",
        default=["all-linear"],
        help="LoRA target modules, e.g. all-linear (default) or W_pack",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("full", "lora"),
        default=["full", "lora"],
        help="which fine-tunes to run",
    )
    parser.add_argument(
        "--threads", type=int, default=CORES, help=f"torch threads per worker ({CORES})"
    )
    parser.add_argument("--workdir", help="where the temporary files go (default: system temp)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
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
        worker_main(json.loads(args.worker))
        return
    trl = trl_version()
    if trl is None:
        sys.exit(
            "bench_sft.py compares against TRL, which is not installed: "
            "pip install -e '.[bench]' (or pip install trl)"
        )
    started = time.perf_counter()
    env = environment(args)
    from importlib.metadata import version

    env["trl"], env["peft"] = trl, version("peft")
    print("# chuan sft benchmark\n")
    print(
        f"- torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}, "
        f"peft {env['peft']}, Python {env['python']}"
    )
    print(f"- CPU: {env['cpu']}, {env['cores']} cores (torch threads = {args.threads})")
    common = {
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "micro_batch": args.micro_batch,
        "grad_accum": args.grad_accum,
        "max_length": args.max_length,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "lora_targets": args.lora_targets,
    }
    results: dict = {"full": {}, "lora": {}}
    with tempfile.TemporaryDirectory(prefix="bench_sft-", dir=args.workdir) as work:
        common["dir"] = work
        data = run_worker(
            {
                **common,
                "kind": "prepare",
                "vocab_size": args.vocab_size,
                "hidden_size": args.hidden_size,
                "num_layers": args.layers,
                "num_heads": args.heads,
            },
            "prepare",
        )
        if "error" in data:
            sys.exit(f"preparing failed: {data['error']}")
        print(
            f"- model: {data['params'] / 1e6:.1f} M parameters (h{args.hidden_size} "
            f"L{args.layers} F{data['intermediate_size']} V{data['vocab_size']:,}, plain head); "
            f"data: {data['conversations']:,} conversations, {data['tokens']:,} tokens "
            f"(mean {data['length_mean']:.1f}, max {data['length_max']}), "
            f"{data['trained_tokens']:,} trained"
        )
        for finetune, runner, packing in RUNS:
            if finetune not in args.only:
                continue
            lr = args.lr if finetune == "full" else args.lora_lr
            task = {**common, "kind": runner, "finetune": finetune, "packing": packing, "lr": lr}
            label = run_label(runner, packing)
            results[finetune][label] = run_worker(task, f"{finetune} {label}")
    add_ratios(results)
    print_tables(results, data, args)
    wall = time.perf_counter() - started
    print(f"\nTotal wall time: {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "environment": env,
                    "args": vars(args),
                    "data": data,
                    "results": results,
                    "wall_seconds": wall,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
