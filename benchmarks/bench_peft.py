"""The peft methods of `chuan sft` side by side: full, LoRA, DoRA, AdaLoRA, prefix, prompt,
P-Tuning and P-Tuning v2 on the same data, steps and base.

The base is a pretrained `tiny` model dir (`chuan quickstart --until pretrain` writes one to
runs/quickstart/pretrain/model); the data is the bundled translation SFT set with 40
conversations held out. Each method runs `chuan sft` in its own process (this script
re-invoked with `--worker`), so that its peak RSS (the kernel's VmHWM, ru_maxrss) is its own.
Columns: trainable parameters (report.json), tokens/s (trained tokens over the run's
metrics records after the first), peak RSS, the held-out answer loss at the end, and chrF
(sacrebleu) of greedy replies to the held-out prompts against the references.

    python benchmarks/bench_peft.py --base runs/quickstart/pretrain/model --steps 30
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "chuan" / "assets" / "sft"
# (label, finetune, overrides): learning rates that make each method learn in a few steps
RUNS = [
    ("full", "full", {"optim": {"lr": 1e-3}}),
    ("LoRA", "lora", {"optim": {"lr": 5e-3}}),
    ("DoRA", "lora", {"optim": {"lr": 5e-3}, "lora": {"use_dora": True}}),
    ("AdaLoRA", "adalora", {"optim": {"lr": 5e-2}}),
    ("Prefix", "prefix", {"optim": {"lr": 5e-3}}),
    ("Prompt", "prompt", {"optim": {"lr": 5e-2}}),
    ("P-Tuning", "ptuning", {"optim": {"lr": 5e-3}}),
    ("P-Tuning v2", "ptuning_v2", {"optim": {"lr": 2e-2}}),
]


def _worker(base: str, out: Path, finetune: str, overrides: dict, steps: int) -> dict:
    from sacrebleu.metrics import CHRF

    from chuan.align.sft import sft
    from chuan.align.sft_config import SFTConfig
    from chuan.config import from_dict

    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["all-linear"]}
    config = {
        "out": str(out),
        "model": base,
        "seed": 1,
        "finetune": finetune,
        "max_length": 128,
        "micro_batch_size": 8,
        "lora": lora | overrides.pop("lora", {}),
        "eval": {"holdout": 40},
        "samples": {"prompts": 16, "max_new_tokens": 48},
        "checkpoint": {"every": 10_000, "keep": 1},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [{"data": [{"path": str(ASSETS / "translate_zh_en.jsonl")}], "steps": steps}],
    } | overrides
    sft(from_dict(SFTConfig, config))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    records = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if '"tokens_per_s"' in line
    ][1:]
    rate = sum(r["tokens_per_s"] for r in records) / max(1, len(records))
    replies = report["replies"]
    chrf = CHRF().corpus_score([r["after"] for r in replies], [[r["reference"] for r in replies]])
    return {
        "trainable": report["trainable_parameters"],
        "tokens_per_s": rate,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval_loss": report["eval_loss"],
        "first_eval_loss": report["first_eval_loss"],
        "chrf": chrf.score,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a pretrained model dir")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="runs/bench_peft")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.worker is not None:
        label, finetune, overrides = RUNS[args.worker]
        result = _worker(args.base, out / finetune / label, finetune, overrides, args.steps)
        print("RESULT " + json.dumps(result))
        return
    rows = []
    for index, (label, _, _) in enumerate(RUNS):
        command = [sys.executable, __file__, "--base", args.base, "--steps", str(args.steps)]
        command += ["--out", str(out), "--worker", str(index)]
        lines = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(next(x for x in lines.splitlines() if x.startswith("RESULT "))[7:])
        rows.append((label, result))
        print(f"{label}: {result}", file=sys.stderr)
    print(f"\nheld-out answer loss of the base: {rows[0][1]['first_eval_loss']:.3f}\n")
    print("| method | trainable | tokens/s | peak RSS (MiB) | held-out loss | chrF |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(
            f"| {label} | {r['trainable']:,} | {r['tokens_per_s']:,.0f} | "
            f"{r['peak_rss_mib']:,.0f} | {r['eval_loss']:.3f} | {r['chrf']:.1f} |"
        )


if __name__ == "__main__":
    main()
