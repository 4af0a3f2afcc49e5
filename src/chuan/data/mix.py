"""`chuan data mix`: sample a corpus to per-category token budgets (docs/data.md, "Mixing").

Two passes over the inputs:

1. **Count**: every valid record's category, token count and (optionally) quality score.
   A category is the input's `category` from the config when given, else the record's own
   `category` field, else `default_category`. Tokens are CJK characters plus
   whitespace-separated words of the rest, or a tokenizer's ids when `tokenizer` is set.
2. **Write**: through `chuan.data.shards.run_shards`, one output shard per input file, every
   field kept (`category` set to the mixing category), each document written as many times
   as it was sampled. Copy k of a document is written in the k-th pass over its shard, so
   repeats are spread out, not adjacent.

Category weights (target shares of the token budget `budget_tokens`, default = all tokens):

- `explicit`: the configured `weights`, normalised;
- `temperature`: `p_i ∝ n_i^(1/τ)` (τ = 1 is the natural mixture, larger τ flattens it);
- `unimax` (Chung et al. 2023): categories from the smallest; each gets
  `min(remaining budget / remaining categories, max_epochs · n_i)`.

`max_epochs`, when set, caps every method: no document is written more than `max_epochs`
times (the category then falls short of its target, and the report says so).

Within a category each document gets a sampling weight: 1, or `quality^γ` (`quality_gamma`;
a negative γ favours low values such as perplexity), or 1 for the top `quality_top_fraction`
of documents by score and 0 for the rest. Expected copies are `min(max_epochs, λ·w)` with λ
solved so the expected tokens meet the category's target; systematic sampling in a seeded
walk (by length, ties in a seeded order) turns them into whole copies: each document gets the
floor or the ceiling of its expected copies, and the totals stay close to the targets.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from chuan.config import ConfigError, bounded
from chuan.data.executor import Executor
from chuan.data.shards import (
    JsonlZstWriter,
    ShardStats,
    StageRun,
    committed,
    input_shards,
    run_shards,
    shard_name,
    shard_records,
    totals,
)
from chuan.documents import corpus_files
from chuan.errors import InputError
from chuan.fileio import write_report

_CJK_CHAR = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
NOT_SAMPLED = "not sampled"
_COUNT_BATCH = 1024  # texts per token-counting call (a tokenizer encodes a batch in parallel)


@dataclass
class MixInput:
    """One input file or dir; `category` (when given) applies to all of its records."""

    path: str
    category: str | None = None


@dataclass
class MixConfig:
    """What `chuan data mix --config FILE` reads (see the module docstring)."""

    inputs: list[MixInput] = field(default_factory=list)
    method: Literal["explicit", "temperature", "unimax"] = "temperature"
    budget_tokens: int | None = bounded(None, gt=0)
    weights: dict[str, float] = field(default_factory=dict)
    temperature: float = bounded(1.0, gt=0)
    max_epochs: float | None = bounded(None, gt=0)
    quality_field: str | None = None
    quality_gamma: float = 1.0
    quality_top_fraction: float | None = bounded(None, gt=0, le=1)
    tokenizer: str | None = None
    default_category: str = "default"
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("a mix needs at least one input")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ConfigError(f"max_epochs must be > 0, got {self.max_epochs}")
        if self.method == "unimax" and self.max_epochs is None:
            raise ConfigError("method unimax needs max_epochs (UniMax's E)")
        if self.method == "explicit" and not self.weights:
            raise ConfigError("method explicit needs weights: {category: weight}")
        if any(w < 0 for w in self.weights.values()):
            raise ConfigError(f"weights must be >= 0, got {self.weights}")
        if self.quality_top_fraction is not None and not 0 < self.quality_top_fraction <= 1:
            raise ConfigError(
                f"quality_top_fraction must be in (0, 1], got {self.quality_top_fraction}"
            )
        if self.quality_top_fraction is not None and self.quality_field is None:
            raise ConfigError("quality_top_fraction needs quality_field")


# --- weights -----------------------------------------------------------------------------------


def temperature_weights(tokens: dict[str, float], temperature: float) -> dict[str, float]:
    """`p_i ∝ n_i^(1/τ)`."""
    powered = {c: n ** (1.0 / temperature) for c, n in tokens.items()}
    total = sum(powered.values())
    return {c: v / total for c, v in powered.items()}


def unimax_budgets(tokens: dict[str, float], budget: float, max_epochs: float) -> dict[str, float]:
    """UniMax: from the smallest category up, `min(left / categories left, E · n_i)` tokens."""
    out: dict[str, float] = {}
    left = float(budget)
    order = sorted(tokens, key=lambda c: (tokens[c], c))
    for index, category in enumerate(order):
        out[category] = min(left / (len(order) - index), max_epochs * tokens[category])
        left -= out[category]
    return out


def explicit_weights(tokens: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """The configured weights, normalised; every category present needs one."""
    missing = sorted(set(tokens) - set(weights))
    unknown = sorted(set(weights) - set(tokens))
    if missing or unknown:
        raise InputError(
            f"weights must name exactly the categories found {sorted(tokens)}: "
            f"missing {missing}, not in the data {unknown}"
        )
    total = sum(weights[c] for c in tokens)
    if total <= 0:
        raise InputError("weights sum to 0")
    return {c: weights[c] / total for c in tokens}


def category_targets(tokens: dict[str, float], config: MixConfig) -> dict[str, float]:
    """Target tokens per category before the per-document epoch cap."""
    budget = float(
        config.budget_tokens if config.budget_tokens is not None else sum(tokens.values())
    )
    if config.method == "unimax":
        return unimax_budgets(tokens, budget, config.max_epochs)
    shares = (
        explicit_weights(tokens, config.weights)
        if config.method == "explicit"
        else temperature_weights(tokens, config.temperature)
    )
    return {c: shares[c] * budget for c in tokens}


# --- per-document sampling ---------------------------------------------------------------------


def expected_copies(
    lengths: np.ndarray, weights: np.ndarray, target: float, cap: float | None
) -> np.ndarray:
    """`min(cap, λ·w)` per document with λ such that `Σ copies·length = target` (or every
    weighted document at the cap when the target is out of reach)."""
    active = weights > 0
    if target <= 0 or not active.any():
        return np.zeros(len(lengths))
    if cap is None:
        return weights * (target / float(np.dot(weights, lengths)))
    if cap * float(lengths[active].sum()) <= target:
        return np.where(active, cap, 0.0)
    low, high = 0.0, cap / weights[active].min()  # at `high` every document is at the cap
    for _ in range(100):  # bisection on a monotone function of λ
        middle = (low + high) / 2
        if float(np.dot(np.minimum(cap, middle * weights), lengths)) < target:
            low = middle
        else:
            high = middle
    return np.minimum(cap, high * weights)


def systematic_copies(
    expected: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Whole copies with mean exactly `expected`: one uniform offset along the cumulative
    sum. Each document gets the floor or the ceiling of its expectation. Walking the documents
    by length (ties in a seeded random order) spreads the picks evenly over short and long
    ones, so the token total stays close to its expectation too."""
    order = np.lexsort((rng.random(len(expected)), lengths))
    cumulative = np.concatenate([[0.0], np.cumsum(expected[order])]) + rng.random()
    copies = np.empty(len(expected), dtype=np.int64)
    copies[order] = np.diff(np.floor(cumulative)).astype(np.int64)
    return copies


