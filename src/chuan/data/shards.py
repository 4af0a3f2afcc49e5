"""Sharded corpus stages: one input file in, one output shard out, rejects and counts beside it.

Every corpus stage (`clean`, `quality score`, `dedup`'s final filter, `mix`) is a function over
one shard, which an executor (`chuan.data.executor`: local processes or Ray tasks) runs.
A stage's output dir looks like:

    OUT/shards/00000-<input stem>.jsonl.zst   kept records, every input field preserved
    OUT/shards/00000-<input stem>.done        written last: the shard's counts (resume marker)
    OUT/rejects/00000-<input stem>.jsonl.zst  {"file", "line", "reason", "rule"?, "record"?}
    OUT/report.json, OUT/report.md            the stage's totals

A shard whose `.done` marker exists is finished and is skipped on a re-run; a shard killed half-way
left only temporary files, which are replaced.

Every stage starts with `StageRun`, the one guard of an output dir: it writes `OUT/run.json`
(the stage, its settings and every input file's path, size and modification time) before any
work, and a later run into the same dir resumes only when all of that is the same. Otherwise
it is refused with an `OutputExistsError` naming what differs (`--overwrite` deletes the old
output and starts from scratch), so shards of two runs are never mixed. Inputs are expanded
without the output dir itself, so a stage never reads its own shards, rejects or reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from chuan.data.executor import Executor, LocalExecutor
from chuan.documents import (
    STAGE_RUN_FILE,
    RecordError,
    UnreadableFileError,
    corpus_files,
    format_of,
    iter_records,
    open_text,
)
from chuan.errors import OutputExistsError
from chuan.fileio import write_atomic

_MAX_DIFFERENCES = 6  # differences named in a refusal; the rest are counted


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


def input_shards(inputs, *, exclude: str | Path | None = None) -> list[tuple[str, Path]]:
    """(shard name, input file) for every corpus file of the inputs, in a stable order;
    `exclude` is the stage's output dir, never read (see `corpus_files`)."""
    files = corpus_files(inputs, exclude=exclude)
    return [(shard_name(i, p), p) for i, p in enumerate(files)]


# --- the record of a run -------------------------------------------------------------------


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """What tells a changed file from the one a run read: its absolute path, size and
    modification time (hashing a corpus would cost a whole extra read)."""
    path = Path(path)
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def dir_fingerprint(path: str | Path) -> list[dict[str, Any]]:
    """`file_fingerprint` of every file directly in a dir (a model or tokenizer dir a stage
    reads), or of the path itself when it is a file."""
    path = Path(path)
    if not path.is_dir():
        return [file_fingerprint(path)] if path.exists() else []
    return [file_fingerprint(p) for p in sorted(path.iterdir()) if p.is_file()]


