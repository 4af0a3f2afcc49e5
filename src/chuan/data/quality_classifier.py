"""Document quality scores from a hashed n-gram linear classifier.

Baichuan scores documents rather than only dropping them (Baichuan 2 technical report,
arXiv:2309.10305, §2.1): a score becomes a sampling weight in `chuan data mix`. The quality
model (`train_quality_model`, `score_corpus`) is logistic regression with L2 on hashed
features, trained on curated "good" text against "bad" text. Features are character 1-3-grams
(enough for Chinese, where a character is nearly a word) plus word 1-2-grams of the non-CJK
words (English; a Chinese clause is never one "word", as `\\W` splitting would make it), hashed
into 2^20 buckets by a stable 64-bit polynomial hash computed with numpy (Python's `hash` is
salted per process, so it cannot be used), counted, log-scaled and L2-normalised per document.
The model dir holds `weights.safetensors` and `config.json` (feature spec, buckets, version):
no pickle.

The other offline scorer, perplexity under a language model, is `chuan.data.quality_lm`; both
add one float field to every record, run through `chuan.data.shards.run_shards` (resumable,
rejects counted, every input field kept) and write the report built here
(`scoring_report`, `write_scoring_report`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from chuan.data.executor import Executor
from chuan.data.shards import (
    JsonlZstWriter,
    ShardStats,
    StageRun,
    committed,
    dir_fingerprint,
    run_shards,
    shard_records,
    totals,
)
from chuan.documents import iter_documents
from chuan.errors import InputError, MissingError
from chuan.fileio import atomic_dir, write_report

MODEL_FORMAT = "chuan-quality-linear"
MODEL_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
HISTOGRAM_BINS = 20

_MASK64 = (1 << 64) - 1
_POLY = 0x100000001B3  # odd, so it has an inverse modulo 2^64
_POLY_INV = pow(_POLY, -1, 1 << 64)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
# Runs of word characters that are not CJK: English words, numbers, other alphabets.
_WORD = re.compile(f"[^\\W{_CJK}]+")
_SPACE = re.compile(r"\s+")


# --- features ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """How text becomes hashed features; saved in the model's `config.json`."""

    buckets: int = 1 << 20
    char_ngrams: tuple[int, ...] = (1, 2, 3)
    word_ngrams: tuple[int, ...] = (1, 2)
    max_chars: int = 20_000  # only the head of a very long document is read
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.buckets < 2 or self.buckets & (self.buckets - 1):
            raise InputError(f"buckets must be a power of two, got {self.buckets}")
        if not self.char_ngrams and not self.word_ngrams:
            raise InputError("give at least one of char_ngrams, word_ngrams")
        if any(n < 1 for n in (*self.char_ngrams, *self.word_ngrams)):
            raise InputError("n-gram orders must be >= 1")


