"""`chuan data`: clean, dedup, quality train / score, mix and pack corpora."""

from __future__ import annotations

import argparse

from chuan.cli.options import float_in, int_at_least

# The data verbs' --overwrite: a re-run with other settings or inputs is otherwise refused.
_OVERWRITE_HELP = (
    "delete an existing --out and start from scratch (without it, a re-run with the same "
    "settings and inputs resumes and any other is refused)"
)


def _add_executor_flags(parser: argparse.ArgumentParser, *, partitions: bool = False) -> None:
    group = parser.add_argument_group("where it runs")
    group.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: --workers processes on this machine; ray: one Ray task per input file on "
        "a cluster (pip install 'chuan[ray]'; every node must see the inputs and --out at the "
        'same paths; docs/data.md, "Many machines"). The output is the same either way',
    )
    group.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="with --executor ray: the cluster to join (auto: the one this machine belongs to; "
        "default: RAY_ADDRESS, else a Ray started for this run on this machine)",
    )
    if partitions:
        group.add_argument(
            "--partitions",
            type=int_at_least(1),
            help="LSH band-key partitions, one task each (default: the workers or the "
            "cluster's CPUs); the output does not depend on it",
        )


def _executor(args: argparse.Namespace, workers: int | None = None):
    """The `Executor` the flags name (local: `--workers` processes)."""
    from chuan.data.executor import LocalExecutor, RayExecutor
    from chuan.errors import InputError

    if args.executor == "ray":
        return RayExecutor(args.address, progress=not getattr(args, "quiet", False))
    if args.address:
        raise InputError("--address names a Ray cluster: add --executor ray")
    if workers is None:
        return None
    return LocalExecutor(workers, progress=not getattr(args, "quiet", False))


