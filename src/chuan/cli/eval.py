"""`chuan eval`: the evaluation verbs, each registered by its own module."""

from __future__ import annotations

import argparse

from chuan.cli import eval_mcq, eval_ppl


def register(verbs: argparse._SubParsersAction) -> None:
    group = verbs.add_parser(
        "eval",
        help="evaluate a model dir: MMLU / CMMLU / C-Eval, perplexity, lm-evaluation-harness",
    )
    actions = group.add_subparsers(dest="eval_verb", required=True, metavar="ACTION")
    eval_mcq.register(actions)
    eval_ppl.register(actions)
