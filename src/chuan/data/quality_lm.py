"""Document perplexity under a causal language model: the CCNet approach to quality.

`score_perplexity` adds `exp(mean token loss)` of any chuan (or transformers causal LM) model
dir to every record. The loss is `chuan.model.nll`'s, the one windowed next-token NLL behind
every perplexity chuan prints: each document (after a BOS when the tokenizer has one) is cut
into windows of `max_length` input tokens, each window also predicting the token after its
last input, so every token but the first is predicted exactly once; windows of similar length
are batched with right padding. Like the classifier (`chuan.data.quality_classifier`), it runs
through `chuan.data.shards.run_shards` and writes the same report.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chuan.data.executor import Executor
from chuan.data.quality_classifier import (
    chunks,
    histogram_counts,
    scoring_report,
    write_scoring_report,
)
from chuan.data.shards import (
    JsonlZstWriter,
    ShardStats,
    StageRun,
    committed,
    dir_fingerprint,
    run_shards,
    shard_records,
)
from chuan.errors import InputError, MissingError
from chuan.model.nll import sequence_nats

# log10(perplexity) histogram range: 1 to 10^6.
_LOG10_PPL_RANGE = (0.0, 6.0)


@functools.lru_cache(maxsize=2)
def _cached_lm(model_dir: str, device: str):
    """The causal LM and its tokenizer, loaded once per process."""
    from transformers import AutoModelForCausalLM

    import chuan  # noqa: F401 - registers the Baichuan classes with the Auto classes
    from chuan.tokenizer.hf import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    return model, load_tokenizer(model_dir)


def document_log_perplexities(
    model, tokenizer, texts: list[str], *, batch_size: int, max_length: int
) -> list[float | None]:
    """Mean next-token loss (nats) of each text after a BOS when the tokenizer has one; None
    for a text with no token to predict.

    A long text is scored in independent windows of `max_length` input tokens
    (`chuan.model.nll.sequence_nats` with `stride = max_length`), each target once; windows of
    similar length share a batch of `batch_size`.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    sequences = [bos + ids for ids in encoded]
    nats = sequence_nats(
        model, sequences, max_length=max_length, stride=max_length, batch_size=batch_size
    )
    return [
        total / (len(seq) - 1) if len(seq) > 1 else None
        for seq, total in zip(sequences, nats, strict=True)
    ]


def _perplexity_shard(
    path: Path,
    shard: Path,
    rejects_path: Path,
    stats: ShardStats,
    *,
    model_dir: str,
    field: str,
    batch_size: int,
    max_length: int,
    device: str,
    progress: bool,
) -> None:
    """Add `field` = perplexity (None when the text has no token) to every valid record."""
    model, tokenizer = _cached_lm(model_dir, device)
    out, rejects = JsonlZstWriter(shard), JsonlZstWriter(rejects_path)
    log10_ppl: list[float] = []
    bar = tqdm(desc=f"perplexity {path.name}", unit="doc", disable=not progress)
    records = (record for _, record in shard_records(path, stats, rejects))
    with committed(out, rejects):
        try:
            for chunk in chunks(records, batch_size * 8):
                texts = [r["text"] for r in chunk]
                nats = document_log_perplexities(
                    model, tokenizer, texts, batch_size=batch_size, max_length=max_length
                )
                for record, value in zip(chunk, nats, strict=True):
                    record[field] = None if value is None else math.exp(value)
                    out.write(record)
                    if value is not None:
                        log10_ppl.append(value / math.log(10))
                bar.update(len(chunk))
        finally:
            bar.close()
    stats.kept = out.count
    stats.extra = {
        "histogram": histogram_counts(log10_ppl, *_LOG10_PPL_RANGE),
        "score_sum": float(sum(log10_ppl)),
        "unscored": out.count - len(log10_ppl),
    }


def score_perplexity(
    inputs,
    model_dir: str | Path,
    out: str | Path,
    *,
    field: str = "perplexity",
    batch_size: int = 8,
    max_length: int = 512,
    seed: int = 0,
    device: str = "cpu",
    workers: int = 1,
    executor: Executor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """CCNet-style scoring: add `field` = exp(mean token loss) of a causal LM to every record.

    `model_dir` is any chuan model dir with its tokenizer (or a transformers causal LM dir
    with a `tokenizer.model`). Memory per batch is `batch_size * max_length * vocab * 4`
    bytes of logits. The report's mean and histogram are of log10(perplexity); perplexity
    thresholds belong to one model and one language (datajuicer/data-juicer#127). Scoring is
    deterministic; `seed` is recorded only.
    """
    if max_length < 2:
        raise InputError(f"max_length must be >= 2, got {max_length}")
    if not Path(model_dir).is_dir():
        raise MissingError(f"{model_dir} is not a model dir (not found or not a dir)")
    work = functools.partial(
        _perplexity_shard,
        model_dir=str(Path(model_dir).resolve()),
        field=field,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        progress=progress,
    )
    meta = {"max_length": max_length, "batch_size": batch_size, "statistic": "log10(perplexity)"}
    settings = {"scorer": "perplexity", "model": dir_fingerprint(model_dir), "field": field}
    settings.update(max_length=max_length, seed=seed)
    with StageRun(
        inputs, out, stage="quality score", settings=settings, overwrite=overwrite
    ) as run:
        stats = run_shards(inputs, out, work, workers=workers, shards=run.shards, executor=executor)
        report = scoring_report(stats, field, seed, model_dir, meta, _LOG10_PPL_RANGE)
        report["unscored"] = sum(s.extra["unscored"] for s in stats)
        write_scoring_report(Path(out), report, f"{field}_hist.png", f"log10 {field}")
    return report
