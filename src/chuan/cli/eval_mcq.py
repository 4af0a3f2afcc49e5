"""`chuan eval mcq`: MMLU / CMMLU / C-Eval accuracy by first-token logits."""

from __future__ import annotations

import argparse
from pathlib import Path

from chuan.cli.options import add_device_arguments, int_at_least
from chuan.eval.prompts import PRESETS
from chuan.eval.subjects import TASKS


def _eval_mcq(args: argparse.Namespace) -> None:
    from chuan.eval.mcq import McqConfig, evaluate_mcq

    setup = McqConfig(
        task=args.task,
        data_dir=args.data,
        split=args.split,
        shots=args.shots,
        subjects=tuple(args.subjects) if args.subjects else None,
        preset=args.preset,
        chat=args.chat,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    evaluate_mcq(
        args.model,
        setup,
        device=args.device,
        dtype=args.dtype,
        json_out=args.json,
        progress=not args.quiet,
    )
    if args.json:
        print(f"wrote {args.json} and {Path(args.json).with_suffix('.md')}")


def register(actions: argparse._SubParsersAction) -> None:
    mcq = actions.add_parser(
        "mcq",
        help="MMLU / CMMLU / C-Eval accuracy by first-token logits",
        description="Score four-way multiple-choice benchmarks the way the Baichuan and "
        "Colossal-LLaMA-2 reports did: a few-shot prompt per question (a named preset "
        "reproducing a reference script), then the next-token logits of a raw forward pass, "
        "restricted to the four letters, whose tokens are found in context (A vs ▁A). Prints "
        "a table per category with micro and macro means (the preset's headline marked), "
        "C-Eval's Avg(Hard), and ColossalEval's max-over-{X, ▁X} reading beside it.",
        epilog="example: chuan eval mcq runs/model --task ceval --data shared/data/eval/ceval "
        "--split val --json ceval.json",
    )
    mcq.add_argument("model", metavar="MODEL", help="model dir (chuan, Baichuan or HF LLaMA)")
    mcq.add_argument("--task", required=True, choices=TASKS, help="the benchmark")
    mcq.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="benchmark root holding split folders (dev/, val/, test/) of per-subject CSV "
        "files; every published layout is read (header or none, letter or 0-based answers)",
    )
    mcq.add_argument(
        "--split",
        choices=("test", "val", "dev"),
        help="split to score (default: test if DIR has it, else val, else dev; "
        "C-Eval's test has no answers)",
    )
    mcq.add_argument(
        "--shots",
        type=int_at_least(0),
        default=5,
        help="few-shot demos from the same subject's dev split (default 5; on dev itself the "
        "asked question is left out of its demos)",
    )
    mcq.add_argument(
        "--subjects", nargs="+", metavar="SUBJECT", help="score only these subjects (file names)"
    )
    mcq.add_argument(
        "--preset",
        choices=PRESETS,
        help="prompt preset (default: hendrycks for MMLU, baichuan for C-Eval, cmmlu-official "
        "for CMMLU); hendrycks: MMLU only; baichuan: MMLU (= hendrycks) and C-Eval; "
        "cmmlu-official: CMMLU only; colossal-*: all three",
    )
    mcq.add_argument(
        "--chat",
        action="store_true",
        help="wrap each prompt in Baichuan 2's chat format (user id 195, assistant id 196; "
        "the tokenizer must have them as reserved pieces); the letter is the reply",
    )
    mcq.add_argument(
        "--batch-size", type=int_at_least(1), default=8, help="questions per forward (8)"
    )
    mcq.add_argument(
        "--max-length",
        type=int_at_least(2),
        default=2048,
        help="prompt tokens at most; demos are dropped by the preset's rule to fit (2048; "
        "lowered to the model's own context length)",
    )
    mcq.add_argument(
        "--json",
        metavar="OUT",
        help="write the result JSON to OUT and the markdown report beside it (OUT with .md)",
    )
    add_device_arguments(mcq)  # logits are read in fp32 whatever the weights' dtype
    mcq.add_argument("--quiet", action="store_true", help="no progress bars")
    mcq.set_defaults(func=_eval_mcq)
