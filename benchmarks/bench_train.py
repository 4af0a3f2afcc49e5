"""Training throughput and peak memory of `chuan pretrain` against transformers' LLaMA.

Three runners (four rows per shape) train the same model on the same rows, side by side:

- **chuan**: `chuan.train.loop.pretrain`, the engine itself, as configured by default, and again
  with `activation_checkpointing: true` (**chuan+ac**);
- **hf-loop**: transformers' `LlamaForCausalLM` in a plain PyTorch loop (`model(ids,
  labels=ids)`, backward, gradient clipping, `torch.optim.AdamW`);
- **hf-trainer**: the same model trained by `transformers.Trainer`.

Fairness: one prepare step writes a synthetic packed dataset (random token ids, one document per
row) and a chuan model dir with `norm_head: false`, then converts that dir to the LLaMA layout
with `chuan.model.convert`, so every runner starts from the *same weights* and reads the same
rows in the same order (the first-step losses printed in the table must agree). All runners use
fp32 on the CPU, the same micro-batch and sequence length, AdamW (0.9, 0.95), eps 1e-8, weight
decay 0.1 on matrices only, clipping at 0.5 and a constant learning rate. chuan keeps its
default max-z loss (2e-4), work the LLaMA runners do not do.

Every runner runs in its own fresh process, so its peak resident memory,
`getrusage(RUSAGE_SELF).ru_maxrss`, covers that runner alone (imports, model, optimizer, steps;
for chuan also its end-of-run checkpoint). Linux carries a parent's peak RSS into an exec'd
child's `ru_maxrss`, so this parent process never imports torch (see `bench_model.py`).
Throughput excludes the first `--warmup` steps; MFU is tokens/s x
`training_flops_per_token` / this CPU's fp32 matmul peak, measured by
`chuan.train.metrics.measure_matmul_peak` before each shape's runners (the highest counts).

    PYTHONPATH=src python benchmarks/bench_train.py --json train.json   # full run, ~12 min
    PYTHONPATH=src python benchmarks/bench_train.py --quick             # smoke run, < 1 minute
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
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_model import (
    BAICHUAN2_VOCAB_SIZE,
    CORES,
    MIB,
    cpu_snapshot,
    environment,
    markdown_table,
    others_cpu_share,
    peak_bytes,
)

RUNNERS = ("chuan", "chuan+ac", "hf-loop", "hf-trainer")
HF_RUNNERS = ("hf-loop", "hf-trainer")
# Goals from the issue: never slower than the best transformers runner, and at most this
# fraction of its peak memory at Baichuan 2's vocabulary.
MEMORY_GOAL = 0.6
SEED = 1234
LR = 3e-4
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
GRAD_CLIP = 0.5


@dataclass(frozen=True)
class Shape:
    """One benchmarked model and its batch; the FFN width follows chuan's SwiGLU rule."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    batch: int
    seq_len: int


SHAPES = {
    "full": (
        Shape("~10M", 256, 8, 8, 8192, 8, 512),
        Shape("~100M", 768, 12, 12, 32000, 4, 512),
        Shape("~100M, vocab 125,696", 768, 12, 12, BAICHUAN2_VOCAB_SIZE, 4, 512),
    ),
    # One shape: every worker pays ~7 s of imports on a small shared CPU.
    "quick": (Shape("tiny, vocab 125,696", 64, 2, 2, BAICHUAN2_VOCAB_SIZE, 2, 64),),
}


# --- workers (each in its own subprocess) -------------------------------------------------


def model_config(shape: dict):
    """The chuan config of `shape`: a plain linear head, so LLaMA computes the same function."""
    from chuan.model import preset_config, swiglu_intermediate_size

    return preset_config(
        "tiny",
        hidden_size=shape["hidden_size"],
        intermediate_size=swiglu_intermediate_size(shape["hidden_size"]),
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        vocab_size=shape["vocab_size"],
        max_position_embeddings=shape["seq_len"],
        norm_head=False,
        use_cache=False,
    )


