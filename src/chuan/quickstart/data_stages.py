"""The quickstart's data stages: sample corpus → clean → dedup → tokenizer → pack.

Each calls the same library function as its `chuan` verb, on the bundled sample with planted
duplicates, so the report can say how many of them dedup found.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from chuan.fileio import write_jsonl
from chuan.quickstart.runner import Context

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SAMPLE = ASSETS / "sample"
HELDOUT_EVERY = 20  # every 20th document of each sample file is held out for evaluation
PLANTED_PER_KIND = 30
VOCAB_SIZE = 8000
MAX_LENGTH = 256


def _near_copy(text: str, rng: random.Random) -> str:
    """A light edit that leaves the copy well above dedup's 0.8 Jaccard threshold: one word
    (or, in Chinese, one character) replaced."""
    if " " in text:
        words = text.split(" ")
        words[rng.randrange(len(words))] = "indeed"
        return " ".join(words)
    i = rng.randrange(len(text))
    return text[:i] + "之" + text[i + 1 :]


def corpus(ctx: Context) -> dict:
    """Copy the sample into `raw/`, hold out every 20th document, plant exact and edited
    copies of training documents (ids `planted-exact/…`, `planted-near/…`)."""
    rng = random.Random(ctx.options.seed)
    train, heldout = [], []
    for path in sorted(SAMPLE.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()[: ctx.options.max_docs]
        records = [json.loads(line) for line in lines]
        heldout += records[HELDOUT_EVERY - 1 :: HELDOUT_EVERY]
        kept = [r for i, r in enumerate(records) if (i + 1) % HELDOUT_EVERY]
        train += kept
        write_jsonl(ctx.path("raw", path.name), kept)
    long_docs = [r for r in train if len(r["text"]) >= 200]
    picked = rng.sample(long_docs, min(2 * PLANTED_PER_KIND, len(long_docs)))
    half = len(picked) // 2
    planted = [{**r, "id": f"planted-exact/{r['id']}"} for r in picked[:half]]
    planted += [
        {**r, "id": f"planted-near/{r['id']}", "text": _near_copy(r["text"], rng)}
        for r in picked[half:]
    ]
    write_jsonl(ctx.path("raw", "planted.jsonl"), planted)
    write_jsonl(ctx.path("heldout", "heldout.jsonl"), heldout)
    for lang in ("en", "zh"):  # line files for the tokenizer's compression chart
        lines = [" ".join(r["text"].split()) for r in heldout if r.get("category") == lang]
        ctx.path("heldout", f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in ctx.path("raw").glob("*.jsonl"))
    return {
        "documents": len(train) + len(planted),
        "bytes": size,
        "planted_exact": half,
        "planted_near": len(planted) - half,
        "heldout_documents": len(heldout),
        "summary": f"{len(train):,} sample documents ({size / 1e6:.1f} MB) + {len(planted)} "
        f"planted copies; {len(heldout)} held out",
    }


def clean(ctx: Context) -> dict:
    """Clean with the default rules, except two Chinese thresholds the sample's poems would
    fail: documents need 20 characters, not 200 (a 绝句 is 20 or 28), and lines 4 characters
    on average, not 10 (a 宋词 line is often 4 to 7)."""
    from chuan.data.clean import CleanConfig, clean_corpus
    from chuan.data.rules import ChineseRules

    config = CleanConfig(zh=ChineseRules(min_chars=20, min_mean_line_chars=4.0))
    report = clean_corpus(
        ctx.path("raw"), ctx.path("clean"), config=config, progress=ctx.options.progress
    )
    dropped = report["documents_dropped_per_rule"]
    top = ", ".join(f"{k} {n}" for k, n in sorted(dropped.items(), key=lambda kv: -kv[1])[:3])
    return {
        "read": report["read"],
        "kept": report["kept"],
        "rejected": report["rejected"],
        "dropped_per_rule": dropped,
        "lines_removed_per_rule": report["lines_removed_per_rule"],
        "summary": f"{report['kept']:,} of {report['read']:,} documents kept"
        + (f" (dropped: {top})" if top else ""),
    }


def dedup(ctx: Context) -> dict:
    """Deduplicate, then check the planted copies: a planted pair is found when the copy or
    its original is gone (dedup keeps the better-scored one of a cluster)."""
    from chuan.data.dedup import dedup_corpus
    from chuan.data.shards import output_records

    report = dedup_corpus(
        ctx.path("clean", "shards"), ctx.path("dedup"), workers=1, progress=ctx.options.progress
    )
    kept = {r.get("id") for r in output_records(ctx.path("dedup"))}
    planted_ids = [
        json.loads(line)["id"]
        for line in ctx.path("raw", "planted.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    cleaned = {r.get("id") for r in output_records(ctx.path("clean"))}
    pairs = [(p, p.split("/", 1)[1]) for p in planted_ids]
    pairs = [(p, o) for p, o in pairs if p in cleaned and o in cleaned]  # both survived clean
    found = sum(not (p in kept and o in kept) for p, o in pairs)
    return {
        "read": report["read"],
        "kept": report["kept"],
        "exact_duplicates": report["exact_duplicates"],
        "near_duplicates": report["near_duplicates"],
        "planted_pairs": len(pairs),
        "planted_found": found,
        "summary": f"{report['exact_duplicates']} exact + {report['near_duplicates']} near "
        f"duplicates removed; planted copies found: {found}/{len(pairs)}",
    }


def tokenizer(ctx: Context) -> dict:
    """Train Baichuan 2-style SentencePiece BPE on the deduplicated corpus; chart its
    compression on the held-out text."""
    from chuan.tokenizer.stats import tokenizer_stats
    from chuan.tokenizer.train import train_tokenizer

    out = ctx.path("tokenizer")
    train_tokenizer(ctx.path("dedup", "shards"), out, vocab_size=VOCAB_SIZE, overwrite=True)
    texts = {lang: [ctx.path("heldout", f"{lang}.txt")] for lang in ("en", "zh")}
    stats = tokenizer_stats(
        [f"chuan={out}"],
        texts,
        json_out=ctx.path("tokenizer", "stats.json"),
        png_out=ctx.path("tokenizer", "compression.png"),
    )
    per_lang = {
        lang: round(stats.row("chuan", lang).chars_per_token, 3) for lang in stats.languages
    }
    shown = ", ".join(f"{lang} {v:.2f}" for lang, v in per_lang.items())
    return {
        "vocab_size": VOCAB_SIZE,
        "chars_per_token": per_lang,
        "summary": f"{VOCAB_SIZE:,} pieces; characters per token on held-out text: {shown}",
    }


def pack(ctx: Context) -> dict:
    from chuan.data.pack import pack_corpus

    report = pack_corpus(
        ctx.path("dedup", "shards"),
        ctx.path("tokenizer"),
        ctx.path("packed"),
        max_length=MAX_LENGTH,
        seed=ctx.options.seed,
        overwrite=True,
        progress=ctx.options.progress,
    )
    return {
        "rows": report.rows,
        "tokens": report.tokens,
        "max_length": MAX_LENGTH,
        "fill": round(report.fill, 4),
        "summary": f"{report.tokens:,} tokens in {report.rows:,} rows of {MAX_LENGTH} "
        f"({report.fill:.1%} filled)",
    }