def _data_clean(args: argparse.Namespace) -> None:
    from chuan.config import load_config
    from chuan.data.clean import CleanConfig, clean_corpus
    from chuan.fileio import REPORT_JSON

    config = load_config(CleanConfig, args.config, args.overrides)
    report = clean_corpus(
        args.inputs,
        args.out,
        config=config,
        seed=args.seed,
        workers=args.workers,
        executor=_executor(args),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    langs = ", ".join(f"{k} {n:,}" for k, n in report["kept_per_lang"].items())
    print(
        f"wrote {args.out}: {report['read']:,} read, {report['kept']:,} kept ({langs}), "
        f"{report['rejected']:,} rejected; report in {args.out}/{REPORT_JSON}"
    )


def _data_dedup(args: argparse.Namespace) -> None:
    from chuan.data.dedup import dedup_corpus
    from chuan.fileio import REPORT_JSON

    report = dedup_corpus(
        args.inputs,
        args.out,
        threshold=args.threshold,
        num_perm=args.num_perm,
        ngram=args.ngram,
        bands=args.bands,
        rows=args.rows,
        sentence_max_repeats=args.sentence_max_repeats,
        sentence_min_chars=args.sentence_min_chars,
        seed=args.seed,
        workers=args.workers,
        executor=_executor(args),
        partitions=args.partitions,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: kept {report['kept']:,} of {report['read']:,} documents "
        f"({report['exact_duplicates']:,} exact, {report['near_duplicates']:,} near duplicates; "
        f"{report['sentence_dups_removed']:,} repeated sentences removed); "
        f"report in {args.out}/{REPORT_JSON}"
    )


def _data_quality_train(args: argparse.Namespace) -> None:
    from chuan.data.quality_classifier import train_quality_model

    report = train_quality_model(
        args.good,
        args.bad,
        args.out,
        seed=args.seed,
        holdout=args.holdout,
        l2=args.l2,
        overwrite=args.overwrite,
    )
    held = report["held_out"]
    print(
        f"wrote {args.out}: held-out AUC {held['auc']:.4f}, precision {held['precision']:.3f}, "
        f"recall {held['recall']:.3f} at 0.5 ({held['examples']} documents)"
    )


def _data_quality_score(args: argparse.Namespace) -> None:
    from chuan.data.quality_classifier import score_corpus
    from chuan.data.quality_lm import score_perplexity

    if args.lm:
        report = score_perplexity(
            args.inputs,
            args.model,
            args.out,
            field=args.field or "perplexity",
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
            executor=_executor(args),
            overwrite=args.overwrite,
        )
    else:
        report = score_corpus(
            args.inputs,
            args.model,
            args.out,
            field=args.field or "quality",
            seed=args.seed,
            workers=args.workers,
            executor=_executor(args),
            overwrite=args.overwrite,
        )
    print(
        f"wrote {args.out}: {report['kept']:,} scored, {report['rejected']:,} rejected of "
        f"{report['read']:,} read; report in {args.out}/report.md"
    )


def _data_mix(args: argparse.Namespace) -> None:
    from chuan.config import load_config
    from chuan.data.mix import MixConfig, mix_corpus

    config = load_config(MixConfig, args.config, args.overrides)
    report = mix_corpus(
        config,
        args.out,
        seed=args.seed,
        workers=args.workers,
        executor=_executor(args),
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: tokens {report['tokens_before']:,.0f} -> {report['tokens_after']:,.0f}"
        f" in {len(report['categories'])} categories; report in {args.out}/report.md"
    )


def _data_pack(args: argparse.Namespace) -> None:
    from chuan.data.pack import pack_corpus
    from chuan.fileio import REPORT_JSON

    report = pack_corpus(
        args.inputs,
        args.tokenizer,
        args.out,
        max_length=args.max_length,
        bins=args.bins,
        seed=args.seed,
        add_bos=args.add_bos,
        executor=_executor(args, args.workers),
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: {report.documents:,} documents ({report.rejected:,} rejected) -> "
        f"{report.rows:,} rows of {report.max_length:,} tokens, fill {report.fill:.1%}; "
        f"report in {args.out}/{REPORT_JSON}"
    )


def register(verbs: argparse._SubParsersAction) -> None:
    data = verbs.add_parser("data", help="prepare corpora for training")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    pack = data_verbs.add_parser(
        "pack",
        help="tokenize documents and splice them into fixed-length rows, bins -> buckets",
        description="Tokenize documents {text} and Colossal records {source, target}, splice "
        "them per category and bin into rows of exactly --max-length tokens (no token dropped; "
        "segment ids keep documents apart) and write a datasets dir with input_ids, "
        "segment_ids, loss_mask, category and bucket, plus report.json and rejects.jsonl.",
    )
    pack.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="JSONL / JSON / Parquet / txt files or dirs"
    )
    pack.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer or model dir")
    pack.add_argument("--out", required=True, metavar="DIR", help="dataset dir to write")
    pack.add_argument(
        "--max-length",
        type=int_at_least(2),
        required=True,
        help="tokens per row (Baichuan 2: 4096)",
    )
    pack.add_argument(
        "--bins", type=int_at_least(1), default=1, help="bins per category, = buckets (default 1)"
    )
    pack.add_argument(
        "--seed", type=int_at_least(0), default=0, help="row shuffle seed (default 0)"
    )
    pack.add_argument("--add-bos", action="store_true", help="start plain documents with BOS")
    pack.add_argument(
        "--workers", type=int_at_least(1), default=1, help="processes, one input file each"
    )
    pack.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_executor_flags(pack)
    pack.set_defaults(func=_data_pack)

    clean = data_verbs.add_parser(
        "clean",
        help="language routing, document and line rules (Gopher, C4, FineWeb, zh set)",
        description="Route each document to zh / en / other by script ratio, apply the "
        "language's document and line rules (every threshold in --config), write kept records "
        "(all input fields, plus lang) to OUT/shards, rejects with rule and reason to "
        "OUT/rejects, and report.json / report.md with per-rule counts. Resumable per shard.",
        epilog="example: chuan data clean raw/ --out clean --set zh.min_chars=100 "
        "--set to_simplified=true",
    )
    clean.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="JSONL / JSON / Parquet / txt files or dirs"
    )
    clean.add_argument("--out", required=True, metavar="DIR", help="output dir")
    clean.add_argument(
        "--config", metavar="FILE.yaml", help="a CleanConfig (default: built-in thresholds)"
    )
    clean.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override of the config, repeatable (e.g. --set zh.min_chars=100)",
    )
    clean.add_argument(
        "--seed", type=int_at_least(0), default=0, help="recorded in the report (default 0)"
    )
    clean.add_argument(
        "--workers", type=int_at_least(1), default=1, help="processes, one input file each"
    )
    clean.add_argument("--quiet", action="store_true", help="no progress bars")
    clean.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_executor_flags(clean)
    clean.set_defaults(func=_data_clean)

    dedup = data_verbs.add_parser(
        "dedup",
        help="remove exact and near-duplicate documents and repeated sentences",
        description="Exact dedup on normalised text, MinHash-LSH near-dedup (character 5-grams "
        "for Chinese, word 5-grams for English), union-find clusters keeping the member with the "
        "highest `quality`, and corpus-wide sentence dedup. Writes shards/, rejects/, report.json "
        "and report.md; re-running into the same --out resumes.",
    )
    dedup.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="JSONL / JSON / Parquet / txt files or dirs"
    )
    dedup.add_argument("--out", required=True, metavar="DIR", help="output dir (resumable)")
    dedup.add_argument(
        "--threshold",
        type=float_in(0, 1, low_open=True, high_open=True),
        default=0.8,
        help="Jaccard threshold (default 0.8)",
    )
    dedup.add_argument(
        "--num-perm", type=int_at_least(1), default=128, help="MinHash permutations (default 128)"
    )
    dedup.add_argument(
        "--ngram",
        type=int_at_least(1),
        default=None,
        help="shingle length (default: 5 characters for Chinese, 5 words otherwise)",
    )
    dedup.add_argument(
        "--bands", type=int_at_least(1), help="LSH bands, with --rows (default: optimised)"
    )
    dedup.add_argument("--rows", type=int_at_least(1), help="rows per band, with --bands")
    dedup.add_argument(
        "--sentence-max-repeats",
        type=int_at_least(0),
        default=3,
        help="drop a sentence seen more than K times corpus-wide after its first occurrence "
        "(default 3; 0 = off)",
    )
    dedup.add_argument(
        "--sentence-min-chars",
        type=int_at_least(0),
        default=10,
        help="shorter sentences (normalised characters) are never dropped (default 10)",
    )
    dedup.add_argument(
        "--seed", type=int_at_least(0), default=0, help="permutation seed (default 0)"
    )
    dedup.add_argument(
        "--workers", type=int_at_least(1), default=None, help="processes (default: all cores)"
    )
    dedup.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_executor_flags(dedup, partitions=True)
    dedup.set_defaults(func=_data_dedup)

    quality = data_verbs.add_parser("quality", help="train and apply document quality scorers")
    quality_verbs = quality.add_subparsers(dest="quality_verb", required=True, metavar="ACTION")
    qtrain = quality_verbs.add_parser(
        "train",
        help="train a hashed n-gram logistic-regression classifier, good vs bad text",
        description="Train P(good) on --good vs --bad documents (char 1-3-grams + word 1-2-grams, "
        "2^20 hashed buckets, L2 logistic regression); report held-out AUC; write a model dir "
        "(weights.safetensors + config.json, no pickle).",
    )
    qtrain.add_argument("--good", nargs="+", required=True, metavar="FILE", help="good documents")
    qtrain.add_argument("--bad", nargs="+", required=True, metavar="FILE", help="bad documents")
    qtrain.add_argument("--out", required=True, metavar="DIR", help="model dir to write")
    qtrain.add_argument(
        "--holdout",
        type=float_in(0, 1, low_open=True, high_open=True),
        default=0.2,
        help="held-out fraction (0.2)",
    )
    qtrain.add_argument("--l2", type=float_in(0), default=1e-4, help="L2 strength (1e-4)")
    qtrain.add_argument(
        "--seed", type=int_at_least(0), default=0, help="held-out split seed (default 0)"
    )
    qtrain.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    qtrain.set_defaults(func=_data_quality_train)

    qscore = quality_verbs.add_parser(
        "score",
        help="add a quality (or, with --lm, perplexity) field to every record",
        description="Score every record with a `chuan data quality train` model (field "
        "`quality` = P(good)) or, with --lm, with any chuan model dir (field `perplexity`, the "
        "CCNet approach). Writes OUT/shards, OUT/rejects, report.json/md and a histogram PNG.",
    )
    qscore.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or dirs")
    qscore.add_argument("--model", required=True, metavar="DIR", help="quality or LM model dir")
    qscore.add_argument("--out", required=True, metavar="DIR", help="output dir")
    qscore.add_argument("--lm", action="store_true", help="--model is a causal LM: perplexity")
    qscore.add_argument("--field", help="output field (default quality / perplexity)")
    qscore.add_argument(
        "--batch-size", type=int_at_least(1), default=8, help="LM windows per batch (8)"
    )
    qscore.add_argument(
        "--max-length", type=int_at_least(2), default=512, help="LM window length (512)"
    )
    qscore.add_argument("--device", default="cpu", help="LM device (cpu, cuda)")
    qscore.add_argument(
        "--workers", type=int_at_least(1), default=1, help="processes, one shard each"
    )
    qscore.add_argument("--seed", type=int_at_least(0), default=0, help="recorded in the report")
    qscore.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_executor_flags(qscore)
    qscore.set_defaults(func=_data_quality_score)

    mix = data_verbs.add_parser(
        "mix",
        help="sample a corpus to per-category token budgets",
        description="Mix categories by explicit weights, temperature or UniMax, optionally "
        "quality-weighted within a category; writes OUT/shards (every field kept), rejects and "
        "report.json/md with tokens per category before and after.",
        epilog="example: chuan data mix --config mix.yaml --out mixed method=unimax max_epochs=4",
    )
    mix.add_argument("--config", required=True, metavar="FILE.yaml", help="a MixConfig")
    mix.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    mix.add_argument("--out", required=True, metavar="DIR", help="output dir")
    mix.add_argument("--seed", type=int_at_least(0), help="overrides the config's seed")
    mix.add_argument("--workers", type=int_at_least(1), default=1, help="processes, one shard each")
    mix.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_executor_flags(mix)
    mix.set_defaults(func=_data_mix)