def prepare_worker(task: dict) -> dict:
    """Write the rows, the chuan model dir and its LLaMA conversion; return the model's size
    and this CPU's fp32 matmul FLOP/s right now (the denominator of MFU)."""
    import numpy as np
    import torch
    from datasets import Dataset

    from chuan.model import BaichuanForCausalLM
    from chuan.model.convert import convert
    from chuan.model.presets import parameter_count, training_flops_per_token
    from chuan.train.metrics import measure_matmul_peak

    shape, root = task["shape"], Path(task["dir"])
    rows, length = task["rows"], shape["seq_len"]
    ids = np.random.default_rng(SEED).integers(shape["vocab_size"], size=(rows, length))
    Dataset.from_dict(
        {
            "input_ids": ids.astype(np.int32).tolist(),
            "segment_ids": np.ones((rows, length), np.int32).tolist(),
            "loss_mask": np.ones((rows, length), np.int8).tolist(),
            "category": ["x"] * rows,
            "bucket": [0] * rows,
        }
    ).save_to_disk(str(root / "data"))
    config = model_config(shape)
    torch.manual_seed(SEED)
    BaichuanForCausalLM(config).save_pretrained(root / "chuan-model")
    convert(root / "chuan-model", root / "llama-model", to="llama")
    return {
        "params": parameter_count(config),
        "flops_per_token": training_flops_per_token(config, length),
        "intermediate_size": config.intermediate_size,
        "peak_flops": measure_matmul_peak(torch.device("cpu"), torch.float32),
    }


def chuan_worker(task: dict) -> dict:
    """`pretrain()` on the prepared rows; throughput from its own metrics.jsonl.

    Each record's `tokens_per_s` is the tokens of one step over the wall time since the
    previous record (batch assembly, forward, backward, clipping, the update, logging), so the
    rate of the timed steps is their tokens over the sum of their times. Timing pretrain() from
    outside would add model loading and the end-of-run checkpoint, which no HF runner does.
    """
    from chuan.config import from_dict
    from chuan.train.config import PretrainConfig
    from chuan.train.loop import pretrain
    from chuan.train.metrics import read_metrics

    root = Path(task["dir"])
    run_dir = root / f"run-{task['kind']}"
    config = {
        "out": str(run_dir),
        "model": str(root / "chuan-model"),
        "seed": SEED,
        "micro_batch_size": task["shape"]["batch"],
        "precision": "fp32",
        "device": "cpu",
        "activation_checkpointing": task["kind"] == "chuan+ac",
        "peak_flops": task["peak_flops"],
        "optim": {
            "lr": LR,
            "warmup_steps": 0,
            "schedule": "constant",
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
            "grad_clip": GRAD_CLIP,
        },
        "checkpoint": {"every": task["steps"] + 1, "keep": 1},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [{"data": [str(root / "data")], "steps": task["steps"], "shuffle": False}],
    }
    before = cpu_snapshot()
    start = time.perf_counter()
    pretrain(from_dict(PretrainConfig, config))
    others = others_cpu_share(before, time.perf_counter() - start)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "tokens_per_s" in r]
    shutil.rmtree(run_dir)  # checkpoints of the larger shapes take gigabytes
    timed = records[task["warmup"] :]
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    return runner_result(
        tokens_per_s=sum(r["tokens"] for r in timed) / seconds,
        others_cpu=others,
        losses=[r["loss"] for r in records],
    )


