"""Run the quickstart's stages in order, each once: a finished stage leaves
`OUT/stages/<name>.json` (its numbers), and a re-run reads that instead of redoing it.

A stage is a function `(ctx) -> dict` of what it measured plus a one-line `summary`; it writes
its outputs under `ctx.out` and must itself be safe to re-run after an interruption (the data
stages resume per shard, pretraining resumes from its newest checkpoint).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chuan.errors import InputError
from chuan.fileio import write_atomic


@dataclass
class QuickstartConfig:
    """What `chuan quickstart` was asked to do.

    `minutes` is the whole run's budget: pretraining gets what the other stages leave.
    `max_docs` (per sample file) and `steps` shrink the run for a smoke test.
    """

    out: Path = Path("runs/quickstart")
    minutes: float = 10.0
    fresh: bool = False
    until: str | None = None
    max_docs: int | None = None
    steps: int | None = None
    seed: int = 0
    progress: bool = True


@dataclass
class Context:
    """What stages share: the options, the output dir, the clock and earlier stages' numbers."""

    options: QuickstartConfig
    started: float = field(default_factory=time.monotonic)
    results: dict[str, dict] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.options.out)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def elapsed(self) -> float:
        """Seconds spent so far, stages finished in earlier invocations included."""
        earlier = sum(r.get("seconds", 0.0) for r in self.results.values() if r.get("resumed"))
        return earlier + time.monotonic() - self.started


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable[[Context], dict]
    rerun: str  # the command that redoes this stage by hand, bigger settings in mind


def stage_marker(ctx: Context, name: str) -> Path:
    return ctx.path("stages", f"{name}.json")


def run_stages(options: QuickstartConfig, stages: list[Stage], echo=print) -> Context:
    """Run `stages` in order, skipping those already finished; stop after `options.until`."""
    names = [s.name for s in stages]
    if options.until is not None and options.until not in names:
        raise InputError(f"unknown stage {options.until!r}; stages: {', '.join(names)}")
    out = Path(options.out)
    if options.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(options)
    width = max(len(s.title) for s in stages)
    for index, stage in enumerate(stages, start=1):
        marker = stage_marker(ctx, stage.name)
        head = f"[{index:>2}/{len(stages)}] {stage.title:<{width}}"
        if marker.is_file():
            result = json.loads(marker.read_text(encoding="utf-8"))
            result["resumed"] = True
            ctx.results[stage.name] = result
            echo(f"{head}  done before  {result['summary']}")
        else:
            began = time.monotonic()
            result = stage.run(ctx)
            result["seconds"] = round(time.monotonic() - began, 2)
            ctx.results[stage.name] = result
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
            echo(f"{head}  {result['seconds']:6.1f} s   {result['summary']}")
        if stage.name == options.until:
            break
    return ctx
