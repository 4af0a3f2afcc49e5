"""`chuan quickstart`: the whole flow on the bundled bilingual sample."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from chuan.cli.options import float_in, int_at_least


def _quickstart(args: argparse.Namespace) -> None:
    from chuan.quickstart import QuickstartConfig, run_quickstart

    options = QuickstartConfig(
        out=Path(args.out),
        minutes=args.minutes,
        fresh=args.fresh,
        until=args.until,
        max_docs=args.max_docs,
        steps=args.steps,
        seed=args.seed,
        progress=not args.quiet,
    )
    try:
        run_quickstart(options)
    except KeyboardInterrupt:
        print(
            "\nchuan quickstart: interrupted; finished stages and the last checkpoint are kept: "
            "run the same command again to continue where it stopped",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGINT)


def register(verbs: argparse._SubParsersAction) -> None:
    from chuan.quickstart import STAGES

    names = ", ".join(s.name for s in STAGES)
    parser = verbs.add_parser(
        "quickstart",
        help="run the whole flow on the bundled bilingual sample (minutes on a CPU)",
        description="Run every stage on the bundled sample (Bible chapters in English and "
        "Chinese, classical poetry, Botchan) with planted duplicates: "
        f"{names}. Each stage prints one line; OUT/report.md gathers the numbers, the plots "
        "and the commands that redo each stage by hand. Finished stages are kept: re-running "
        "continues where an interrupted run stopped (pretraining from its last checkpoint).",
    )
    parser.add_argument(
        "--out", default="runs/quickstart", help="output dir (default runs/quickstart)"
    )
    parser.add_argument(
        "--minutes",
        type=float_in(0, low_open=True),
        default=10.0,
        help="time budget of the whole run; pretraining gets what the other stages leave "
        "(default 10)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete OUT and start over")
    parser.add_argument("--until", metavar="STAGE", help=f"stop after this stage ({names})")
    parser.add_argument(
        "--max-docs",
        type=int_at_least(1),
        metavar="N",
        help="use the first N documents of each sample file (a faster, smaller run)",
    )
    parser.add_argument(
        "--steps",
        type=int_at_least(1),
        metavar="N",
        help="pretraining steps (default: from --minutes)",
    )
    parser.add_argument(
        "--seed", type=int_at_least(0), default=0, help="seed of the sampling (default 0)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_quickstart)
