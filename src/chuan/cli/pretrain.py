"""`chuan pretrain`: pretrain or continue pretraining on packed data."""

from __future__ import annotations

import argparse
import signal
import sys


def _pretrain(args: argparse.Namespace) -> None:
    from chuan.train.config import load_pretrain_config
    from chuan.train.loop import pretrain

    result = pretrain(load_pretrain_config(args.config, args.overrides), resume=args.resume)
    if result.interrupted:
        # A checkpoint was saved; the exit code still says "stopped by a signal" (128 + its
        # number: 143 for SIGTERM, 130 for SIGINT), so a scheduler or script sees no success.
        print(
            f"interrupted at step {result.steps}; continue with the same command and --resume auto"
        )
        sys.exit(128 + (result.signal or signal.SIGTERM))
    held = "" if result.eval_loss is None else f", held-out loss {result.eval_loss:.4f}"
    print(
        f"trained {result.steps:,} steps on {result.tokens:,} tokens: loss {result.final_loss:.4f}"
        f"{held}; model in {result.model_dir}, report in {result.run_dir}/report.md"
    )


def register(verbs: argparse._SubParsersAction) -> None:
    pretrain = verbs.add_parser(
        "pretrain",
        help="pretrain or continue pretraining on packed data (stages, checkpoints, torchrun)",
        description="Train a Baichuan-architecture model on `chuan data pack` outputs, from a "
        "preset (from scratch) or any chuan / Baichuan / HF LLaMA model dir (continued "
        "pretraining), through the stages of a YAML recipe (see configs/ and docs/pretrain.md). "
        "Run it under `torchrun --nproc_per_node N` for DDP or FSDP2. Writes OUT/checkpoints/, "
        "OUT/model/, metrics.jsonl, TensorBoard logs, report.md/json and loss.png.",
        epilog="example: chuan pretrain --config configs/tiny-cpu.yaml optim.lr=1e-3 "
        "stages.0.steps=200 --resume auto",
    )
    pretrain.add_argument("--config", required=True, metavar="FILE.yaml", help="the recipe")
    pretrain.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of recipe fields, e.g. optim.lr=3e-4 stages.0.steps=100 out=runs/x",
    )
    pretrain.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT",
        help="continue from the newest complete checkpoint in `out` (auto) or from the given "
        "checkpoint dir; without it, `out` must not hold checkpoints",
    )
    pretrain.set_defaults(func=_pretrain)