def document_weights(quality: np.ndarray, config: MixConfig) -> np.ndarray:
    """Sampling weight of each document of one category (a score of 0 with a negative γ
    weighs nothing rather than infinitely much)."""
    if config.quality_top_fraction is not None:
        keep = max(1, math.ceil(config.quality_top_fraction * len(quality)))
        weights = np.zeros(len(quality))
        weights[np.argsort(-quality, kind="stable")[:keep]] = 1.0
        return weights
    with np.errstate(divide="ignore"):
        weights = np.power(quality, config.quality_gamma)
    return np.where(np.isfinite(weights), weights, 0.0)


def category_seed(seed: int, category: str) -> np.random.Generator:
    """One generator per category, independent of which other categories exist."""
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])


# --- counting ----------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """CJK characters plus whitespace-separated words of everything else."""
    return len(_CJK_CHAR.findall(text)) + len(_CJK_CHAR.sub(" ", text).split())


@dataclass
class Census:
    """Per valid document of every shard: category, tokens, quality (counting pass)."""

    shards: list[str]  # shard names, in input order
    shard_of: np.ndarray  # shard index per document
    category: np.ndarray  # category index per document
    tokens: np.ndarray
    quality: np.ndarray
    categories: list[str]
    unusable: int  # documents whose quality score is missing or bad


def _token_counter(tokenizer_dir: str | None):
    if tokenizer_dir is None:
        return lambda texts: [estimate_tokens(t) for t in texts]
    from chuan.tokenizer.hf import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    return lambda texts: [
        len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
    ]


def file_categories(config: MixConfig, exclude: str | Path | None = None) -> list[str | None]:
    """The configured category of every corpus file, in `input_shards` order (`exclude`: the
    output dir, skipped as there)."""
    return [i.category for i in config.inputs for _ in corpus_files(i.path, exclude=exclude)]


