"""`chuan data dedup`: exact and MinHash-LSH near-duplicate removal, clusters, sentence dedup.

The stage runs in three passes of tasks on an executor (`chuan.data.executor`: local
processes or Ray), so no pass needs the whole corpus in one place; the driver keeps only
per-document columns (the design of huggingface/datatrove's
`src/datatrove/pipeline/dedup/minhash.py`, with its bucket step as keyed partitions):

1. **Signatures** (a task per input shard). For each valid record: the shingle form of its
   text (`chuan.data.minhash`), a 128-bit digest of that form (exact dedup), its MinHash
   signature, its `quality` field, the 64-bit keys of its sentences and an 80-character
   preview. One `OUT/work/signatures/<shard>.npz` per input shard, then a `.done.json` marker:
   a re-run reuses every finished shard (resume is per whole shard, as in datatrove:
   huggingface/datatrove#316).
2. **Decisions** (a task per partition of the keys, `key % partitions`). Band tasks join every
   document to the first one sharing each of its LSH band keys and return the connected
   components as a compressed forest; the forests of all partitions give the corpus's
   components, the same for any number of partitions. A cluster is a component of "share an
   LSH bucket", which contains "exactly equal" (equal forms have equal signatures: one
   semantics, where text-dedup's Spark and Python paths disagree, ChenghaoMou/text-dedup#71,
   #88); no exact-Jaccard check follows. Digest tasks mark the exact copies. The kept
   representative of a cluster is its member with the highest numeric `quality`, the first in
   input order when no member has one or on ties. Then sentence-key tasks, over the kept
   documents in input order, drop a sentence whose normalised form occurs more than
   `sentence_max_repeats` times everywhere but at its first occurrence.
3. **Filter** (a task per shard, `chuan.data.shards.run_shards`). Each shard is read again and
   written: kept records with every input field and `meta.cluster_id` (the 0-based input
   position, over all inputs, of the cluster's representative), `meta.cluster_size` and
   `meta.sentence_dups_removed` (top-level fields instead when the record's `meta` is not an
   object); removed records go to `rejects/` with the reason and, for duplicates, the
   representative's file, line and position (`duplicate_of`).

Documents are counted once: `kept + rejected == read`, where `read` counts malformed lines too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from chuan.data import minhash
from chuan.data.executor import Executor, LocalExecutor
from chuan.data.shards import (
    JsonlZstWriter,
    ShardStats,
    StageRun,
    committed,
    run_shards,
    shard_records,
    totals,
)
from chuan.errors import InputError
from chuan.fileio import atomic_file, write_atomic, write_report

SENTENCE_MAX_REPEATS = 3
# Sentences shorter than this (normalised characters) are never deduplicated ("Yes.", "谢谢。").
SENTENCE_MIN_CHARS = 10
PREVIEW_CHARS = 80
EXAMPLE_CLUSTERS = 5
EXAMPLE_MEMBERS = 5
# Documents per batch: enough to amortise Arrow's and numpy's per-call cost.
_BATCH_DOCS = 256
# Sentence ends: CJK and ASCII terminators and newlines; "." and ";" only before whitespace.
_SENTENCE_END = re.compile(r"(?<=[。！？；…!?\n])|(?<=[.;])(?=\s)")

KEEP, EXACT, NEAR = 0, 1, 2
_REASONS = {EXACT: "exact duplicate", NEAR: "near duplicate"}
_STATUS_NAMES = {KEEP: "kept", EXACT: "exact duplicate", NEAR: "near duplicate"}
EMPTIED_REASON = "only repeated sentences"


@dataclass(frozen=True)
class DedupConfig:
    """Every setting that changes the stage's output (recorded in `OUT/run.json`)."""

    threshold: float
    num_perm: int
    ngram: int | None
    bands: int
    rows: int
    sentence_max_repeats: int
    sentence_min_chars: int
    seed: int

    def signature_key(self) -> dict[str, Any]:
        """The settings of pass 1: a finished signature shard is reused only if they match."""
        return {
            "num_perm": self.num_perm,
            "ngram": self.ngram,
            "seed": self.seed,
            "sentences": self.sentence_max_repeats > 0,
            "sentence_min_chars": self.sentence_min_chars,
            # Shingle forms on code points, digests of their UTF-32 bytes (chuan 0.1 used UTF-8).
            "forms": 2,
        }