def runner_result(*, tokens_per_s: float, others_cpu: float, losses: list[float]) -> dict:
    """What every runner reports; the peak RSS is read last, at the end of the run."""
    return {
        "tokens_per_s": tokens_per_s,
        "peak_rss_mib": peak_bytes("cpu") / MIB,
        "others_cpu": others_cpu,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def load_rows(task: dict):
    """The prepared rows as one `[rows, seq_len]` int64 tensor, in stored order."""
    from datasets import load_from_disk

    data = load_from_disk(str(Path(task["dir"]) / "data")).with_format("torch")
    return data[:]["input_ids"].long()


def load_llama(task: dict):
    """The prepared weights as transformers' `LlamaForCausalLM` (SDPA attention), fp32."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    model = LlamaForCausalLM.from_pretrained(Path(task["dir"]) / "llama-model", dtype=torch.float32)
    return model.train()


def decay_groups(model) -> list[dict]:
    """Weight decay on matrices only, the split chuan and `Trainer` both use."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def rate_after_warmup(stamps: list[float], task: dict) -> float:
    """Tokens/s between the end of the last warm-up step and the end of the run.

    `stamps[0]` is the start, `stamps[k]` the end of step k."""
    tokens = (len(stamps) - 1 - task["warmup"]) * task["shape"]["batch"] * task["shape"]["seq_len"]
    return tokens / (stamps[-1] - stamps[task["warmup"]])


def hf_loop_worker(task: dict) -> dict:
    """The loop a PyTorch user writes around `LlamaForCausalLM`."""
    import torch

    ids, model = load_rows(task), load_llama(task)
    optimizer = torch.optim.AdamW(decay_groups(model), lr=LR, betas=BETAS, eps=EPS)
    batch = task["shape"]["batch"]
    losses = []
    before = cpu_snapshot()
    stamps = [time.perf_counter()]
    for step in range(task["steps"]):
        rows = ids[step * batch : (step + 1) * batch]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        stamps.append(time.perf_counter())
    return runner_result(
        tokens_per_s=rate_after_warmup(stamps, task),
        others_cpu=others_cpu_share(before, stamps[-1] - stamps[0]),
        losses=losses,
    )


def hf_trainer_worker(task: dict) -> dict:
    """`transformers.Trainer` with its defaults where the shared settings leave it free
    (notably its default optimizer, `adamw_torch_fused`); timed by a callback."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    ids, model = load_rows(task), load_llama(task)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, index: int) -> dict:
            return {"input_ids": ids[index], "labels": ids[index]}

    class Clock(TrainerCallback):
        """End time of every optimizer step, and the loss logged after it."""

        def __init__(self):
            self.stamps, self.losses = [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    clock = Clock()
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=task["shape"]["batch"],
            max_steps=task["steps"],
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=WEIGHT_DECAY,
            adam_beta1=BETAS[0],
            adam_beta2=BETAS[1],
            adam_epsilon=EPS,
            max_grad_norm=GRAD_CLIP,
            train_sampling_strategy="sequential",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            seed=SEED,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[clock])
        before = cpu_snapshot()
        output = trainer.train()
    return {
        **runner_result(
            tokens_per_s=rate_after_warmup(clock.stamps, task),
            others_cpu=others_cpu_share(before, clock.stamps[-1] - clock.stamps[0]),
            losses=clock.losses,
        ),
        "train_samples_per_second": output.metrics["train_samples_per_second"],
        "optimizer": args.optim.value,
    }


WORKERS = {
    "prepare": prepare_worker,
    "chuan": chuan_worker,
    "chuan+ac": chuan_worker,
    "hf-loop": hf_loop_worker,
    "hf-trainer": hf_trainer_worker,
}


def worker_main(task: dict) -> None:
    """Entry point of a subprocess: run one task, print its result as the last stdout line."""
    import torch

    torch.set_num_threads(task["threads"])
    print(json.dumps(WORKERS[task["kind"]](task)))


# --- orchestration (parent process, no torch) ----------------------------------------------


def run_worker(task: dict) -> dict:
    """Run `task` in a fresh interpreter; a failure (e.g. killed for memory) becomes a row."""
    label = " ".join(str(task[key]) for key in ("kind", "name") if key in task)
    print(f"running {label} ...", end=" ", file=sys.stderr, flush=True)
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"error": f"exit {done.returncode}: {reason[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_shape(shape: Shape, args: argparse.Namespace, root: Path) -> dict:
    """Prepare one shape, then run every runner on it; returns the shape's section."""
    steps = args.warmup + args.steps
    common = {"name": shape.name, "shape": asdict(shape), "threads": args.threads}
    common |= {"dir": str(root), "warmup": args.warmup, "steps": steps}
    model = run_worker({**common, "kind": "prepare", "rows": steps * shape.batch})
    if "error" in model:
        raise RuntimeError(f"preparing {shape.name} failed: {model['error']}")
    # chuan is given the peak so that it does not measure its own before training.
    rows = {
        runner: run_worker({**common, "kind": runner, "peak_flops": model["peak_flops"]})
        for runner in RUNNERS
    }
    shutil.rmtree(root)
    add_ratios(rows)
    return {"shape": asdict(shape), **model, "runners": rows}


def add_mfu(sections: list[dict]) -> float:
    """Model FLOPs utilisation of every runner against the highest matmul peak measured (on a
    shared CPU a measurement can only fall short); returns that peak."""
    peak_flops = max(section["peak_flops"] for section in sections)
    for section in sections:
        for row in section["runners"].values():
            if "error" not in row:
                row["mfu"] = row["tokens_per_s"] * section["flops_per_token"] / peak_flops
    return peak_flops


def add_ratios(rows: dict[str, dict]) -> None:
    """Speed and memory of every runner relative to the best transformers runner."""
    hf = [rows[name] for name in HF_RUNNERS if "error" not in rows[name]]
    if not hf:
        return
    fastest = max(row["tokens_per_s"] for row in hf)
    leanest = min(row["peak_rss_mib"] for row in hf)
    for row in rows.values():
        if "error" not in row:
            row["speed_vs_best_hf"] = row["tokens_per_s"] / fastest
            row["memory_vs_best_hf"] = row["peak_rss_mib"] / leanest


def print_table(sections: list[dict], args: argparse.Namespace, peak_flops: float) -> None:
    print(
        f"\n## Training throughput and peak memory (fp32, {args.threads} threads; "
        f"{args.steps} timed steps after {args.warmup} warm-up; MFU against "
        f"{peak_flops / 1e9:,.1f} GFLOP/s measured fp32 matmul peak)\n"
    )
    headers = [
        "model",
        "runner",
        "tokens/s",
        "vs best HF",
        "peak RSS MiB",
        "vs best HF",
        "MFU",
        "others' CPU",
        "loss first → last",
    ]
    table = []
    for section in sections:
        shape = section["shape"]
        model = (
            f"{shape['name']} ({section['params'] / 1e6:.1f} M params; h{shape['hidden_size']} "
            f"L{shape['num_hidden_layers']} F{section['intermediate_size']} "
            f"V{shape['vocab_size']:,}; "
            f"{shape['batch']}×{shape['seq_len']})"
        )
        for runner, row in section["runners"].items():
            label = model if runner == RUNNERS[0] else ""
            if "error" in row:
                table.append([label, runner, row["error"], *[""] * 6])
                continue
            table.append(
                [
                    label,
                    runner,
                    f"{row['tokens_per_s']:,.0f}",
                    ratio(row, "speed_vs_best_hf"),
                    f"{row['peak_rss_mib']:,.0f}",
                    ratio(row, "memory_vs_best_hf"),
                    f"{row['mfu']:.1%}",
                    f"{row['others_cpu']:.0%}",
                    f"{row['first_loss']:.4f} → {row['last_loss']:.4f}",
                ]
            )
    print(markdown_table(headers, table))
    print_goals(sections)


def ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}×" if key in row else "n/a"