def record_category(record: dict, given: str | None, default: str) -> str:
    category = given or record.get("category")
    return category if isinstance(category, str) and category else default


def record_quality(record: dict, field_name: str | None) -> float:
    """The record's score, NaN when missing or not a finite non-negative number."""
    if field_name is None:
        return 1.0
    value = record.get(field_name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and value >= 0 else math.nan


def take_census(
    config: MixConfig,
    progress: bool,
    shards: list[tuple[str, Path]] | None = None,
    given: list[str | None] | None = None,
) -> Census:
    """The counting pass (over `shards` and their configured categories `given`, default:
    the configured inputs')."""
    if shards is None or given is None:
        shards = input_shards([i.path for i in config.inputs])
        given = file_categories(config)
    count = _token_counter(config.tokenizer)
    names: dict[str, int] = {}
    columns: dict[str, list] = {"shard": [], "category": [], "tokens": [], "quality": []}
    bar = tqdm(desc="mix: counting", unit="doc", disable=not progress)
    for index, (_, path) in enumerate(shards):
        stats = ShardStats(input=str(path))
        texts = []
        for _, record in shard_records(path, stats, None):
            category = record_category(record, given[index], config.default_category)
            columns["shard"].append(index)
            columns["category"].append(names.setdefault(category, len(names)))
            columns["quality"].append(record_quality(record, config.quality_field))
            texts.append(record["text"])
            if len(texts) == _COUNT_BATCH:
                columns["tokens"] += count(texts)
                bar.update(len(texts))
                texts = []
        columns["tokens"] += count(texts)
        bar.update(len(texts))
    bar.close()
    quality = np.array(columns["quality"], dtype=np.float64)
    return Census(
        shards=[name for name, _ in shards],
        shard_of=np.array(columns["shard"], dtype=np.int64),
        category=np.array(columns["category"], dtype=np.int64),
        tokens=np.array(columns["tokens"], dtype=np.float64),
        quality=quality,
        categories=list(names),
        unusable=int(np.isnan(quality).sum()),
    )


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class CategoryPlan:
    documents: int
    tokens_before: float
    weight: float
    target_tokens: float
    documents_sampled: int = 0
    tokens_after: float = 0.0
    epochs: float = 0.0
    capped: bool = False


def plan_copies(census: Census, config: MixConfig) -> tuple[np.ndarray, dict[str, CategoryPlan]]:
    """Copies of every document and the per-category numbers for the report."""
    usable = ~np.isnan(census.quality)
    tokens = {
        name: float(census.tokens[(census.category == i) & usable].sum())
        for i, name in enumerate(census.categories)
    }
    tokens = {c: n for c, n in tokens.items() if n > 0}
    targets = category_targets(tokens, config)
    budget = sum(targets.values()) or 1.0
    copies = np.zeros(len(census.tokens), dtype=np.int64)
    plans: dict[str, CategoryPlan] = {}
    for index, name in enumerate(census.categories):
        rows = np.flatnonzero((census.category == index) & usable)
        lengths = census.tokens[rows]
        plan = CategoryPlan(
            len(rows), float(lengths.sum()), targets.get(name, 0.0) / budget, targets.get(name, 0.0)
        )
        weights = (
            np.ones(len(rows))
            if config.quality_field is None
            else document_weights(census.quality[rows], config)
        )
        expected = expected_copies(lengths, weights, plan.target_tokens, config.max_epochs)
        copies[rows] = systematic_copies(expected, lengths, category_seed(config.seed, name))
        plan.documents_sampled = int((copies[rows] > 0).sum())
        plan.tokens_after = float(np.dot(copies[rows], lengths))
        plan.epochs = plan.tokens_after / plan.tokens_before if plan.tokens_before else 0.0
        plan.capped = float(np.dot(expected, lengths)) < plan.target_tokens * (1 - 1e-9)
        plans[name] = plan
    return copies, plans


# --- the write pass ----------------------------------------------------------------------------


def _mix_shard(
    path: Path,
    shard: Path,
    rejects_path: Path,
    stats: ShardStats,
    *,
    copies: dict[str, list[int]],
    category: dict[str, str | None],
    default_category: str,
    quality_field: str | None,
    progress: bool,
) -> None:
    """Write every document of one input `copies` times: pass k writes the documents sampled
    more than k times. Unsampled documents are counted (and listed) as rejected."""
    name = shard.name.removesuffix(".jsonl.zst")
    counts, given = copies[name], category[name]
    out, rejects = JsonlZstWriter(shard), JsonlZstWriter(rejects_path)
    passes = max(counts, default=0)
    valid = 0  # valid records read in the first pass
    bar = tqdm(desc=f"mix {path.name}", unit="doc", disable=not progress)
    with committed(out, rejects):
        try:
            for k in range(max(passes, 1)):
                # Only the first pass counts reads and rejects; later passes re-read the records.
                pass_stats = stats if k == 0 else ShardStats(input=str(path))
                pass_rejects = rejects if k == 0 else None
                records = shard_records(path, pass_stats, pass_rejects)
                for number, (line, record) in enumerate(records):
                    if k == 0:
                        valid = number + 1
                    if number >= len(counts):
                        raise InputError(
                            f"{path} changed while it was being mixed; run mix again with "
                            "--overwrite"
                        )
                    if counts[number] > k:
                        record["category"] = record_category(record, given, default_category)
                        out.write(record)
                    elif k == 0 and counts[number] == 0:
                        reason = NOT_SAMPLED
                        if math.isnan(record_quality(record, quality_field)):
                            reason = f"{quality_field}: missing or not a number >= 0"
                        stats.reasons[reason] += 1
                        rejects.write({"file": str(path), "line": line, "reason": reason})
                    bar.update(1)
        finally:
            bar.close()
        if out.count != sum(counts) or valid != len(counts):
            raise InputError(
                f"{path} changed while it was being mixed ({len(counts)} records counted, "
                f"{valid} read now); run mix again with --overwrite"
            )
    stats.kept = sum(1 for c in counts if c > 0)
    stats.rejected = stats.read - stats.kept
    stats.extra = {"written": out.count}


def mix_corpus(
    config: MixConfig,
    out: str | Path,
    *,
    seed: int | None = None,
    workers: int = 1,
    executor: Executor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample the configured inputs into `out` (shards, rejects, report.json, report.md).

    `seed` overrides `config.seed`. The same inputs, config and seed give the same output; a
    re-run into the same `out` with them resumes, any other is refused (`overwrite` redoes it;
    see `chuan.data.shards.StageRun`).
    """
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    files: list[Path] = []
    given: list[str | None] = []  # the configured category of each file
    for item in config.inputs:
        found = corpus_files(item.path, exclude=out)
        files += found
        given += [item.category] * len(found)
    shards = [(shard_name(i, p), p) for i, p in enumerate(files)]
    settings = asdict(config)
    run = StageRun(
        None,
        out,
        stage="mix",
        settings=settings,
        overwrite=overwrite,
        shards=shards,
        global_plan=True,
    )
    with run:
        return _mix(
            config, out, shards, given, workers=workers, executor=executor, progress=progress
        )


def _mix(
    config: MixConfig,
    out: str | Path,
    shards: list[tuple[str, Path]],
    given: list[str | None],
    *,
    workers: int,
    executor: Executor | None,
    progress: bool,
) -> dict[str, Any]:
    census = take_census(config, progress, shards, given)
    copies, plans = plan_copies(census, config)
    work = functools.partial(
        _mix_shard,
        copies={
            name: copies[census.shard_of == i].tolist() for i, name in enumerate(census.shards)
        },
        category=dict(zip(census.shards, given, strict=True)),
        default_category=config.default_category,
        quality_field=config.quality_field,
        progress=progress,
    )
    stats = run_shards(None, out, work, workers=workers, shards=shards, executor=executor)
    report = {
        **totals(stats),
        "written": sum(s.extra["written"] for s in stats),
        "quality_unusable": census.unusable,
        "config": asdict(config),
        "tokens_before": float(sum(p.tokens_before for p in plans.values())),
        "tokens_after": float(sum(p.tokens_after for p in plans.values())),
        "categories": {name: asdict(plan) for name, plan in sorted(plans.items())},
        "per_shard": [s.to_json() for s in stats],
    }
    write_report(out, report, _markdown(report))
    return report


def _markdown(report: dict) -> str:
    rows = [
        f"| {name} | {p['documents']} | {p['tokens_before']:,.0f} | {p['weight']:.4f} | "
        f"{p['target_tokens']:,.0f} | {p['tokens_after']:,.0f} | {p['epochs']:.3f} | "
        f"{'yes' if p['capped'] else ''} |"
        for name, p in report["categories"].items()
    ]
    config = report["config"]
    return "\n".join(
        [
            f"# Mix ({config['method']}, seed {config['seed']})",
            "",
            f"{report['read']} records read, {report['kept']} sampled ({report['written']} "
            f"written with repeats), {report['rejected']} not written; tokens "
            f"{report['tokens_before']:,.0f} -> {report['tokens_after']:,.0f}.",
            "",
            "| category | documents | tokens before | weight | target | tokens after | epochs "
            "| capped |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
