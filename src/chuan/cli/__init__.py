"""The `chuan` command line: parse arguments, then call one library function per verb."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from chuan.cli.options import float_in, int_at_least
from chuan.errors import ChuanError, InputError

# Verb groups that live in their own module under `chuan.cli`, each with `register(verbs)`.
VERB_MODULES = ("eval", "generate", "quantize", "quickstart", "scaling", "serve")


def _model_init(args: argparse.Namespace) -> None:
    from chuan.model.checkpoint import init_model_dir
    from chuan.model.presets import parameter_count

    config = init_model_dir(
        args.out,
        args.preset,
        vocab_size=args.vocab_size,
        tokenizer_dir=args.tokenizer,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: preset {args.preset}, {parameter_count(config):,} parameters, "
        f"vocab {config.vocab_size:,}, {config.position_encoding}, "
        f"{'NormHead' if config.norm_head else 'plain head'}"
    )


def _model_info(args: argparse.Namespace) -> None:
    from chuan.model import parameter_count, training_flops_per_token
    from chuan.model.checkpoint import read_config

    config = read_config(args.model)
    info = {
        "position_encoding": config.position_encoding,
        "norm_head": config.norm_head,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "vocab_size": config.vocab_size,
        "max_length": config.model_max_length,
        "parameters": parameter_count(config),
        "non_embedding_parameters": parameter_count(config, non_embedding=True),
        "train_flops_per_token": training_flops_per_token(config, config.model_max_length),
    }
    width = max(map(len, info))
    for key, value in info.items():
        shown = f"{value:,}" if type(value) in (int, float) else value
        print(f"{key:<{width}}  {shown}")


def _convert(args: argparse.Namespace) -> None:
    if args.to == "gguf":
        from chuan.infer.gguf import export_gguf

        out = export_gguf(args.src, args.out, overwrite=args.overwrite, outtype=args.outtype)
        print(f"wrote {out} (GGUF, llama architecture, {args.outtype})")
        return
    from chuan.model.convert import convert

    out = convert(args.src, args.out, args.to, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to} layout)")


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


# The data verbs' --overwrite: a re-run with other settings or inputs is otherwise refused.
_OVERWRITE_HELP = (
    "delete an existing --out and start from scratch (without it, a re-run with the same "
    "settings and inputs resumes and any other is refused)"
)


def _data_clean(args: argparse.Namespace) -> None:
    from chuan.config import load_config
    from chuan.data.clean import REPORT_FILE, CleanConfig, clean_corpus

    config = load_config(CleanConfig, args.config, args.overrides)
    report = clean_corpus(
        args.inputs,
        args.out,
        config=config,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    langs = ", ".join(f"{k} {n:,}" for k, n in report["kept_per_lang"].items())
    print(
        f"wrote {args.out}: {report['read']:,} read, {report['kept']:,} kept ({langs}), "
        f"{report['rejected']:,} rejected; report in {args.out}/{REPORT_FILE}"
    )


def _data_dedup(args: argparse.Namespace) -> None:
    from chuan.data.dedup import REPORT_FILE, dedup_corpus

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
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: kept {report['kept']:,} of {report['read']:,} documents "
        f"({report['exact_duplicates']:,} exact, {report['near_duplicates']:,} near duplicates; "
        f"{report['sentence_dups_removed']:,} repeated sentences removed); "
        f"report in {args.out}/{REPORT_FILE}"
    )


def _data_quality_train(args: argparse.Namespace) -> None:
    from chuan.data.quality import train_quality_model

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
    from chuan.data.quality import score_corpus, score_perplexity

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
        config, args.out, seed=args.seed, workers=args.workers, overwrite=args.overwrite
    )
    print(
        f"wrote {args.out}: tokens {report['tokens_before']:,.0f} -> {report['tokens_after']:,.0f}"
        f" in {len(report['categories'])} categories; report in {args.out}/report.md"
    )


def _data_pack(args: argparse.Namespace) -> None:
    from chuan.data.pack import REPORT_FILE, pack_corpus

    report = pack_corpus(
        args.inputs,
        args.tokenizer,
        args.out,
        max_length=args.max_length,
        bins=args.bins,
        seed=args.seed,
        add_bos=args.add_bos,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: {report.documents:,} documents ({report.rejected:,} rejected) -> "
        f"{report.rows:,} rows of {report.max_length:,} tokens, fill {report.fill:.1%}; "
        f"report in {args.out}/{REPORT_FILE}"
    )


def _pretrain(args: argparse.Namespace) -> None:
    from chuan.train.config import load_pretrain_config
    from chuan.train.loop import pretrain

    result = pretrain(load_pretrain_config(args.config, args.overrides), resume=args.resume)
    if result.interrupted:
        # A checkpoint was saved; the exit code still says "stopped by a signal" (128 + its
        # number: 143 for SIGTERM, 130 for SIGINT), so a scheduler or script sees no success.
        print(
            f"interrupted at step {result.steps}; continue with the same command and --resume auto"
        )
        sys.exit(128 + (result.signal or signal.SIGTERM))
    held = "" if result.eval_loss is None else f", held-out loss {result.eval_loss:.4f}"
    print(
        f"trained {result.steps:,} steps on {result.tokens:,} tokens: loss {result.final_loss:.4f}"
        f"{held}; model in {result.model_dir}, report in {result.run_dir}/report.md"
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


def _model_resize(args: argparse.Namespace) -> None:
    from chuan.model.checkpoint import read_config
    from chuan.tokenizer.resize import resize_model

    read_config(args.model)  # a missing dir or a broken config.json, named before any work

    config = resize_model(
        args.model,
        args.tokenizer,
        args.out,
        old_tokenizer=args.old_tokenizer,
        exclude_dummy_prefix=args.exclude_dummy_prefix,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: vocabulary {config.vocab_size:,}, new rows = mean of old pieces")


def _parse_weights(pairs: list[str]) -> dict[str, float]:
    weights = {}
    for pair in pairs:
        category, sep, value = pair.rpartition("=")
        if not sep or not category:
            raise InputError(f"--category-weight takes CATEGORY=WEIGHT, got {pair!r}")
        weights[category] = float(value)
    return weights


def build_parser() -> argparse.ArgumentParser:
    from chuan.model.presets import PRESETS

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

    model = verbs.add_parser("model", help="create and inspect model dirs")
    model_verbs = model.add_subparsers(dest="model_verb", required=True, metavar="ACTION")
    init = model_verbs.add_parser(
        "init",
        help="write a freshly initialised model dir",
        description="Write a randomly initialised model dir (Baichuan's init: N(0, 0.02), "
        "norms at one) in the Hugging Face layout.",
    )
    init.add_argument("--preset", required=True, choices=sorted(PRESETS), help="model shape")
    vocab = init.add_mutually_exclusive_group()
    vocab.add_argument(
        "--vocab-size", type=int_at_least(1), help="override the preset's vocabulary size"
    )
    vocab.add_argument(
        "--tokenizer", metavar="DIR", help="take the vocabulary size and tokenizer files from DIR"
    )
    init.add_argument(
        "--seed", type=int_at_least(0), default=0, help="initialisation seed (default 0)"
    )
    init.add_argument("--out", required=True, metavar="DIR", help="model dir to write")
    init.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    init.set_defaults(func=_model_init)

    resize = model_verbs.add_parser(
        "resize",
        help="grow a model's vocabulary to an expanded tokenizer",
        description="Resize a model to an expanded tokenizer (Colossal-LLaMA-2): each new row "
        "of embed_tokens and of lm_head is the mean of the old rows of the piece's split "
        "under the old tokenizer. Old rows are untouched. Runs on the CPU.",
    )
    resize.add_argument("--model", required=True, metavar="DIR", help="model dir to resize")
    resize.add_argument(
        "--tokenizer", required=True, metavar="NEW_DIR", help="the expanded tokenizer"
    )
    resize.add_argument(
        "--old-tokenizer", metavar="DIR", help="the model's tokenizer (default: the model dir)"
    )
    resize.add_argument(
        "--exclude-dummy-prefix",
        action="store_true",
        help="leave the lone '▁' of the dummy prefix out of the mean (Colossal includes it)",
    )
    resize.add_argument("--out", required=True, metavar="DIR", help="model dir to write")
    resize.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    resize.set_defaults(func=_model_resize)

    info = model_verbs.add_parser(
        "info", help="print a model dir's shape, parameter count and FLOPs per token"
    )
    info.add_argument("model", metavar="DIR", help="model dir (chuan or released Baichuan)")
    info.set_defaults(func=_model_info)

    convert = verbs.add_parser(
        "convert",
        help="convert between the Baichuan and Hugging Face LLaMA layouts",
        description="Convert a model dir. The source format is read from SRC/config.json. "
        "--to llama writes a plain LlamaForCausalLM dir (RoPE models only: W_pack split, "
        "NormHead folded into lm_head); --to baichuan imports a LLaMA dir or rewrites a "
        "released Baichuan dir (.bin weights) as safetensors with explicit config fields; "
        "--to gguf writes one OUT.gguf file for llama.cpp (RoPE models, tokenizer embedded).",
    )
    convert.add_argument("src", metavar="SRC", help="source model dir")
    convert.add_argument("out", metavar="OUT", help="output model dir")
    convert.add_argument("--to", required=True, choices=["baichuan", "llama", "gguf"])
    convert.add_argument(
        "--outtype",
        choices=["f32", "f16"],
        default="f32",
        help="with --to gguf: storage type of the matrices (norms stay f32); quantize further "
        "with llama.cpp's llama-quantize",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    convert.set_defaults(func=_convert)

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
    pack.add_argument("--overwrite", action="store_true", help="replace an existing --out")
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
    mix.set_defaults(func=_data_mix)

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
    pretrain.add_argument("--config", required=True, metavar="FILE.yaml", help="the recipe")
    pretrain.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of recipe fields, e.g. optim.lr=3e-4 stages.0.steps=100 out=runs/x",
    )
    pretrain.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT",
        help="continue from the newest complete checkpoint in `out` (auto) or from the given "
        "checkpoint dir; without it, `out` must not hold checkpoints",
    )
    pretrain.set_defaults(func=_pretrain)

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
