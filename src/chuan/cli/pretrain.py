"""`chuan pretrain`: pretrain or continue pretraining on packed data."""

from __future__ import annotations

import argparse

from chuan.cli.options import add_recipe_arguments, print_run_result


def _pretrain(args: argparse.Namespace) -> None:
    from chuan.train.config import load_pretrain_config
    from chuan.train.loop import pretrain

    print_run_result(
        pretrain(load_pretrain_config(args.config, args.overrides), resume=args.resume)
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
    add_recipe_arguments(pretrain)
    pretrain.set_defaults(func=_pretrain)