def dedup_corpus(
    inputs,
    out: str | Path,
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int | None = None,
    bands: int | None = None,
    rows: int | None = None,
    sentence_max_repeats: int = SENTENCE_MAX_REPEATS,
    sentence_min_chars: int = SENTENCE_MIN_CHARS,
    seed: int = 0,
    workers: int | None = None,
    executor: Executor | None = None,
    partitions: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Deduplicate the corpus files under `inputs` into `out`; returns the report.

    Every pass runs on `executor` (default: `workers` local processes, all cores when None):
    signatures one task per input file, the LSH bands in `partitions` tasks (default: the
    executor's workers; the output is the same for any number), the final filter one task per
    file.
    `ngram` None shingles by 5 characters (CJK documents) or 5 words (others). `bands` and
    `rows` default to the datasketch-style optimum for (`threshold`, `num_perm`); give both to
    choose the S-curve yourself. `sentence_max_repeats` 0 turns sentence dedup off.
    A re-run into the same `out` with the same settings and inputs resumes; any other is
    refused (`overwrite` redoes it from scratch; see `chuan.data.shards.StageRun`).
    """
    check_settings(threshold, num_perm, ngram, bands, rows, sentence_max_repeats,
                   sentence_min_chars, seed)  # fmt: skip
    if bands is None:
        bands, rows = minhash.optimal_bands(threshold, num_perm)
    params = DedupConfig(
        threshold, num_perm, ngram, bands, rows, sentence_max_repeats, sentence_min_chars, seed
    )
    out = Path(out)
    executor = executor or LocalExecutor(workers or _available_cores(), progress)
    if partitions is not None and partitions < 1:
        raise InputError(f"partitions must be at least 1, got {partitions}")
    run = StageRun(
        inputs,
        out,
        stage="dedup",
        settings=asdict(params),
        overwrite=overwrite,
        markers=("shards/{name}.done", "work/signatures/{name}.done.json"),
        global_plan=True,
    )
    with run:
        return _dedup(run.shards, out, params, executor, partitions or executor.workers, progress)


def check_settings(
    threshold: float,
    num_perm: int,
    ngram: int | None,
    bands: int | None,
    rows: int | None,
    sentence_max_repeats: int,
    sentence_min_chars: int,
    seed: int,
) -> None:
    """Every setting in its range, and bands x rows within the permutations, before any work
    (an `InputError` naming the setting)."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be in (0, 1), got {threshold}")
    for name, value, low in (
        ("num_perm", num_perm, 1),
        ("ngram", ngram, 1),
        ("bands", bands, 1),
        ("rows", rows, 1),
        ("sentence_max_repeats", sentence_max_repeats, 0),
        ("sentence_min_chars", sentence_min_chars, 0),
        ("seed", seed, 0),
    ):
        if value is not None and (isinstance(value, bool) or value < low):
            raise InputError(f"{name} must be an integer >= {low}, got {value}")
    if (bands is None) != (rows is None):
        raise InputError("give both bands and rows, or neither")
    if bands is not None and bands * rows > num_perm:
        raise InputError(
            f"{bands} bands x {rows} rows = {bands * rows} exceeds the {num_perm} permutations "
            "(--num-perm); lower --bands or --rows, or raise --num-perm"
        )


def _dedup(
    shards: list[tuple[str, Path]],
    out: Path,
    params: DedupConfig,
    executor: Executor,
    partitions: int,
    progress: bool,
) -> dict[str, Any]:
    bands, rows = params.bands, params.rows
    curve = minhash.s_curve(bands, rows)
    if progress:
        print(f"dedup: {bands} bands x {rows} rows, P(candidate | J): {curve}", file=sys.stderr)

    timing: dict[str, float] = {}
    start = time.perf_counter()
    executor.preflight([path for _, path in shards], out)
    computed, reused = _signature_pass(shards, out, params, executor)
    timing["signatures_s"] = time.perf_counter() - start

    start = time.perf_counter()
    corpus = _load_columns(shards, out)
    decisions = _decisions(corpus, shards, out, params, executor, partitions)
    _write_decisions(out, shards, corpus, decisions)
    timing["decisions_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if progress:
        print(f"dedup: writing {len(shards)} shards", file=sys.stderr)
    stats = run_shards(None, out, _filter_shard, shards=shards, executor=executor)
    timing["filter_s"] = time.perf_counter() - start

    report = _report(params, curve, stats, corpus, decisions, shards, out, timing)
    report["signatures"] = {"computed": computed, "reused": reused}
    report["workers"] = executor.workers
    report["partitions"] = partitions
    write_report(out, report, summary_markdown(report))
    return report


def _decisions(
    corpus: Corpus,
    shards: list[tuple[str, Path]],
    out: Path,
    params: DedupConfig,
    executor: Executor,
    partitions: int,
) -> Decisions:
    """Pass 2 as keyed tasks, each over one partition of its keys: LSH band keys (the
    clusters), exact digests (which members are exact copies), then the kept documents'
    sentence keys."""
    folder = out / "work" / "signatures"
    files = tuple(str(folder / f"{name}.npz") for name, _ in shards)
    per_shard = np.bincount(corpus.shard, minlength=len(shards))
    sentences = np.bincount(corpus.shard, weights=corpus.sentence_counts, minlength=len(shards))
    offsets = tuple(int(x) for x in np.cumsum(per_shard) - per_shard)
    firsts = tuple(int(x) for x in np.cumsum(sentences) - sentences)

    def tasks(status: str = "") -> list[KeyedTask]:
        return [
            KeyedTask(p, partitions, files, offsets, firsts, params, status)
            for p in range(partitions)
        ]

    forests = executor.map(band_partition, tasks(), desc="band partitions")
    copies = executor.map(exact_partition, tasks(), desc="exact partitions")
    components = components_of(forests, len(corpus.line))
    status, representative, sizes = decide(corpus, components, np.concatenate(copies))
    drop = np.zeros(int(corpus.sentence_counts.sum()), bool)
    if params.sentence_max_repeats > 0 and len(drop):
        status_file = out / "work" / "status.npy"
        with atomic_file(status_file) as tmp, open(tmp, "wb") as f:
            np.save(f, status)
        drops = executor.map(sentence_partition, tasks(str(status_file)), desc="sentences")
        drop[np.concatenate(drops)] = True
    return Decisions(status, representative, sizes, drop)


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---------------------------------------------------------------- pass 1: signatures


def split_sentences(text: str) -> list[str]:
    """Sentence pieces whose concatenation is `text` (each keeps its terminator and the
    whitespace before it), so dropping pieces leaves the rest of the text untouched."""
    return [piece for piece in _SENTENCE_END.split(text) if piece]


def sentence_keys_of(sentences: list[str], min_chars: int = SENTENCE_MIN_CHARS) -> list[int]:
    """64-bit keys of the sentences' squeezed forms (case, width, punctuation and spaces
    ignored); 0 for sentences too short to deduplicate."""
    forms = minhash.squeezed_forms(sentences)
    short = np.diff(forms.offsets) < min_chars
    return [0 if short[i] else _digest(forms.data(i), 8)[0] or 1 for i in range(len(forms))]


def exact_digests(forms: minhash.Forms) -> list[tuple[int, int]]:
    """128-bit digests of documents' shingle forms, as two 64-bit halves."""
    return [_digest(bytes([int(c)]) + forms.data(i), 16) for i, c in enumerate(forms.by_chars)]


def _digest(data: bytes, size: int) -> tuple[int, ...]:
    digest = hashlib.blake2b(data, digest_size=size).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "little") for i in range(0, size, 8))


