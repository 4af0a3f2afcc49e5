"""Crash-safe outputs shared by every room: write under a temporary name, then rename.

An exception removes the temporary dir; a run killed half-way leaves at most a hidden
`.NAME.tmp-PID` dir, never a half-written output where a finished one was expected.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chuan.errors import OutputExistsError


@contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary dir beside `path`; on success it replaces `path`.

    Without `overwrite`, an existing non-empty `path` is an error (named, with the fix).
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{path} already exists and is not empty; choose another --out or pass --overwrite"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain name, not `mkstemp`: its 0600 mode would survive the rename.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file (text as UTF-8) under a temporary name, then rename it into place."""
    with atomic_file(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_jsonl(path: str | Path, records) -> Path:
    """Records as JSON Lines (UTF-8, not ASCII-escaped), written as `write_atomic` does."""
    return write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def write_report(out: str | Path, data: dict, markdown: str) -> Path:
    """A stage's report in its output dir: `report.json` for machines, `report.md` for
    people, each written atomically. Returns the path of `report.md`."""
    out = Path(out)
    write_atomic(out / REPORT_JSON, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return write_atomic(out / REPORT_MD, markdown)
