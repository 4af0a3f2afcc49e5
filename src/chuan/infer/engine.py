"""The scheduler behind `chuan serve`: one worker thread owns the model and decodes in cohorts.

HTTP handlers run on an asyncio loop and never touch the model: they `submit` a job (one
row per prompt and choice) and read its events from an asyncio queue. The worker thread
takes waiting rows into *cohorts*, each one `BatchDecoder` with its own sampling settings
per row, steps every running cohort once per round, pushes each new token through the row's
`TextStream` (which holds back incomplete UTF-8 and possible stop-string prefixes) and hands
the text to the job's loop with `call_soon_threadsafe`.

Admission. A `BatchDecoder` is fixed once prefilled, so a request that arrives while a batch
runs cannot join it; instead it starts a new cohort beside the running ones, and streams of
both cohorts advance in turn. Nobody waits for a long batch to drain. Waiting rows form a
cohort once they fill the free room or the oldest has waited `admit_wait` seconds, so that
requests arriving together (say, clients whose previous answers all just ended) share one
forward pass per step rather than one each. `max_batch` bounds the rows being decoded at
once, across all cohorts.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chuan.errors import InputError, MissingError
from chuan.infer.generate import BatchDecoder, SamplingConfig, context_length
from chuan.infer.text import TextStream

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """The worker failed while decoding a job (the message says why); the server is fine."""


@dataclass(frozen=True)
class RowSpec:
    """One sequence to generate: its prompt ids and its sampling settings."""

    prompt_ids: list[int]
    config: SamplingConfig


@dataclass(frozen=True)
class TextDelta:
    """New text of row `row` (never empty)."""

    row: int
    text: str


@dataclass(frozen=True)
class RowFinished:
    """Row `row` ended: `reason` is "stop" (stop id or stop string) or "length"."""

    row: int
    reason: str
    completion_tokens: int


@dataclass(frozen=True)
class _Failed:
    message: str


class Job:
    """A request's rows inside the engine; its handler reads `events()` and may `cancel()`.

    Created on the event loop's thread (`Engine.submit`); the worker only calls `_deliver`.
    """

    def __init__(self, rows: Sequence[RowSpec], stop_strings: Sequence[str]):
        self.rows = list(rows)
        self.stop_strings = tuple(stop_strings)
        self.cancelled = False  # set by the handler, read by the worker
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[TextDelta | RowFinished | _Failed] = asyncio.Queue()

    def cancel(self) -> None:
        """Stop generating for this job (the client went away); finished jobs ignore it."""
        self.cancelled = True

    async def events(self) -> AsyncIterator[TextDelta | RowFinished]:
        """Deltas and finishes of every row, in order, until the last row has finished.

        Raises `GenerationError` when the worker failed on one of this job's cohorts.
        """
        remaining = len(self.rows)
        while remaining:
            event = await self._events.get()
            if isinstance(event, _Failed):
                raise GenerationError(event.message)
            remaining -= isinstance(event, RowFinished)
            yield event

    def _deliver(self, event: TextDelta | RowFinished | _Failed) -> None:
        """Hand `event` to the job's loop (worker thread); a closed loop cancels the job."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:
            self.cancelled = True


@dataclass
class _Row:
    """A row as the worker tracks it."""

    job: Job
    index: int
    stream: TextStream
    since: float = field(default_factory=time.monotonic)
    generated: int = 0
    done: bool = False

    @property
    def spec(self) -> RowSpec:
        return self.job.rows[self.index]


def _fail(rows: list[_Row], message: str) -> None:
    """Tell every job with a live row in `rows` that decoding failed, and stop those jobs."""
    for job in {id(r.job): r.job for r in rows if not r.done}.values():
        job._deliver(_Failed(message))
        job.cancelled = True
    for row in rows:
        row.done = True


class _Cohort:
    """Rows decoded together by one `BatchDecoder` (prefilled on construction)."""

    def __init__(self, model, rows: list[_Row]):
        self.rows = rows
        self.decoder = BatchDecoder(
            model, [r.spec.prompt_ids for r in rows], [r.spec.config for r in rows]
        )

    @property
    def active(self) -> int:
        return sum(not r.done for r in self.rows)

    def step(self) -> None:
        """Drop cancelled rows, decode one token for the others, deliver text and finishes."""
        for i, row in enumerate(self.rows):
            if not row.done and row.job.cancelled:
                self.decoder.finish(i)
                row.done = True
        if self.active == 0:
            return
        for i, token in enumerate(self.decoder.step()):
            row = self.rows[i]
            if row.done:
                continue
            if token is not None:
                self._push(i, token)
            if not row.done and self.decoder.finish_reasons[i] is not None:
                self._close(row, self.decoder.finish_reasons[i], row.stream.flush())

    def _push(self, i: int, token: int) -> None:
        row = self.rows[i]
        row.generated += 1
        text = row.stream.push(token)
        if row.stream.stopped:
            self.decoder.finish(i)
            self._close(row, "stop", text)
        elif text:
            row.job._deliver(TextDelta(row.index, text))

    @staticmethod
    def _close(row: _Row, reason: str, tail: str) -> None:
        if tail:
            row.job._deliver(TextDelta(row.index, tail))
        reason = "length" if reason == "length" else "stop"
        row.job._deliver(RowFinished(row.index, reason, row.generated))
        row.done = True