def run_record(stage: str, settings: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    """What `OUT/run.json` holds: the stage, every setting that changes its output, and every
    input file's fingerprint, in input order."""
    plain = json.loads(json.dumps(settings, default=str))
    return {"stage": stage, "settings": plain, "inputs": [file_fingerprint(p) for p in files]}


def run_differences(
    found: dict[str, Any], wanted: dict[str, Any], may_change: frozenset[str] = frozenset()
) -> list[str]:
    """What differs between the run recorded in an output dir and the one asked for, in words
    (empty when they are the same run). Inputs whose path is in `may_change` (nothing was made
    from them yet) may have another size or modification time."""
    if found.get("stage") != wanted["stage"]:
        return [f"it holds a `chuan data {found.get('stage')}` run, not `{wanted['stage']}`"]
    differences = [
        f"{key}: was {old!r}, now {new!r}"
        for key, old, new in _changed(found.get("settings", {}), wanted["settings"])
    ]
    before = {i["path"]: i for i in found.get("inputs", [])}
    now = {i["path"]: i for i in wanted["inputs"]}
    differences += [f"input {p} is new" for p in now if p not in before]
    differences += [f"input {p} is gone" for p in before if p not in now]
    for path in (p for p in now if p in before and now[p] != before[p] and p not in may_change):
        old, new = before[path], now[path]
        what = (
            f"{old['bytes']:,} -> {new['bytes']:,} bytes"
            if old["bytes"] != new["bytes"]
            else "modified since"
        )
        differences.append(f"input {path} changed ({what})")
    if not differences and list(before) != list(now):
        differences.append("the inputs are in another order (so shards would get other names)")
    return differences


def _changed(old: Any, new: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            yield from _changed(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip("."), old, new


def claim_output(
    out: str | Path,
    record: dict[str, Any],
    *,
    overwrite: bool = False,
    resumable: bool = True,
    may_change: frozenset[str] = frozenset(),
) -> bool:
    """Make `out` the output dir of the run `record` (see `run_record`); True when it starts
    empty.

    An empty or missing `out` is new. A non-empty one must hold the same run (its `run.json`
    equal to `record`, but for the fingerprints of the inputs in `may_change`) and is then
    resumed; anything else is refused with an `OutputExistsError` that names what differs.
    `overwrite` deletes an existing `out` first (with `resumable` False the caller replaces it
    atomically instead, and an existing `out` is always refused without `overwrite`: the stage
    cannot resume).
    """
    out = Path(out)
    stage = f"chuan data {record['stage']}"
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file, not an output dir; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            if resumable:
                print(f"{stage}: --overwrite: deleting the old {out}", file=sys.stderr)
                shutil.rmtree(out)
        else:
            found = _refuse(out, record, stage, resumable, may_change)
            if found != record:  # an unfinished input was replaced (e.g. re-downloaded)
                write_atomic(
                    out / STAGE_RUN_FILE, json.dumps(record, indent=1, ensure_ascii=False) + "\n"
                )
            return False
    if resumable:
        write_atomic(out / STAGE_RUN_FILE, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return True


def _refuse(
    out: Path, record: dict[str, Any], stage: str, resumable: bool, may_change: frozenset[str]
) -> dict[str, Any]:
    """Raise unless `out` holds the same resumable run; return its record."""
    try:
        found = json.loads((out / STAGE_RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if not isinstance(found, dict):
        raise OutputExistsError(
            f"{out} is not empty and holds no readable record of a chuan run ({STAGE_RUN_FILE}: "
            "made by another tool or an older chuan); choose another --out, or pass "
            "--overwrite to delete it and start from scratch"
        )
    differences = run_differences(found, record, may_change)
    if differences:
        shown = differences[:_MAX_DIFFERENCES]
        if len(differences) > len(shown):
            shown.append(f"and {len(differences) - len(shown)} more")
        raise OutputExistsError(
            f"{out} holds a `chuan data {found.get('stage')}` run with other settings or "
            f"inputs: {'; '.join(shown)}. Re-run with the same ones to "
            f"{'resume it' if resumable else 'keep it'}, choose another --out, or pass "
            "--overwrite to redo it from scratch"
        )
    if not resumable:
        raise OutputExistsError(
            f"{out} already holds this {stage} output (same settings and inputs); "
            "pass --overwrite to redo it"
        )
    return found


class StageRun:
    """The guard every corpus stage runs inside (`with StageRun(...) as run:`).

    On entry: expands the inputs without the output dir (`run.shards`), then claims `out`
    (`claim_output`: a new dir records the run, the same run resumes, another run is refused).
    An input from which nothing was made yet may have changed (a truncated download that
    stopped the last run, fetched again). On an error: a run that started from an empty `out`
    and finished no shard removes `out`, leaving nothing half-made behind; otherwise the
    finished shards stay for a resume.

    `markers` are the files (`{name}`: a shard name) whose presence means something was made
    from that input; `global_plan` stages (dedup, mix: one plan over all inputs) count every
    input as used once any output shard is finished.
    """

    def __init__(
        self,
        inputs,
        out: str | Path,
        *,
        stage: str,
        settings: dict[str, Any],
        overwrite: bool = False,
        shards: list[tuple[str, Path]] | None = None,
        markers: tuple[str, ...] = ("shards/{name}.done",),
        global_plan: bool = False,
    ):
        self.out = Path(out)
        self.shards = shards if shards is not None else input_shards(inputs, exclude=out)
        self.record = run_record(stage, settings, [p for _, p in self.shards])
        self.overwrite = overwrite
        self.markers = markers
        self.global_plan = global_plan
        self.fresh = False
        self.existed = False

    def _unused_inputs(self) -> frozenset[str]:
        """The inputs nothing was made from yet (absolute paths, as in the record)."""
        if self.global_plan and any((self.out / "shards").glob("*.done")):
            return frozenset()
        return frozenset(
            fingerprint["path"]
            for (name, _), fingerprint in zip(self.shards, self.record["inputs"], strict=True)
            if not any((self.out / m.format(name=name)).exists() for m in self.markers)
        )

    def __enter__(self) -> StageRun:
        self.existed = self.out.is_dir()
        self.fresh = claim_output(
            self.out, self.record, overwrite=self.overwrite, may_change=self._unused_inputs()
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self.fresh and not _finished_any(self.out):
            shutil.rmtree(self.out, ignore_errors=True)
            if self.existed:  # an empty dir the user made stays, empty
                self.out.mkdir(parents=True, exist_ok=True)
        return False


def _finished_any(out: Path) -> bool:
    """Whether a run left anything to resume: a finished shard of any pass."""
    return any(p.name.endswith((".done", ".done.json")) for p in out.rglob("*"))


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
        """Finish the zstd frame, make it durable, then give the file its name."""
        self._out.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._out.close()
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def committed(*writers: JsonlZstWriter) -> Iterator[None]:
    """The one ending of a shard's writers: all committed when the block ends normally, all
    aborted (temporary files removed, nothing renamed) on any exception, Ctrl-C included."""
    try:
        yield
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.commit()


def read_jsonl_zst(path: Path) -> Iterator[dict]:
    with open_text(path) as f:
        for line in f:
            yield json.loads(line)


def shard_records(
    path: Path, stats: ShardStats, rejects: JsonlZstWriter | None
) -> Iterator[tuple[int, dict]]:
    """`(line, record)` for each JSON object with a string `text`; everything else is rejected
    (counted and written with file, line and reason), never raised, except a file that cannot
    be read through at all (`UnreadableFileError`: truncated, corrupt or binary), which stops
    the stage naming the file. `rejects=None` only counts: for an extra pass over a file whose
    rejects another pass writes."""

    def reject(error: RecordError) -> None:
        stats.read += 1
        stats.rejected += 1
        stats.reasons[error.summary] += 1
        if rejects is not None:
            rejects.write({"file": error.path, "line": error.line, "reason": str(error)})
            if error.line is None:  # a whole file is rejected: say so now
                print(f"warning: {error}", file=sys.stderr)

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
    except UnreadableFileError:  # truncated, corrupt or binary: never a silent partial read
        raise
    except RecordError as error:  # a file that cannot be read through (a broken JSON array)
        reject(error)


def run_shards(
    inputs,
    out: str | Path,
    work: Callable[[Path, Path, Path, ShardStats], None],
    *,
    workers: int = 1,
    shards: list[tuple[str, Path]] | None = None,
    executor: Executor | None = None,
) -> list[ShardStats]:
    """Run `work(input, output_shard, rejects_shard, stats)` for every unfinished shard.

    `work` writes the output shard and the rejects through `JsonlZstWriter` and fills `stats`.
    Finished shards (with a `.done` marker: JSON, but named so that a later stage reading
    `shards/` skips it) are read back, not redone. The shards run on `executor` (default:
    `workers` local processes; `work` must then be a module-level function or, on Ray,
    picklable). `shards` (a `StageRun`'s) replaces expanding `inputs` again; a stage runs this
    inside its `StageRun`, which guarantees that finished shards come from the same settings
    and inputs.
    """
    out = Path(out)
    todo, done = [], []
    for name, path in shards if shards is not None else input_shards(inputs, exclude=out):
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
    executor = executor or LocalExecutor(workers, progress=False)
    if args:
        executor.preflight([path for _, path in todo], out)
    return done + executor.map(_run_one, args, desc=out.name, docs=_read_count)


def _read_count(stats: ShardStats) -> int:
    return stats.read


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
