"""`chuan tokenizer`: train, expand and measure SentencePiece tokenizers."""

from __future__ import annotations

import argparse

from chuan.cli.options import float_in, int_at_least
from chuan.errors import InputError


def _tokenizer_train(args: argparse.Namespace) -> None:
    from chuan.tokenizer.train import train_tokenizer

    report = train_tokenizer(
        args.inputs,
        args.out,
        vocab_size=args.vocab_size,
        sample_sentences=args.sample_sentences,
        seed=args.seed,
        category_weights=_parse_weights(args.category_weight),
        text_field=args.text_field,
        num_threads=args.threads,
        character_coverage=args.character_coverage,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    sampled = sum(c["sentences_sampled"] for c in report.categories.values())
    print(
        f"wrote {args.out}: {report.vocab_size:,} pieces from {sampled:,} sampled lines "
        f"({report.training_seconds:.0f} s training); report in {args.out}/train_report.json"
    )


def _tokenizer_expand(args: argparse.Namespace) -> None:
    from chuan.tokenizer.expand import expand_tokenizer

    report = expand_tokenizer(
        args.base,
        args.out,
        pieces=args.pieces,
        train_on=args.train_on,
        add=args.add,
        seed=args.seed,
        any_script=args.any_script,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: {report.base_size:,} + {report.added_requested:,} requested + "
        f"{report.added_for_reachability:,} for reachability = {report.final_size:,} pieces"
    )
    if report.failed:
        raise InputError(f"{len(report.failed)} added pieces do not encode as one token")


def _tokenizer_stats(args: argparse.Namespace) -> None:
    from chuan.tokenizer.stats import render_summary, render_table, tokenizer_stats

    report = tokenizer_stats(args.tokenizers, args.text, json_out=args.json, png_out=args.png)
    print(render_summary(report, fmt="plain"))
    print()
    print(render_summary(report, metric="relative_to_first", fmt="plain"))
    if args.all_metrics:
        print()
        print(render_table(report, fmt="plain"))


def _parse_weights(pairs: list[str]) -> dict[str, float]:
    weights = {}
    for pair in pairs:
        category, sep, value = pair.rpartition("=")
        if not sep or not category:
            raise InputError(f"--category-weight takes CATEGORY=WEIGHT, got {pair!r}")
        weights[category] = float(value)
    return weights


def register(verbs: argparse._SubParsersAction) -> None:
    tokenizer = verbs.add_parser("tokenizer", help="train, expand and measure tokenizers")
    tokenizer_verbs = tokenizer.add_subparsers(
        dest="tokenizer_verb", required=True, metavar="ACTION"
    )
    train = tokenizer_verbs.add_parser(
        "train",
        help="train a SentencePiece BPE tokenizer with the Baichuan 2 settings",
        description="Train a BPE tokenizer with Baichuan 2's settings (no normalisation, no "
        "dummy prefix, digits split, whitespace pieces, byte fallback, coverage 0.9999, pieces "
        "up to 32 characters) on a bounded, seeded sample of lines; ids 195/196 are the chat "
        "user/assistant tokens <reserved_106>/<reserved_107>.",
    )
    train.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="JSONL / JSON / Parquet / txt files or dirs"
    )
    train.add_argument(
        "--vocab-size", type=int_at_least(1), required=True, help="Baichuan 2 used 125696"
    )
    train.add_argument("--out", required=True, metavar="DIR", help="tokenizer dir to write")
    train.add_argument(
        "--sample-sentences",
        type=int_at_least(1),
        default=2_000_000,
        help="lines to train on (2000000)",
    )
    train.add_argument("--seed", type=int_at_least(0), default=0, help="sampling seed (default 0)")
    train.add_argument(
        "--category-weight",
        action="append",
        default=[],
        metavar="CATEGORY=WEIGHT",
        help="oversample a category, e.g. code=2 (repeatable)",
    )
    train.add_argument("--text-field", default="text", help="record field with the text")
    train.add_argument(
        "--character-coverage",
        type=float_in(0.98, 1),
        default=0.9999,
        metavar="C",
        help="share of the sample's characters that get their own piece, 0.98 to 1; the rarest "
        "rest fall back to bytes (default Baichuan 2's 0.9999; a small vocabulary over Chinese "
        "may need less)",
    )
    train.add_argument(
        "--threads", type=int_at_least(1), help="SentencePiece threads (default: all cores)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.add_argument("--verbose", action="store_true", help="show SentencePiece's log")
    train.set_defaults(func=_tokenizer_train)

    expand = tokenizer_verbs.add_parser(
        "expand",
        help="append pieces to an existing tokenizer (Colossal-LLaMA-2), keeping base ids",
        description="Expand a SentencePiece BPE tokenizer: pieces are appended after the base "
        "vocabulary (duplicates dropped, base ids unchanged), plus the intermediate pieces "
        "their BPE merges need, and every requested piece is verified to encode as one token.",
    )
    expand.add_argument("--base", required=True, metavar="DIR", help="tokenizer to expand")
    source = expand.add_mutually_exclusive_group(required=True)
    source.add_argument("--pieces", metavar="FILE.jsonl", help='lines of {"piece": "..."}')
    source.add_argument(
        "--train-on", nargs="+", metavar="INPUT", help="learn the new pieces from a corpus"
    )
    expand.add_argument(
        "--add",
        type=int_at_least(1),
        help="with --train-on: total pieces to add (reachability included)",
    )
    expand.add_argument(
        "--seed", type=int_at_least(0), default=0, help="seed for --train-on (default 0)"
    )
    expand.add_argument(
        "--any-script",
        action="store_true",
        help="with --train-on: learn pieces of any script, not only CJK ones (may change how "
        "English encodes)",
    )
    expand.add_argument("--out", required=True, metavar="DIR", help="tokenizer dir to write")
    expand.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    expand.set_defaults(func=_tokenizer_expand)

    stats = tokenizer_verbs.add_parser(
        "stats",
        help="compare tokenizers' compression per language",
        description="Side-by-side table per tokenizer and language: tokens per 1,000 "
        "characters, characters and bytes per token, compression relative to the first "
        "tokenizer, byte-fallback rate, share of the vocabulary used; optional JSON and PNG.",
    )
    stats.add_argument(
        "tokenizers",
        nargs="+",
        metavar="TOKDIR",
        help="tokenizer dirs or .model files, optionally NAME=PATH; the first is the baseline",
    )
    stats.add_argument(
        "--text",
        nargs="+",
        required=True,
        metavar="FILE",
        help="text files, optionally LANG=FILE (else zh when >30%% of letters are Han, else en)",
    )
    stats.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    stats.add_argument("--png", metavar="OUT", help="write a bar chart of tokens per 1k chars")
    stats.add_argument("--all-metrics", action="store_true", help="also print every metric")
    stats.set_defaults(func=_tokenizer_stats)
