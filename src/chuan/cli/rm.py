"""`chuan rm train` (reward models on preference pairs) and `chuan rm score`."""

from __future__ import annotations

import argparse
import json

from chuan.cli.options import add_recipe_arguments, int_at_least, print_run_result


def _train(args: argparse.Namespace) -> None:
    from chuan.align.pair_trainer import inspect_pairs
    from chuan.align.rm import rm
    from chuan.align.rm_config import load_rm_config

    cfg = load_rm_config(args.config, args.overrides)
    if args.inspect:
        print(inspect_pairs(cfg, args.inspect))
        return
    print_run_result(rm(cfg, resume=args.resume))


def _score(args: argparse.Namespace) -> None:
    from chuan.align.rm import score_file

    summary = score_file(
        args.model,
        args.data,
        args.out,
        format=args.format,
        batch_size=args.batch_size,
        max_length=args.max_length,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary, indent=2))


def register(verbs: argparse._SubParsersAction) -> None:
    group = verbs.add_parser(
        "rm",
        help="reward models: train one on preference pairs, score files with it",
        description="Reward models: the decoder with a scalar head read at the last real "
        "token, trained with the Bradley-Terry loss on chosen/rejected pairs.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a reward model on preference pairs",
        description="Train a reward model from a chat model (usually `chuan sft`'s OUT/model) "
        "on preference pairs (TRL-style prompt/chosen/rejected, alpaca with chosen/rejected, "
        "hh-rlhf transcripts, LLaMA-Factory sharegpt pairs, ColossalChat context/chosen/"
        "rejected; mixed by weight): a new one-output `score` head on the last real token, "
        "the Bradley-Terry loss -log sigmoid(r_c - r_r), with `margin: true` the records' "
        "margins subtracted inside it, `center_rewards` TRL's reward centring. Full, freeze or "
        "LoRA (the head trains whole) as in `chuan sft`, the same engine: stages, exact "
        "resume, torchrun. Logs the loss, mean scores, margins and accuracy; the held-out "
        "accuracy overall and by margin goes into report.md/json. Writes OUT/model/ (loads "
        "with AutoModelForSequenceClassification after `import chuan`; OUT/adapter/ for "
        "LoRA), metrics.jsonl, TensorBoard logs. See docs/rm.md.",
        epilog="example: chuan rm train --config configs/rm-tiny-cpu.yaml margin=true",
    )
    add_recipe_arguments(train)
    train.add_argument(
        "--inspect",
        type=int_at_least(1),
        metavar="N",
        help="print the first N pairs as the model sees them and exit without training",
    )
    train.set_defaults(func=_train)

    score = actions.add_parser(
        "score",
        help="score a preference or chat data file with a reward model",
        description="Score every record of DATA with the reward model MODEL (`chuan rm train`'s "
        "OUT/model): for a preference file both answers of each pair, with the accuracy "
        "(chosen above rejected); for a chat data file (alpaca, sharegpt, messages, colossal) "
        "the last answer of each conversation. Writes one JSON line per scored record to "
        "--out ({origin, chosen, rejected[, margin]} or {origin, score}) and the rejected "
        "records beside it (OUT.rejects.jsonl); prints a summary.",
        epilog="example: chuan rm score runs/tiny/rm/model pairs.jsonl --out scores.jsonl",
    )
    score.add_argument("model", help="the reward model dir")
    score.add_argument("data", help="a preference or chat data file (.jsonl, .json, .parquet)")
    score.add_argument("--out", required=True, help="the JSONL file of scores to write")
    score.add_argument(
        "--format",
        help="the data layout (a preference format: pairwise, alpaca, sharegpt, colossal, hh); "
        "detected when omitted, chat data files included",
    )
    score.add_argument(
        "--batch-size", type=int_at_least(1), default=8, help="rows per forward (default 8)"
    )
    score.add_argument(
        "--max-length",
        type=int_at_least(8),
        default=2048,
        help="tokens per row; longer records lose their oldest rounds (default 2048)",
    )
    score.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    score.set_defaults(func=_score)
