"""`chuan eval ppl` and `chuan eval harness`: perplexity of text files, lm-evaluation-harness."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from chuan.cli.options import add_device_arguments, int_at_least
from chuan.errors import InputError, MissingError

_MAX_SHOWN_REJECTS = 5


def _limit(text: str) -> int | float:
    """lm-eval's --limit: a document count, or a fraction of each task when below 1."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, got {text}")
    return value if value < 1 else int(value)


def _report_rejects(rejects: list) -> None:
    """Name the first few skipped records on stderr (all of them go into --json)."""
    if not rejects:
        return
    print(f"skipped {len(rejects):,} bad records:", file=sys.stderr)
    for error in rejects[:_MAX_SHOWN_REJECTS]:
        print(f"  {error}", file=sys.stderr)
    if len(rejects) > _MAX_SHOWN_REJECTS:
        print(f"  ... and {len(rejects) - _MAX_SHOWN_REJECTS:,} more", file=sys.stderr)


def _ppl(args: argparse.Namespace) -> None:
    from chuan.eval.perplexity import evaluate_perplexity, format_table, read_text_files
    from chuan.fileio import write_atomic
    from chuan.infer.loading import load_model, load_saved_tokenizer

    texts, rejects = read_text_files(args.text, lines=args.lines, text_field=args.text_field)
    _report_rejects(rejects)
    if not any(texts.values()):
        raise InputError("no document to score in " + ", ".join(map(str, args.text)))
    tokenizer = load_saved_tokenizer(args.model)
    if tokenizer is None:
        raise MissingError(f"{args.model} has no tokenizer files")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    report = evaluate_perplexity(
        model,
        tokenizer,
        texts,
        max_length=args.max_length,
        stride=args.stride,
        batch_size=args.batch_size,
    )
    print(format_table(report, Counter(error.path for error in rejects)))
    if args.json:
        data = {
            "model": str(args.model),
            **report.to_dict(),
            "rejected": [
                {"file": e.path, "line": e.line, "field": e.field, "reason": e.reason}
                for e in rejects
            ],
        }
        write_atomic(args.json, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")


def _harness(args: argparse.Namespace) -> None:
    from chuan.eval.harness import results_json, results_tables, run_harness
    from chuan.fileio import write_atomic

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    results = run_harness(
        args.model,
        tasks,
        include_path=args.include_path,
        builtin_tasks=not args.no_builtin_tasks,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        log_samples=args.log_samples,
    )
    print(results_tables(results))
    if args.json:
        write_atomic(args.json, results_json(results) + "\n")
        print(f"wrote {args.json}")


def _add_model_flags(parser: argparse.ArgumentParser, batch_default: int, batch_help: str) -> None:
    """MODEL, --batch-size, --device, --dtype and --json, shared by both actions."""
    parser.add_argument("model", metavar="MODEL", help="model dir (chuan, Baichuan, HF LLaMA)")
    parser.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=batch_default,
        metavar="B",
        help=f"{batch_help} ({batch_default})",
    )
    add_device_arguments(parser)
    parser.add_argument("--json", metavar="OUT", help="write the full results as JSON to OUT")


def register(actions: argparse._SubParsersAction) -> None:
    ppl = actions.add_parser(
        "ppl",
        help="perplexity and bits per byte of text files",
        description="Score text files with a causal LM: per file and overall, the scored "
        "tokens, mean loss (nats/token), perplexity = exp(loss) and bits per byte = total nats "
        "/ (ln 2 x UTF-8 bytes of the text), which compares models with different tokenizers. "
        "Each document is [BOS] text [EOS] when the tokenizer adds BOS, else [EOS] text [EOS] "
        "(the leading token is context only, as in packed pretraining); every text token and "
        "the final EOS are scored. Long documents use a sliding window: windows of --max-length "
        "tokens every --stride tokens, each token scored once. Bad records are skipped, named "
        "on stderr and listed in --json.",
    )
    _add_model_flags(ppl, 4, "windows per forward pass; memory ~ B x max length x vocab x 4 B")
    ppl.add_argument(
        "--text",
        nargs="+",
        required=True,
        metavar="FILE",
        help="files or dirs: .txt (one document per file; see --lines), JSONL / JSON / Parquet "
        "with a text field; .gz and .zst are read too",
    )
    ppl.add_argument("--lines", action="store_true", help=".txt files hold one document per line")
    ppl.add_argument("--text-field", default="text", help="record field with the text (text)")
    ppl.add_argument(
        "--max-length",
        type=int_at_least(1),
        metavar="N",
        help="window length in tokens (default: the model's context)",
    )
    ppl.add_argument(
        "--stride",
        type=int_at_least(1),
        metavar="S",
        help="tokens between window starts, 1..max length (default: max length, i.e. disjoint "
        "chunks); smaller gives each token more context at max_length/stride times the compute",
    )
    ppl.set_defaults(func=_ppl)

    harness = actions.add_parser(
        "harness",
        help="run lm-evaluation-harness tasks on a model dir",
        description="Run lm-evaluation-harness (pip install 'chuan[eval]') on a model dir "
        "without trust_remote_code: chuan loads the model and tokenizer and hands them to "
        "lm-eval's HF model. Prints lm-eval's table; --json writes its results JSON.",
        epilog="example: chuan eval harness out/model --tasks ceval-valid,cmmlu --num-fewshot 5",
    )
    _add_model_flags(harness, 1, "lm-eval batch size")
    harness.add_argument(
        "--tasks",
        required=True,
        metavar="T1,T2",
        help="comma-separated lm-eval task, group or tag names; glob patterns allowed",
    )
    harness.add_argument(
        "--include-path", metavar="DIR", help="also index the task YAMLs under DIR"
    )
    harness.add_argument(
        "--no-builtin-tasks",
        action="store_true",
        help="index only --include-path, not lm-eval's ~15,000 bundled task configs "
        "(saves 10-30 s when all tasks are local)",
    )
    harness.add_argument(
        "--num-fewshot",
        type=int_at_least(0),
        metavar="K",
        help="few-shot examples per prompt (default: each task's)",
    )
    harness.add_argument(
        "--limit",
        type=_limit,
        metavar="N",
        help="documents per task, or a fraction of each task when below 1 (default: all)",
    )
    harness.add_argument(
        "--log-samples",
        action="store_true",
        help="keep every document's prompts and responses in --json (key `samples`)",
    )
    harness.set_defaults(func=_harness)
