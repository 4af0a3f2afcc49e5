"""Sharded corpus stages: one input file in, one output shard out, rejects and counts beside it.

Every corpus stage (`clean`, `quality score`, `dedup`'s final filter, `mix`) is a function over
one shard, so a local process pool runs them today and a cluster executor can run them later.
A stage's output dir looks like:

    OUT/shards/00000-<input stem>.jsonl.zst   kept records, every input field preserved
    OUT/shards/00000-<input stem>.done        written last: the shard's counts (resume marker)
    OUT/rejects/00000-<input stem>.jsonl.zst  {"file", "line", "reason", "rule"?, "record"?}
    OUT/report.json, OUT/report.md            the stage's totals

A shard whose `.done` marker exists is finished and is skipped on a re-run; a shard killed half-way
left only temporary files, which are replaced.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from chuan.data.io import RecordError, corpus_files, format_of, iter_records
from chuan.fileio import write_atomic


@dataclass
class ShardStats:
    """Counts of one shard; `read == kept + rejected` always."""

    input: str
    read: int = 0
    kept: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "input": self.input,
            "read": self.read,
            "kept": self.kept,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            **self.extra,
        }


def shard_name(index: int, path: Path) -> str:
    """`00003-name` for input number 3 (stable, unique even when inputs share a file name)."""
    stem = path.name[: -len(format_of(path) or path.suffix)] or path.name
    return f"{index:05d}-{stem}"


def input_shards(inputs) -> list[tuple[str, Path]]:
    """(shard name, input file) for every corpus file of the inputs, in a stable order."""
    return [(shard_name(i, p), p) for i, p in enumerate(corpus_files(inputs))]


class JsonlZstWriter:
    """Writes JSON lines into a `.jsonl.zst` file under a temporary name; `commit` renames it."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._out: IO[str] = zstandard.open(self._raw, "wt", encoding="utf-8", cctx=None)
        self.count = 0

    def write(self, record: dict) -> None:
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def commit(self) -> None:
        self._out.close()
        self._raw.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._out.close()
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


def read_jsonl_zst(path: Path) -> Iterator[dict]:
    with zstandard.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def shard_records(
    path: Path, stats: ShardStats, rejects: JsonlZstWriter | None
) -> Iterator[tuple[int, dict]]:
    """`(line, record)` for each JSON object with a string `text`; everything else is rejected
    (counted and written with file, line and reason), never raised. `rejects=None` only
    counts: for an extra pass over a file whose rejects another pass writes."""

    def reject(error: RecordError) -> None:
        stats.read += 1
        stats.rejected += 1
        reason = error.reason.split(" (")[0]  # "invalid JSON", not its column
        stats.reasons[f"{error.field}: {reason}" if error.field else reason] += 1
        if rejects is not None:
            rejects.write({"file": error.path, "line": error.line, "reason": str(error)})

    try:
        for line, record in iter_records(path, on_error=reject):
            if not isinstance(record, dict):
                reject(
                    RecordError(path, line, f"expected a JSON object, got {type(record).__name__}")
                )
            elif not isinstance(record.get("text"), str):
                why = "missing" if "text" not in record else "expected a string"
                reject(RecordError(path, line, why, "text"))
            else:
                stats.read += 1
                yield line, record
    except RecordError as error:  # a file that cannot be read through (a broken JSON array)
        reject(error)


def run_shards(
    inputs,
    out: str | Path,
    work: Callable[[Path, Path, Path, ShardStats], None],
    *,
    workers: int = 1,
) -> list[ShardStats]:
    """Run `work(input, output_shard, rejects_shard, stats)` for every unfinished shard.

    `work` writes the output shard and the rejects through `JsonlZstWriter` and fills `stats`.
    Finished shards (with a `.done` marker: JSON, but named so that a later stage reading
    `shards/` skips it) are read back, not redone. `workers > 1` uses a process
    pool (`work` must then be a module-level function).
    """
    out = Path(out)
    todo, done = [], []
    for name, path in input_shards(inputs):
        marker = out / "shards" / f"{name}.done"
        if marker.is_file():
            done.append(ShardStats(**_stats_fields(json.loads(marker.read_text()))))
        else:
            todo.append((name, path))
    args = [
        (
            work,
            path,
            out / "shards" / f"{name}.jsonl.zst",
            out / "rejects" / f"{name}.jsonl.zst",
            out / "shards" / f"{name}.done",
        )
        for name, path in todo
    ]
    if workers > 1 and len(args) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            finished = list(pool.map(_run_one, args))
    else:
        finished = [_run_one(a) for a in args]
    return done + finished


def _stats_fields(data: dict) -> dict:
    known = {"input", "read", "kept", "rejected"}
    return {
        **{k: data[k] for k in known},
        "reasons": Counter(data.get("reasons", {})),
        "extra": {k: v for k, v in data.items() if k not in known | {"reasons"}},
    }


def _run_one(args) -> ShardStats:
    work, path, shard, rejects, marker = args
    stats = ShardStats(input=str(path))
    work(path, shard, rejects, stats)
    if stats.read != stats.kept + stats.rejected:
        raise AssertionError(
            f"{path}: read {stats.read} != kept {stats.kept} + rejected {stats.rejected}"
        )
    write_atomic(marker, json.dumps(stats.to_json(), indent=1))
    return stats


def totals(stats: list[ShardStats]) -> dict[str, Any]:
    """The stage's counts summed over shards."""
    reasons: Counter = Counter()
    for s in stats:
        reasons.update(s.reasons)
    return {
        "shards": len(stats),
        "read": sum(s.read for s in stats),
        "kept": sum(s.kept for s in stats),
        "rejected": sum(s.rejected for s in stats),
        "reasons": dict(reasons.most_common()),
    }


def output_records(out: str | Path) -> Iterator[dict]:
    """Every kept record of a stage's output dir, shard by shard."""
    for shard in sorted((Path(out) / "shards").glob("*.jsonl.zst")):
        yield from read_jsonl_zst(shard)
