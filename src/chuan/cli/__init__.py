"""The `chuan` command line: parse arguments, then call one library function per verb."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from chuan.errors import ChuanError

# Every verb group lives in its own module under `chuan.cli`, each with `register(verbs)`; they
# are registered in this order, which is the order of `chuan --help` (`model` registers `model`
# and `convert`, `generate` registers `generate` and `chat`).
VERB_MODULES = (
    "model",
    "data",
    "pretrain",
    "sft",
    "dpo",
    "rm",
    "rl",
    "tokenizer",
    "eval",
    "generate",
    "quantize",
    "quickstart",
    "scaling",
    "serve",
    "rag",
)


def build_parser() -> argparse.ArgumentParser:
    """The `chuan` parser: the root flags, then every verb group of VERB_MODULES."""
    parser = argparse.ArgumentParser(
        prog="chuan",
        description="Build bilingual Baichuan-style language models end to end.",
        epilog="Errors in input, settings or output dirs print one message and exit 1; "
        "an interrupt exits 130.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=bool(os.environ.get("CHUAN_DEBUG")),
        help="show the traceback of an error as well (also: CHUAN_DEBUG=1)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for name in VERB_MODULES:
        importlib.import_module(f"chuan.cli.{name}").register(verbs)
    _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Give every verb's namespace its full name (`command`, e.g. "chuan data clean") for
    messages."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(command=sub.prog)
                _name_commands(sub)


def main(argv: list[str] | None = None) -> None:
    """Run one verb. The one error path: a `ChuanError` (bad input, settings or output dir;
    its message says what to do) is printed without a traceback and exits 1; an interrupt
    exits 130 (128 + SIGINT); any other exception is a bug in chuan and shows its traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ChuanError as err:
        if args.debug:
            raise
        sys.exit(f"{args.command}: error: {err}")
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\n{args.command}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