def _splitmix(values: np.ndarray, salt: int) -> np.ndarray:
    """SplitMix64's finaliser: spreads polynomial hashes evenly over the buckets."""
    z = values ^ np.uint64(salt * 0x9E3779B97F4A7C15 & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _powers(base: int, count: int) -> np.ndarray:
    """`base**0 .. base**(count-1)` modulo 2^64 (uint64 products wrap)."""
    out = np.full(count, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


def span_hashes(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Polynomial hash `sum(codes[j] * P**(end-1-j))` mod 2^64 of every span `[start, end)`.

    One prefix sum of `codes[j] * P**-j` serves spans of every length, so char n-grams and
    words of any length are hashed without a Python loop.
    """
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
    np.cumsum(codes * _powers(_POLY_INV, len(codes)), dtype=np.uint64, out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * _powers(_POLY, len(codes))[ends - 1]


def normalize_text(text: str, spec: FeatureSpec) -> str:
    """The head of the text, whitespace runs as one space, lowercased if the spec says so."""
    text = _SPACE.sub(" ", text[: spec.max_chars]).strip()
    return text.lower() if spec.lowercase else text


def feature_buckets(text: str, spec: FeatureSpec) -> np.ndarray:
    """The bucket of every char n-gram and word n-gram occurrence of `text` (with repeats)."""
    text = normalize_text(text, spec)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    parts = []
    for n in spec.char_ngrams:
        starts = np.arange(max(len(codes) - n + 1, 0))
        parts.append(_splitmix(span_hashes(codes, starts, starts + n), salt=n))
    if spec.word_ngrams:
        spans = np.array([m.span() for m in _WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)
        words = span_hashes(codes, spans[:, 0], spans[:, 1])
        for n in spec.word_ngrams:
            combined = np.zeros(max(len(words) - n + 1, 0), dtype=np.uint64)
            for k in range(n):  # an order-sensitive mix of n consecutive word hashes
                combined = combined * np.uint64(_POLY) + words[k : len(words) - n + 1 + k]
            parts.append(_splitmix(combined, salt=100 + n))
    return np.concatenate(parts) & np.uint64(spec.buckets - 1)


def featurize(text: str, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Sparse feature vector `(bucket ids, values)`: `1 + log(count)`, L2-normalised, so long
    and short documents are on one scale."""
    ids, counts = np.unique(feature_buckets(text, spec), return_counts=True)
    values = 1.0 + np.log(counts)
    norm = np.linalg.norm(values)
    return ids.astype(np.int64), (values / norm if norm else values).astype(np.float32)


@dataclass
class SparseBatch:
    """Documents as one bag of features each (the `embedding_bag` layout)."""

    ids: torch.Tensor  # int64 [total features]
    values: torch.Tensor  # float32 [total features]
    offsets: torch.Tensor  # int64 [documents], start of each document

    @classmethod
    def from_texts(cls, texts: Iterable[str], spec: FeatureSpec) -> SparseBatch:
        pairs = [featurize(t, spec) for t in texts]
        lengths = [len(ids) for ids, _ in pairs]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if pairs else np.zeros(0)
        return cls(
            ids=torch.from_numpy(np.concatenate([p[0] for p in pairs] or [np.zeros(0, np.int64)])),
            values=torch.from_numpy(
                np.concatenate([p[1] for p in pairs] or [np.zeros(0, np.float32)])
            ),
            offsets=torch.as_tensor(offsets, dtype=torch.int64),
        )

    def __len__(self) -> int:
        return len(self.offsets)

    def subset(self, rows: np.ndarray) -> SparseBatch:
        """The documents `rows`, in that order."""
        ends = torch.cat([self.offsets[1:], torch.tensor([len(self.ids)])])
        pieces = [torch.arange(int(self.offsets[r]), int(ends[r])) for r in rows]
        index = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)
        lengths = torch.tensor([len(p) for p in pieces], dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
        return SparseBatch(self.ids[index], self.values[index], offsets[: len(rows)])


# --- the model ---------------------------------------------------------------------------------


@dataclass
class QualityModel:
    """Logistic regression over hashed features: `P(good) = sigmoid(w . x + b)`."""

    spec: FeatureSpec
    weight: torch.Tensor  # float32 [buckets]
    bias: torch.Tensor  # float32 [1]
    meta: dict

    def logits(self, batch: SparseBatch) -> torch.Tensor:
        bags = torch.nn.functional.embedding_bag(
            batch.ids,
            self.weight[:, None],
            batch.offsets,
            mode="sum",
            per_sample_weights=batch.values,
        )
        return bags[:, 0] + self.bias

    def predict(self, texts: list[str]) -> np.ndarray:
        """Probability that each text is good, float64."""
        with torch.no_grad():
            logits = self.logits(SparseBatch.from_texts(texts, self.spec))
        return torch.sigmoid(logits.double()).numpy()

    def save(self, model_dir: str | Path) -> None:
        """`weights.safetensors` + `config.json` into an existing dir."""
        model_dir = Path(model_dir)
        save_file(
            {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
            model_dir / WEIGHTS_FILE,
        )
        config = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "features": {**asdict(self.spec), "hash": "poly64-splitmix64"},
            **self.meta,
        }
        (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", "utf-8")

    @classmethod
    def load(cls, model_dir: str | Path) -> QualityModel:
        model_dir = Path(model_dir)
        config_path = model_dir / CONFIG_FILE
        if not config_path.is_file():
            raise MissingError(f"{model_dir} is not a quality model dir (no {CONFIG_FILE})")
        config = json.loads(config_path.read_text("utf-8"))
        if config.get("format") != MODEL_FORMAT or config.get("version") != MODEL_VERSION:
            raise InputError(
                f"{config_path}: expected format {MODEL_FORMAT!r} version {MODEL_VERSION}, "
                f"got {config.get('format')!r} version {config.get('version')}"
            )
        features = {k: v for k, v in config["features"].items() if k != "hash"}
        spec = FeatureSpec(
            **{**features, **{k: tuple(features[k]) for k in ("char_ngrams", "word_ngrams")}}
        )
        tensors = load_file(model_dir / WEIGHTS_FILE)
        meta = {k: v for k, v in config.items() if k not in ("format", "version", "features")}
        return cls(spec, tensors["weight"], tensors["bias"], meta)


@functools.lru_cache(maxsize=4)
def _cached_model(model_dir: str) -> QualityModel:
    """One load per process and model dir (a pool worker scores many shards)."""
    return QualityModel.load(model_dir)


# --- metrics -----------------------------------------------------------------------------------


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties counted half."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        raise InputError("AUC needs both classes")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # Tied scores share the mean of the ranks they span.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """AUC, and accuracy / precision / recall of "good" at `threshold`."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(scores) >= threshold
    true_pos = int((predicted & labels).sum())
    return {
        "auc": roc_auc(labels, scores),
        "threshold": threshold,
        "accuracy": float((predicted == labels).mean()),
        "precision": true_pos / max(int(predicted.sum()), 1),
        "recall": true_pos / max(int(labels.sum()), 1),
        "examples": int(len(labels)),
        "good": int(labels.sum()),
    }


# --- training ----------------------------------------------------------------------------------


def _read_texts(paths, skipped: list[str]) -> list[str]:
    """Texts of every valid document; bad records are noted in `skipped`, never fatal."""
    return [d.text for d in iter_documents(paths, on_error=lambda e: skipped.append(str(e)))]


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: `fraction` of each class held out (at least one of each)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for value in (False, True):
        rows = rng.permutation(np.flatnonzero(labels == value))
        count = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        held.append(rows[:count])
        train.append(rows[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def fit_logistic(
    batch: SparseBatch, labels: np.ndarray, spec: FeatureSpec, *, l2: float, max_iter: int
) -> QualityModel:
    """Full-batch L-BFGS on mean log-loss + `l2/2 * |w|^2` (convex: a deterministic optimum)."""
    model = QualityModel(
        spec,
        torch.zeros(spec.buckets, requires_grad=True),
        torch.zeros(1, requires_grad=True),
        meta={},
    )
    target = torch.as_tensor(labels, dtype=torch.float32)
    optimizer = torch.optim.LBFGS(
        [model.weight, model.bias], max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.logits(batch), target)
        loss = loss + 0.5 * l2 * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    model.weight = model.weight.detach()
    model.bias = model.bias.detach()
    return model


def train_quality_model(
    good,
    bad,
    out: str | Path,
    *,
    seed: int = 0,
    holdout: float = 0.2,
    l2: float = 1e-4,
    max_iter: int = 200,
    spec: FeatureSpec | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the good-vs-bad classifier and write the model dir `out`; returns the report.

    `good` and `bad` are corpus files or dirs (any format `chuan.documents` reads). A seeded,
    stratified `holdout` fraction is kept out of training and reported (AUC, precision and
    recall of "good" at 0.5); the saved model is the one those numbers describe.
    """
    spec = spec or FeatureSpec()
    skipped: list[str] = []
    good_texts, bad_texts = _read_texts(good, skipped), _read_texts(bad, skipped)
    if len(good_texts) < 2 or len(bad_texts) < 2:
        why = f"; {len(skipped)} bad records skipped, e.g. {skipped[0]}" if skipped else ""
        raise InputError(
            f"need at least 2 good and 2 bad documents, got {len(good_texts)} and "
            f"{len(bad_texts)}{why}"
        )
    labels = np.array([True] * len(good_texts) + [False] * len(bad_texts))
    batch = SparseBatch.from_texts(good_texts + bad_texts, spec)
    train_rows, held_rows = split_holdout(labels, holdout, seed)
    model = fit_logistic(
        batch.subset(train_rows), labels[train_rows], spec, l2=l2, max_iter=max_iter
    )
    with torch.no_grad():
        scores = torch.sigmoid(model.logits(batch.subset(held_rows)).double()).numpy()
        train_scores = torch.sigmoid(model.logits(batch.subset(train_rows)).double()).numpy()
    report = {
        "seed": seed,
        "l2": l2,
        "documents": {"good": len(good_texts), "bad": len(bad_texts), "skipped": len(skipped)},
        "skipped_examples": skipped[:10],
        "held_out": binary_metrics(labels[held_rows], scores),
        "train": binary_metrics(labels[train_rows], train_scores),
    }
    model.meta = {"trained": {k: report[k] for k in ("seed", "l2", "documents", "held_out")}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save(tmp)
        write_report(tmp, report, _training_markdown(report))
    return report


def _training_markdown(report: dict) -> str:
    rows = [
        f"| {name} | {m['examples']} | {m['auc']:.4f} | {m['precision']:.3f} | "
        f"{m['recall']:.3f} | {m['accuracy']:.3f} |"
        for name, m in (("held out", report["held_out"]), ("train", report["train"]))
    ]
    docs = report["documents"]
    return "\n".join(
        [
            "# Quality model",
            "",
            f"{docs['good']} good and {docs['bad']} bad documents ({docs['skipped']} bad records "
            f"skipped), seed {report['seed']}, L2 {report['l2']}.",
            "",
            "| split | documents | AUC | precision@0.5 | recall@0.5 | accuracy@0.5 |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


# --- scoring stages (the report is shared with quality_lm) ------------------------------------


def histogram_counts(values: list[float], low: float, high: float) -> list[int]:
    """Counts of `values` (clipped to the range) in `HISTOGRAM_BINS` equal bins."""
    counts, _ = np.histogram(np.clip(values, low, high), bins=HISTOGRAM_BINS, range=(low, high))
    return counts.tolist()


def chunks(items: Iterator, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items (the last may be shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _score_shard(
    path: Path,
    shard: Path,
    rejects_path: Path,
    stats: ShardStats,
    *,
    model_dir: str,
    field: str,
    batch_docs: int,
    progress: bool,
) -> None:
    """Add `field` = P(good) to every valid record of one input file."""
    model = _cached_model(model_dir)
    out, rejects = JsonlZstWriter(shard), JsonlZstWriter(rejects_path)
    scores: list[float] = []
    records = (record for _, record in shard_records(path, stats, rejects))
    bar = tqdm(desc=f"quality {path.name}", unit="doc", disable=not progress)
    with committed(out, rejects):
        try:
            for chunk in chunks(records, batch_docs):
                texts = [r["text"] for r in chunk]
                for record, score in zip(chunk, model.predict(texts), strict=True):
                    record[field] = float(score)
                    out.write(record)
                    scores.append(float(score))
                bar.update(len(chunk))
        finally:
            bar.close()
    stats.kept = out.count
    stats.extra = {"histogram": histogram_counts(scores, 0.0, 1.0), "score_sum": float(sum(scores))}


def score_corpus(
    inputs,
    model_dir: str | Path,
    out: str | Path,
    *,
    field: str = "quality",
    seed: int = 0,
    workers: int = 1,
    executor: Executor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Add a float `field` (probability of good) to every record of `inputs`; write `out`.

    Output: `out/shards`, `out/rejects`, `out/report.json`, `out/report.md` and a histogram
    of the scores, `out/quality_hist.png`. Scoring is deterministic; `seed` is recorded only.
    A re-run with the same model (files unchanged), field, seed and inputs resumes; any other
    is refused (`overwrite` redoes it; see `chuan.data.shards.StageRun`).
    """
    model = QualityModel.load(model_dir)  # fail early, before any shard starts
    work = functools.partial(
        _score_shard,
        model_dir=str(Path(model_dir).resolve()),
        field=field,
        batch_docs=256,
        progress=progress,
    )
    settings = {"scorer": "quality", "model": dir_fingerprint(model_dir), "field": field}
    settings["seed"] = seed
    with StageRun(
        inputs, out, stage="quality score", settings=settings, overwrite=overwrite
    ) as run:
        stats = run_shards(inputs, out, work, workers=workers, shards=run.shards, executor=executor)
        report = scoring_report(stats, field, seed, model_dir, model.meta, (0.0, 1.0))
        write_scoring_report(Path(out), report, f"{field}_hist.png", f"P(good) ({field})")
    return report


def scoring_report(
    stats: list[ShardStats],
    field: str,
    seed: int,
    model_dir: str | Path,
    model_meta: dict,
    value_range: tuple[float, float],
) -> dict[str, Any]:
    """The stage report: totals, the summed histogram and the mean of the scored values."""
    histogram = np.sum([s.extra["histogram"] for s in stats], axis=0).tolist() if stats else []
    scored = sum(histogram)
    return {
        **totals(stats),
        "field": field,
        "seed": seed,
        "model": {"dir": str(model_dir), **model_meta},
        "scored": scored,
        "mean": sum(s.extra["score_sum"] for s in stats) / scored if scored else None,
        "histogram": {"range": list(value_range), "counts": histogram},
        "per_shard": [s.to_json() for s in stats],
    }


def write_scoring_report(out: Path, report: dict, plot_name: str, xlabel: str) -> None:
    """`report.json`, `report.md` and, when anything was scored, the histogram plot."""
    if report["scored"]:
        low, high = report["histogram"]["range"]
        _plot_histogram(report["histogram"]["counts"], low, high, xlabel, out / plot_name)
        report["plot"] = plot_name
    mean = "n/a" if report["mean"] is None else f"{report['mean']:.4f}"
    reasons = "".join(f"| {k} | {v} |\n" for k, v in report["reasons"].items()) or "| - | 0 |\n"
    summary = (
        f"# Scores: `{report['field']}`\n\n"
        f"{report['read']} records read, {report['kept']} scored and kept, "
        f"{report['rejected']} rejected; mean {mean}.\n\n"
        f"| rejected because | records |\n|---|---|\n{reasons}"
    )
    write_report(out, report, summary)


def _plot_histogram(counts: list[int], low: float, high: float, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(low, high, len(counts) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