class Engine:
    """Owns the model on a worker thread and serves jobs from any asyncio loop.

    model / tokenizer: as `chuan.infer.loading` returns them. defaults: the model dir's
    generation settings (`chuan.infer.sampling.generation_defaults`), which the server uses
    for fields a request leaves out. max_batch: rows decoded at once across all cohorts.
    admit_wait: seconds the oldest waiting row waits for companions before it starts a
    cohort (sooner when the waiting rows fill the free room).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        defaults: SamplingConfig,
        max_batch: int = 16,
        admit_wait: float = 0.02,
    ):
        if max_batch < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.max_batch = max_batch
        self.admit_wait = admit_wait
        self.context_length = context_length(model)
        self.vocab_size = model.config.vocab_size
        self.started = int(time.time())
        self.waiting_rows = 0  # counters for /health, written by the worker only
        self.running_rows = 0
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._waiting: deque[_Row] = deque()
        self._cohorts: list[_Cohort] = []
        self._worker = threading.Thread(target=self._run, name="chuan-engine", daemon=True)
        self._worker.start()

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    def submit(self, rows: Sequence[RowSpec], stop_strings: Sequence[str] = ()) -> Job:
        """Queue `rows` for generation; call from the loop that will read the job's events."""
        if not self.alive:
            raise GenerationError("the generation worker has stopped")
        job = Job(rows, stop_strings)
        self._inbox.put(job)
        return job

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the worker after its current step; unfinished jobs are dropped."""
        self._inbox.put(None)
        self._worker.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        with torch.inference_mode():
            while self._take_jobs(timeout=self._idle_timeout()):
                self._admit()
                for cohort in self._cohorts:
                    self._guarded(cohort.step, cohort.rows)
                self._cohorts = [c for c in self._cohorts if c.active]
                self.running_rows = sum(c.active for c in self._cohorts)
                self.waiting_rows = len(self._waiting)

    def _idle_timeout(self) -> float | None:
        """How long the worker may sleep waiting for jobs: not at all while cohorts run, until
        the oldest waiting row is due, or (nothing to do) until a job comes."""
        if self._cohorts:
            return 0.0
        if self._waiting:
            return max(0.0, self._waiting[0].since + self.admit_wait - time.monotonic())
        return None

    def _take_jobs(self, *, timeout: float | None) -> bool:
        """Move submitted jobs' rows to the waiting line, waiting at most `timeout` seconds
        (None: indefinitely) for the first; False once `close` was called."""
        while True:
            try:
                job = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return True
            if job is None:
                return False
            self._waiting.extend(
                _Row(job, i, TextStream(self.tokenizer, job.stop_strings))
                for i in range(len(job.rows))
            )
            timeout = 0.0

    def _admit(self) -> None:
        """Start a cohort of waiting rows when there is room and it is time (see module doc)."""
        while self._waiting and self._waiting[0].job.cancelled:
            self._waiting.popleft()
        free = self.max_batch - sum(c.active for c in self._cohorts)
        if not self._waiting or free < 1:
            return
        waited = time.monotonic() - self._waiting[0].since
        if len(self._waiting) < free and waited < self.admit_wait:
            return
        rows = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        rows = [r for r in rows if not r.job.cancelled]
        if rows:
            cohort = self._guarded(lambda: _Cohort(self.model, rows), rows)
            if cohort is not None:
                self._cohorts.append(cohort)
                log.debug(
                    "cohort of %d rows started; %d cohorts running", len(rows), len(self._cohorts)
                )

    @staticmethod
    def _guarded(call, rows: list[_Row]):
        """Run `call`; on an exception fail the jobs of `rows` instead of the worker."""
        try:
            return call()
        except Exception as err:  # a bad batch must not take the server down
            log.exception("generation failed")
            _fail(rows, f"generation failed: {type(err).__name__}: {err}")
            return None


def load_engine(
    model_dir: str | Path,
    *,
    device: str | None = None,
    dtype: str = "auto",
    max_batch: int = 16,
    adapter: str | Path | None = None,
) -> Engine:
    """An `Engine` over the model, tokenizer and generation defaults of `model_dir` (with
    a LoRA `adapter` folded in: see `load_model`)."""
    from chuan.infer.loading import load_model, load_saved_tokenizer, side_files_dir
    from chuan.infer.sampling import generation_defaults

    side = side_files_dir(model_dir, adapter)
    tokenizer = load_saved_tokenizer(side)
    if tokenizer is None:
        raise MissingError(f"{model_dir} has no tokenizer files; chuan serve needs text")
    model = load_model(model_dir, device=device, dtype=dtype, adapter=adapter)
    return Engine(model, tokenizer, defaults=generation_defaults(side), max_batch=max_batch)