def quality_of(record: dict) -> float:
    """The record's numeric `quality`, NaN when it has none (such a record never outranks one
    that has a score)."""
    value = record.get("quality")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


def _signature_pass(
    shards: list[tuple[str, Path]], out: Path, params: DedupConfig, executor: Executor
) -> tuple[int, int]:
    """Compute the missing signature shards on `executor`; (computed, reused)."""
    folder = out / "work" / "signatures"
    todo = [
        (name, path, folder, params)
        for name, path in shards
        if not _signature_done(folder / f"{name}.done.json", params)
    ]
    executor.map(_signature_task, todo, desc="signatures", docs=int)
    return len(todo), len(shards) - len(todo)


def _signature_task(task: tuple[str, Path, Path, DedupConfig]) -> int:
    return signature_shard(*task)


def _signature_done(marker: Path, params: DedupConfig) -> bool:
    return marker.is_file() and json.loads(marker.read_text())["params"] == params.signature_key()


def signature_shard(name: str, path: Path, folder: Path, params: DedupConfig) -> int:
    """Pass 1 over one input file: writes `<name>.npz` then `<name>.done.json`; returns the
    number of valid records."""
    hasher = minhash.MinHasher(params.num_perm, params.seed)
    stats = ShardStats(input=str(path))
    columns: dict[str, list] = {k: [] for k in ("line", "exact", "quality", "preview")}
    sentence_keys: list[int] = []
    sentence_counts: list[int] = []
    signatures = []
    records = shard_records(path, stats, None)
    while batch := list(itertools.islice(records, _BATCH_DOCS)):
        texts = [record["text"] for _, record in batch]
        columns["line"].extend(line for line, _ in batch)
        columns["quality"].extend(quality_of(record) for _, record in batch)
        columns["preview"].extend(text[:PREVIEW_CHARS] for text in texts)
        signatures.append(
            _signature_batch(texts, hasher, params, columns, sentence_keys, sentence_counts)
        )
    arrays = {
        "signatures": np.concatenate(signatures or [np.zeros((0, params.num_perm), np.uint32)]),
        "line": np.array(columns["line"], np.int64),
        "exact": np.array(columns["exact"], np.uint64).reshape(-1, 2),
        "quality": np.array(columns["quality"], np.float64),
        "preview": np.array(columns["preview"], dtype=str),
        "sentence_keys": np.array(sentence_keys, np.uint64),
        "sentence_counts": np.array(sentence_counts, np.int64),
    }
    with atomic_file(folder / f"{name}.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    count = len(arrays["line"])
    marker = {"params": params.signature_key(), "documents": count}
    write_atomic(folder / f"{name}.done.json", json.dumps(marker))
    return count


def _signature_batch(
    texts: list[str],
    hasher: minhash.MinHasher,
    params: DedupConfig,
    columns: dict[str, list],
    sentence_keys_out: list[int],
    sentence_counts: list[int],
) -> np.ndarray:
    """Signatures of a batch of texts; appends their exact digests and sentence keys."""
    forms = minhash.shingle_forms(texts)
    columns["exact"].extend(exact_digests(forms))
    if params.sentence_max_repeats > 0:
        pieces = [split_sentences(text) for text in texts]
        sentence_keys_out.extend(
            sentence_keys_of([p for doc in pieces for p in doc], params.sentence_min_chars)
        )
        sentence_counts.extend(len(doc) for doc in pieces)
    else:
        sentence_counts.extend([0] * len(texts))
    return hasher.signatures(*minhash.form_hashes(forms, params.ngram))


# ---------------------------------------------------------------- pass 2: decisions


@dataclass
class Corpus:
    """Pass 1's columns for all documents, in input order (shard by shard, line by line)."""

    quality: np.ndarray  # (n,) float64, NaN = none
    shard: np.ndarray  # (n,) int32 index into the input shards
    line: np.ndarray  # (n,) int64
    sentence_counts: np.ndarray  # (n,) sentences per document (0 when sentence dedup is off)


@dataclass
class Decisions:
    """Pass 2's verdict for every document of a `Corpus`."""

    status: np.ndarray  # KEEP / EXACT / NEAR
    representative: np.ndarray  # global position of the cluster's kept document
    cluster_size: np.ndarray
    drop_sentence: np.ndarray  # one flag per sentence, in corpus order


def _load_columns(shards: list[tuple[str, Path]], out: Path) -> Corpus:
    """The per-document columns of pass 1 the driver needs; signatures, digests and sentence
    keys stay with the keyed tasks."""
    folder = out / "work" / "signatures"
    parts = [np.load(folder / f"{name}.npz") for name, _ in shards]

    def column(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    return Corpus(
        quality=column("quality"),
        shard=np.concatenate(
            [np.full(len(p["line"]), i, np.int32) for i, p in enumerate(parts)] or [np.zeros(0)]
        ).astype(np.int32),
        line=column("line"),
        sentence_counts=column("sentence_counts"),
    )


def decide(
    corpus: Corpus, components: np.ndarray, exact_duplicates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(status, representative, cluster size) of every document, given its LSH `components`
    (a label per document) and the positions of `exact_duplicates`.

    An exact duplicate has its original's signature, so it lies in its original's component;
    the components are therefore the clusters of exact and near duplicates together."""
    representative = best_in_groups(components, corpus.quality)
    positions = np.arange(len(components))
    exact = np.zeros(len(components), bool)
    exact[exact_duplicates] = True
    status = np.where(representative == positions, KEEP, np.where(exact, EXACT, NEAR)).astype(
        np.int8
    )
    sizes = np.bincount(components, minlength=len(components))[components]
    return status, representative, sizes


@dataclass(frozen=True)
class KeyedTask:
    """One partition of a keyed pass: the keys k with `k % partitions == partition`, read
    from every shard's pass-1 file."""

    partition: int
    partitions: int
    files: tuple[str, ...]  # every shard's signature file, in input order
    offsets: tuple[int, ...]  # the global position of each shard's first document
    sentence_offsets: tuple[int, ...]  # ... and of its first sentence
    params: DedupConfig
    status: str = ""  # the documents' statuses (`.npy`), for the sentence pass

    def mine(self, keys: np.ndarray) -> np.ndarray:
        return keys % np.uint64(self.partitions) == np.uint64(self.partition)


def exact_partition(task: KeyedTask) -> np.ndarray:
    """Positions of the partition's exact duplicates: documents whose 128-bit digest a better
    document (higher quality, then earlier) has too."""
    digests, quality, positions = [], [], []
    for path, offset in zip(task.files, task.offsets, strict=True):
        with np.load(path) as npz:
            exact, scores = npz["exact"].reshape(-1, 2), npz["quality"]
        mine = task.mine(exact[:, 0])
        digests.append(exact[mine])
        quality.append(scores[mine])
        positions.append(np.flatnonzero(mine) + offset)
    positions = np.concatenate(positions or [np.zeros(0, np.int64)])
    best = best_in_groups(
        _exact_groups(np.concatenate(digests or [np.zeros((0, 2), np.uint64)])),
        np.concatenate(quality or [np.zeros(0)]),
    )
    return positions[best != np.arange(len(positions))]


def sentence_partition(task: KeyedTask) -> np.ndarray:
    """Global indices of the partition's sentences to drop (`sentence_drops` over the kept
    documents' sentences whose key falls in the partition, in corpus order)."""
    status = np.load(task.status, mmap_mode="r")
    keys, active, indices = [], [], []
    for path, offset, first in zip(task.files, task.offsets, task.sentence_offsets, strict=True):
        with np.load(path) as npz:
            shard_keys, counts = npz["sentence_keys"], npz["sentence_counts"]
        mine = task.mine(shard_keys) & (shard_keys != 0)
        owner = np.repeat(np.arange(len(counts)) + offset, counts)
        keys.append(shard_keys[mine])
        active.append(status[owner[mine]] == KEEP)
        indices.append(np.flatnonzero(mine) + first)
    indices = np.concatenate(indices or [np.zeros(0, np.int64)])
    drop = sentence_drops(
        np.concatenate(keys or [np.zeros(0, np.uint64)]),
        np.concatenate(active or [np.zeros(0, bool)]),
        task.params.sentence_max_repeats,
    )
    return indices[drop]


def band_partition(task: KeyedTask) -> np.ndarray:
    """Pass 2 over one partition: (2, m) global positions (document, root), the compressed
    forest of the documents that share one of the partition's band keys with another; root
    is the smallest position of the document's component within the partition.

    A band key lives in exactly one partition, so the union of every partition's forest has
    the components of the whole corpus, whatever the number of partitions."""
    params = task.params
    keys, ids = [], []
    for path, offset in zip(task.files, task.offsets, strict=True):
        with np.load(path) as npz:
            band = minhash.band_keys(npz["signatures"], params.bands, params.rows, params.seed)
        mine = task.mine(band)
        keys.append(band[mine])
        ids.append(np.nonzero(mine)[0] + offset)
    return _forest(np.concatenate(keys or [np.zeros(0, np.uint64)]),
                   np.concatenate(ids or [np.zeros(0, np.int64)]))  # fmt: skip


def _forest(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(2, m) (document, smallest document of its component) over the graph joining every
    document to the first document of each key it shares."""
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    heads = ids[np.maximum.accumulate(np.where(first, np.arange(len(keys)), 0))]
    return components_forest(heads[~first], ids[~first])


def components_forest(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(2, m) (node, smallest node of its component) for the nodes of the edges (u, v)."""
    nodes, inverse = np.unique(np.concatenate((u, v)), return_inverse=True)
    graph = coo_matrix(
        (np.ones(len(u), np.int8), (inverse[: len(u)], inverse[len(u) :])),
        shape=(len(nodes), len(nodes)),
    )
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1 if len(labels) else 0, np.iinfo(np.int64).max)
    np.minimum.at(smallest, labels, nodes)
    return np.stack((nodes, smallest[labels]))


def components_of(forests: list[np.ndarray], count: int) -> np.ndarray:
    """A component label (its smallest position) for each of `count` documents, from the
    partitions' forests (a document in no forest is its own component)."""
    joined = np.concatenate(forests or [np.zeros((2, 0), np.int64)], axis=1)
    labels = np.arange(count)
    if joined.shape[1]:
        forest = components_forest(joined[0], joined[1])
        labels[forest[0]] = forest[1]
    return labels


def _exact_groups(digests: np.ndarray) -> np.ndarray:
    """A group label per document: equal 128-bit digests, equal label."""
    if len(digests) == 0:
        return np.zeros(0, np.int64)
    return np.unique(digests, axis=0, return_inverse=True)[1].reshape(-1)


def best_in_groups(labels: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """For each document, the position of its group's best member: highest quality (NaN lowest),
    then earliest position."""
    positions = np.arange(len(labels))
    score = np.where(np.isnan(quality), -np.inf, quality)
    order = np.lexsort((positions, -score, labels))
    ordered = labels[order]
    first = np.ones(len(order), bool)
    first[1:] = ordered[1:] != ordered[:-1]
    best = np.empty(len(order), np.int64)
    best[order] = order[first][np.cumsum(first) - 1]
    return best


def sentence_drops(keys: np.ndarray, active: np.ndarray, max_repeats: int) -> np.ndarray:
    """Which sentence occurrences to drop: among `active` occurrences, those whose key occurs
    more than `max_repeats` times, except the first. Key 0 (too short) is never dropped."""
    drop = np.zeros(len(keys), bool)
    candidates = np.flatnonzero(active & (keys != 0))
    if max_repeats <= 0 or len(candidates) == 0:
        return drop
    _, first, inverse, counts = np.unique(
        keys[candidates], return_index=True, return_inverse=True, return_counts=True
    )
    repeated = counts[inverse] > max_repeats
    not_first = np.arange(len(candidates)) != first[inverse]
    drop[candidates[repeated & not_first]] = True
    return drop


def _write_decisions(
    out: Path, shards: list[tuple[str, Path]], corpus: Corpus, decisions: Decisions
) -> None:
    """One `OUT/work/decisions/<shard>.npz` per shard, for pass 3's workers."""
    folder = out / "work" / "decisions"
    doc_ends = np.cumsum(np.bincount(corpus.shard, minlength=len(shards)))
    sentence_ends = np.concatenate(([0], np.cumsum(corpus.sentence_counts)))
    rep = decisions.representative
    write_atomic(folder / "inputs.json", json.dumps([str(p) for _, p in shards]))
    for i, (name, _) in enumerate(shards):
        lo, hi = (doc_ends[i - 1] if i else 0), doc_ends[i]
        arrays = {
            "status": decisions.status[lo:hi],
            "representative": rep[lo:hi],
            "cluster_size": decisions.cluster_size[lo:hi],
            "rep_shard": corpus.shard[rep[lo:hi]],
            "rep_line": corpus.line[rep[lo:hi]],
            "sentence_counts": corpus.sentence_counts[lo:hi],
            "drop_sentence": decisions.drop_sentence[sentence_ends[lo] : sentence_ends[hi]],
        }
        with atomic_file(folder / f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


# ---------------------------------------------------------------- pass 3: filter


def _filter_shard(path: Path, shard: Path, rejects_path: Path, stats: ShardStats) -> None:
    """Pass 3 over one input file (a `run_shards` work function)."""
    out = shard.parent.parent
    name = shard.name.removesuffix(".jsonl.zst")
    with np.load(out / "work" / "decisions" / f"{name}.npz") as npz:
        decision = {key: npz[key] for key in npz.files}
    inputs = json.loads((out / "work" / "decisions" / "inputs.json").read_text())
    sentence_starts = np.concatenate(([0], np.cumsum(decision["sentence_counts"])))
    kept, rejects = JsonlZstWriter(shard), JsonlZstWriter(rejects_path)
    removed_sentences = seen = 0
    with committed(kept, rejects):
        for i, (line, record) in enumerate(shard_records(path, stats, rejects)):
            seen = i + 1
            if i >= len(decision["status"]):
                break
            status = int(decision["status"][i])
            if status != KEEP:
                _reject(rejects, stats, path, line, record, _REASONS[status], {
                    "file": inputs[int(decision["rep_shard"][i])],
                    "line": int(decision["rep_line"][i]),
                    "position": int(decision["representative"][i]),
                })  # fmt: skip
                continue
            drop = decision["drop_sentence"][sentence_starts[i] : sentence_starts[i + 1]]
            text = _without_sentences(record["text"], drop)
            if not text.strip():
                _reject(rejects, stats, path, line, record, EMPTIED_REASON, None)
                continue
            removed_sentences += int(drop.sum())
            kept.write(_annotate({**record, "text": text}, {
                "cluster_id": int(decision["representative"][i]),
                "cluster_size": int(decision["cluster_size"][i]),
                "sentence_dups_removed": int(drop.sum()),
            }))  # fmt: skip
            stats.kept += 1
        if seen != len(decision["status"]):
            raise InputError(
                f"{path} changed since its signatures were computed; run dedup again with "
                "--overwrite"
            )
    stats.extra["sentence_dups_removed"] = removed_sentences


def _reject(
    rejects: JsonlZstWriter,
    stats: ShardStats,
    path: Path,
    line: int,
    record: dict,
    reason: str,
    duplicate_of: dict | None,
) -> None:
    entry: dict[str, Any] = {"file": str(path), "line": line, "reason": reason, "record": record}
    if duplicate_of is not None:
        entry["duplicate_of"] = duplicate_of
    rejects.write(entry)
    stats.rejected += 1
    stats.reasons[reason] += 1


def _without_sentences(text: str, drop: np.ndarray) -> str:
    if not drop.any():
        return text
    pieces = split_sentences(text)
    return "".join(p for p, gone in zip(pieces, drop, strict=True) if not gone)


def _annotate(record: dict, fields: dict[str, Any]) -> dict:
    """The record with dedup fields in its `meta` object (top level when `meta` is not one)."""
    meta = record.get("meta", {})
    if isinstance(meta, dict):
        return {**record, "meta": {**meta, **fields}}
    return {**record, **fields}


# ---------------------------------------------------------------- report


def _report(
    params: DedupConfig,
    curve: dict[str, float],
    stats: list[ShardStats],
    corpus: Corpus,
    decisions: Decisions,
    shards: list[tuple[str, Path]],
    out: Path,
    timing: dict[str, float],
) -> dict[str, Any]:
    counts = totals(stats)
    status = decisions.status
    elapsed = sum(timing.values())
    return {
        "stage": "dedup",
        "params": asdict(params),
        "estimated_threshold": round((1 / params.bands) ** (1 / params.rows), 4),
        "s_curve": curve,
        **counts,
        "documents": len(status),
        "exact_duplicates": int((status == EXACT).sum()),
        "near_duplicates": int((status == NEAR).sum()),
        "sentence_dups_removed": sum(s.extra.get("sentence_dups_removed", 0) for s in stats),
        "emptied_by_sentence_dedup": counts["reasons"].get(EMPTIED_REASON, 0),
        "cluster_sizes": cluster_histogram(decisions),
        "example_clusters": _example_clusters(decisions, corpus, shards, out),
        "timing": {k: round(v, 3) for k, v in timing.items()},
        "docs_per_s": round(len(status) / elapsed, 1) if elapsed > 0 else None,
    }


def cluster_histogram(decisions: Decisions) -> dict[str, int]:
    """{cluster size: number of clusters} for clusters of two or more documents."""
    kept = decisions.status == KEEP
    sizes = Counter(int(s) for s in decisions.cluster_size[kept] if s > 1)
    return {str(size): sizes[size] for size in sorted(sizes)}


def _example_clusters(
    decisions: Decisions, corpus: Corpus, shards: list[tuple[str, Path]], out: Path
) -> list[dict]:
    """The largest clusters (ties: earliest), a few members each, representative first."""
    reps = np.flatnonzero((decisions.status == KEEP) & (decisions.cluster_size > 1))
    reps = reps[np.lexsort((reps, -decisions.cluster_size[reps]))][:EXAMPLE_CLUSTERS]
    previews = _Previews(shards, out)
    examples = []
    for rep in reps:
        members = np.flatnonzero(decisions.representative == rep)
        members = np.concatenate(([rep], members[members != rep]))[:EXAMPLE_MEMBERS]
        examples.append({
            "cluster_id": int(rep),
            "size": int(decisions.cluster_size[rep]),
            "members": [
                {"position": int(m), "file": str(shards[corpus.shard[m]][1]),
                 "line": int(corpus.line[m]), "status": _STATUS_NAMES[decisions.status[m]],
                 "text": previews.get(int(corpus.shard[m]), int(m))}
                for m in members
            ],
        })  # fmt: skip
    return examples


class _Previews:
    """Lazy access to the 80-character previews, loading only the shards asked for."""

    def __init__(self, shards: list[tuple[str, Path]], out: Path):
        self.shards = shards
        self.folder = out / "work" / "signatures"
        self.cache: dict[int, tuple[int, np.ndarray]] = {}
        self.offsets = np.cumsum(
            [0] + [json.loads((self.folder / f"{n}.done.json").read_text())["documents"]
                   for n, _ in shards]
        )  # fmt: skip

    def get(self, shard: int, position: int) -> str:
        if shard not in self.cache:
            name = self.shards[shard][0]
            self.cache[shard] = np.load(self.folder / f"{name}.npz")["preview"]
        return str(self.cache[shard][position - self.offsets[shard]])


def summary_markdown(report: dict[str, Any]) -> str:
    """The short human summary written beside `report.json`."""
    p = report["params"]
    rows = [
        ("read", report["read"]),
        ("malformed", report["read"] - report["documents"]),
        ("exact duplicates", report["exact_duplicates"]),
        ("near duplicates", report["near_duplicates"]),
        ("emptied by sentence dedup", report["emptied_by_sentence_dedup"]),
        ("kept", report["kept"]),
        ("sentences removed", report["sentence_dups_removed"]),
    ]
    lines = [
        "# chuan data dedup",
        "",
        f"threshold {p['threshold']}, {p['num_perm']} permutations, {p['bands']} bands x "
        f"{p['rows']} rows (S-curve midpoint ~{report['estimated_threshold']}), "
        f"sentence max repeats {p['sentence_max_repeats']}, seed {p['seed']}",
        "",
        "| | documents |",
        "|---|---:|",
        *[f"| {name} | {value:,} |" for name, value in rows],
        "",
        "P(candidate) at Jaccard: "
        + ", ".join(f"{s}: {v:.3f}" for s, v in report["s_curve"].items()),
        "",
        "Cluster sizes: "
        + (", ".join(f"{s}: {n}" for s, n in report["cluster_sizes"].items()) or "none"),
        "",
        f"Time: {sum(report['timing'].values()):.1f} s ({report['docs_per_s']} docs/s, "
        f"{report['workers']} workers)",
        "",
    ]
    return "\n".join(lines)