def print_goals(sections: list[dict]) -> None:
    """The issue's two goals, checked against this run's numbers."""
    print()
    for section in sections:
        for runner in ("chuan", "chuan+ac"):
            row = section["runners"][runner]
            if "speed_vs_best_hf" not in row:
                continue
            fast = "met" if row["speed_vs_best_hf"] >= 1 else "NOT met"
            line = f"- {section['shape']['name']}, {runner}: speed ≥ best HF {fast}"
            if section["shape"]["vocab_size"] == BAICHUAN2_VOCAB_SIZE:
                lean = "met" if row["memory_vs_best_hf"] <= MEMORY_GOAL else "NOT met"
                line += f"; memory ≤ {MEMORY_GOAL}× best HF {lean}"
            print(line)


def write_json(path: str, results: dict) -> None:
    """Atomically; chuan (hence torch) is imported only now that every worker has run."""
    from chuan.fileio import write_atomic

    write_atomic(path, json.dumps(results, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark chuan's pretraining engine (tokens/s, peak RSS, MFU) against "
        "transformers' LlamaForCausalLM in a plain loop and in Trainer; prints a markdown table.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, few steps")
    parser.add_argument("--json", metavar="PATH", help="also write all results to PATH")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per runner (default 2)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed warm-up steps per runner (default 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=CORES,
        help=f"torch.set_num_threads in every worker (default {CORES}, the CPU cores)",
    )
    parser.add_argument(
        "--workdir", help="where the temporary data, models and runs go (default: system temp)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    args.device = "cpu"  # read by bench_model.environment
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    started = time.perf_counter()
    env = environment(args)
    print("# chuan pretraining benchmark\n")
    print(f"- torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}")
    print(f"- CPU: {env['cpu']}, {env['cores']} cores (torch threads = {args.threads})")
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench_train-", dir=args.workdir) as work:
        for index, shape in enumerate(SHAPES["quick" if args.quick else "full"]):
            sections.append(bench_shape(shape, args, Path(work) / f"shape{index}"))
    peak_flops = add_mfu(sections)
    print_table(sections, args, peak_flops)
    results = {"environment": env, "quick": args.quick, "peak_flops": peak_flops}
    results["shapes"] = sections
    results["wall_seconds"] = time.perf_counter() - started
    print(f"\nTotal wall time: {results['wall_seconds']:.0f} s")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
