"""Flags several verb groups share."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`, resolved by `chuan.infer.loading.pick_device` / `pick_dtype`."""
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="weights dtype (default auto: bf16 on a GPU that has it, else fp32)",
    )


# argparse `type=` functions for numeric flags: a value out of range is refused while the
# arguments are parsed, before any work starts, with the valid range in the message.


def add_adapter_argument(parser: argparse.ArgumentParser) -> None:
    """`--adapter DIR`: a peft adapter, folded into the model as it loads (LoRA, AdaLoRA) or
    run with its virtual tokens (prefix, prompt, P-tuning)."""
    parser.add_argument(
        "--adapter",
        metavar="DIR",
        help="a peft adapter of this model (e.g. OUT/adapter of `chuan sft`): LoRA and AdaLoRA "
        "are folded in as the model loads, without writing a merged copy; prefix, prompt and "
        "P-tuning adapters run unmerged, their virtual tokens starting the KV cache or the "
        "prompt; its tokenizer files, chat template and generation settings are used when it "
        "has them",
    )


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE.yaml`, `KEY=VALUE` overrides and `--resume` of a training run."""
    parser.add_argument("--config", required=True, metavar="FILE.yaml", help="the recipe")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of recipe fields, e.g. optim.lr=3e-4 stages.0.steps=100 out=runs/x",
    )
    parser.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT",
        help="continue from the newest complete checkpoint in `out` (auto) or from the given "
        "checkpoint dir; without it, `out` must not hold checkpoints",
    )


def print_run_result(result) -> None:
    """The one-line outcome of a training run (from rank 0 only, under torchrun); an
    interrupted run exits 128 + the signal."""
    quiet = int(os.environ.get("RANK", "0")) != 0
    if result.interrupted:
        # A checkpoint was saved; the exit code still says "stopped by a signal" (128 + its
        # number: 143 for SIGTERM, 130 for SIGINT), so a scheduler or script sees no success.
        if not quiet:
            print(
                f"interrupted at step {result.steps}; continue with the same command and "
                "--resume auto"
            )
        sys.exit(128 + (result.signal or signal.SIGTERM))
    if quiet:
        return
    # A resumed run that had already finished trains no step: no training loss to show.
    loss = "" if result.final_loss is None else f": loss {result.final_loss:.4f}"
    held = "" if result.eval_loss is None else f", held-out loss {result.eval_loss:.4f}"
    print(
        f"trained {result.steps:,} steps on {result.tokens:,} tokens{loss}{held}; model in "
        f"{result.model_dir}, report in {result.run_dir}/report.md"
    )


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def float_in(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """A finite number in [low, high] (`low_open` / `high_open` exclude the ends; None = no
    bound on that side)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            parts = []
            if low is not None:
                parts.append(f"{'>' if low_open else '>='} {low:g}")
            if high is not None:
                parts.append(f"{'<' if high_open else '<='} {high:g}")
            raise argparse.ArgumentTypeError(
                f"must be a number {' and '.join(parts) or 'that is finite'}, got {text}"
            )
        return value

    return parse


def port_number(text: str) -> int:
    """A TCP port, 1..65535 (0 would pick a random one, which a client cannot know)."""
    value = int_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {value}")
    return value


def add_retrieval_arguments(parser: argparse.ArgumentParser, *, prefix: str = "--") -> None:
    """How a grounded answer retrieves and checks citations: `-k`, `--mode`, `--threshold`,
    `--cite-threshold`, the first three named `--kb-k`, `--kb-mode`, `--kb-threshold` beside a
    model's own flags (`chuan chat`, `chuan serve`), where `--top-k` already means sampling."""
    parser.add_argument(
        "--kb-k" if prefix == "--kb-" else "-k",
        dest="kb_k",
        type=int_at_least(1),
        default=5,
        metavar="N",
        help="sources retrieved for each question, numbered [1]..[N] in the prompt (fewer "
        "when they do not fit the context; default 5)",
    )
    add_search_arguments(parser, prefix=prefix)
    add_cite_threshold_argument(parser)


def add_cite_threshold_argument(parser: argparse.ArgumentParser) -> None:
    """`--cite-threshold`: when the citation checker cites an uncited sentence."""
    from chuan.rag.cite import DEFAULT_CITE_THRESHOLD

    parser.add_argument(
        "--cite-threshold",
        type=float_in(0, 1),
        default=DEFAULT_CITE_THRESHOLD,
        metavar="X",
        help="a reply sentence without a citation is given one to the source holding the "
        "largest share of its terms (English words, Chinese character bigrams) when that share "
        f"reaches X, else it stays uncited (default {DEFAULT_CITE_THRESHOLD})",
    )


def add_search_arguments(parser: argparse.ArgumentParser, *, prefix: str = "--") -> None:
    """The search flags (`chuan rag search|eval|ask`, and with `--kb-` in front of their
    names `chuan chat` and `chuan serve`): the mode and the relevance filter."""
    from chuan.rag.kb import DEFAULT_THRESHOLD, MODES

    parser.add_argument(
        f"{prefix}mode",
        dest="mode",
        choices=MODES,
        default="sparse",
        help="sparse: BM25; dense: cosine of the dense vectors; hybrid: reciprocal rank fusion "
        "(k=60) of both (dense and hybrid need a KB indexed with --dense)",
    )
    parser.add_argument(
        f"{prefix}threshold",
        dest="threshold",
        type=float_in(0, 1),
        default=DEFAULT_THRESHOLD,
        metavar="X",
        help="relevance filter: the BM25 score divided by the query's attainable maximum (the "
        "sum of its terms' idf) must reach X, or nothing is returned; 0 turns it off "
        f"(default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        f"{prefix}rerank",
        dest="rerank",
        choices=("none", "likelihood", "judge"),
        default="none",
        help="a language model reranks the best --rerank-depth hits and drops those it finds "
        "irrelevant: likelihood (how much the chunk raises the question's log-probability) or "
        "judge (a yes/no prompt in its chat template); docs/rag.md (default none)",
    )
    parser.add_argument(
        f"{prefix}rerank-model",
        dest="rerank_model",
        metavar="DIR",
        help="the reranking model dir (default: the answering model, where there is one)",
    )
    parser.add_argument(
        f"{prefix}rerank-depth",
        dest="rerank_depth",
        type=int_at_least(1),
        default=20,
        metavar="N",
        help="hits handed to the reranker (default 20)",
    )
