"""The scheduler behind `chuan serve`: token-level continuous batching on one worker thread.

HTTP handlers run on an asyncio loop and never touch the model: they `submit` a job (one
row per prompt and choice) and read its events from an asyncio queue. The worker thread owns
the model and loops over three moves, each iteration:

1. admit waiting rows while a slot of the KV pool is free (`chuan.infer.slots`), loading the
   longest stored prefix of each prompt (`chuan.infer.prefix_cache`);
2. prefill: one forward over the admitted rows' next prompt chunks, at most `prefill_chunk`
   tokens in all, so a long prompt is spread over several iterations and never stalls the
   running rows for long; a row whose prompt is done picks its first token at once;
3. decode: one forward over every running row, one token each, each row at its own
   position, and each with its own sampling settings.

A request that arrives while others decode is therefore prefilled in the next iteration and
decoded with them from the one after: it joins the running batch instead of waiting for it,
and a row that ends leaves it at once, its slot handed to the next waiting row. Each new token
goes through the row's `TextStream` (which holds back incomplete UTF-8 and possible
stop-string prefixes) and reaches the job's loop with `call_soon_threadsafe`.

The waiting line is bounded (`max_queue` rows): `submit` raises `QueueFull` rather than let
it grow without limit, which the server answers with 429 and `Retry-After`.
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
from chuan.infer.cache import KVCache
from chuan.infer.generate import SamplingConfig, context_length
from chuan.infer.metrics import EngineMetrics
from chuan.infer.prefix_cache import PrefixCache
from chuan.infer.sampling import TokenChooser, row_generator
from chuan.infer.slots import SlotPool
from chuan.infer.text import TextStream
from chuan.infer.virtual_tokens import virtual_tokens

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """The worker failed while decoding a job (the message says why); the server is fine."""


class QueueFull(RuntimeError):
    """The waiting line is full; try again after `retry_after` seconds."""

    def __init__(self, queued: int, limit: int, retry_after: int):
        super().__init__(
            f"the server is busy: {queued} sequences are waiting (the limit is {limit}); "
            f"retry after {retry_after} s"
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class RowSpec:
    """One sequence to generate: its prompt ids and sampling settings.

    logprobs: how many most likely alternatives to report with each new token's
    log-probability (0: the chosen token's only; None: none). echo: report the prompt's
    tokens' log-probabilities too (the first has none). generate=False scores the prompt and
    generates nothing (`max_tokens: 0` with `echo`).
    """

    prompt_ids: list[int]
    config: SamplingConfig
    logprobs: int | None = None
    echo: bool = False
    generate: bool = True


@dataclass(frozen=True)
class TokenLogprob:
    """A token and its log-probability under the model (before sampling settings), with the
    `top` most likely tokens at its position as (id, log-probability), most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class PromptScored:
    """Row `row`'s prompt tokens with their log-probabilities (None for the first)."""

    row: int
    tokens: tuple[TokenLogprob | None, ...]


@dataclass(frozen=True)
class TextDelta:
    """New text of row `row` (never empty) and the log-probabilities of the tokens it came
    from when they were asked for."""

    row: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class RowFinished:
    """Row `row` ended: `reason` is "stop" (stop id or stop string) or "length".

    `cached_tokens`: prompt tokens whose keys came from the prefix cache. `logprobs`: those of
    tokens whose text was held back and never sent. `prefill_step` / `first_token_step`: the
    engine's decode-step count when the row's prefill ended and when it chose its first token.
    """

    row: int
    reason: str
    completion_tokens: int
    cached_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    prefill_step: int = 0
    first_token_step: int | None = None


@dataclass(frozen=True)
class _Failed:
    message: str


Event = TextDelta | RowFinished | PromptScored


class Job:
    """A request's rows inside the engine; its handler reads `events()` (or `batches()`) and
    may `cancel()`.

    Created on the event loop's thread (`Engine.submit`). The worker hands a step's events
    over in one call per event loop (`Engine._flush`), not one per event: each
    `call_soon_threadsafe` wakes the loop through a pipe, and 64 streams would otherwise cost
    64 wake-ups per decode step.
    """

    def __init__(self, rows: Sequence[RowSpec], stop_strings: Sequence[str]):
        self.rows = list(rows)
        self.stop_strings = tuple(stop_strings)
        self.cancelled = False  # set by the handler, read by the worker
        self.submitted = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[list[Event | _Failed]] = asyncio.Queue()

    def cancel(self) -> None:
        """Stop generating for this job (the client went away); finished jobs ignore it."""
        self.cancelled = True

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Every event that has arrived since the last batch, in order, until the last row
        has finished: a reader that falls behind gets several steps' events at once (the
        server sends them as one write).

        Raises `GenerationError` when the worker failed on one of this job's rows (after the
        events that came before the failure)."""
        remaining = len(self.rows)
        while remaining:
            arrived = await self._events.get()
            while not self._events.empty():
                arrived += self._events.get_nowait()
            batch = []
            for event in arrived:
                if isinstance(event, _Failed):
                    if batch:
                        yield batch
                    raise GenerationError(event.message)
                remaining -= isinstance(event, RowFinished)
                batch.append(event)
            yield batch

    async def events(self) -> AsyncIterator[Event]:
        """The events of `batches()` one by one."""
        async for batch in self.batches():
            for event in batch:
                yield event


@dataclass(eq=False)
class _Row:
    """A row as the worker tracks it: where it is in the pool and what it has produced."""

    job: Job
    index: int
    stream: TextStream
    generator: torch.Generator | None
    slot: int = -1
    length: int = 0  # positions filled in its slot (virtual tokens included)
    fed: int = 0  # prompt tokens in the cache
    cached: int = 0  # prompt tokens loaded from the prefix cache
    generated: int = 0
    next_token: int = 0  # chosen, fed by the next decode step
    pending: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=lambda: [None])
    prefill_step: int = 0
    first_token_step: int | None = None
    last_token_at: float = 0.0
    done: bool = False

    @property
    def spec(self) -> RowSpec:
        return self.job.rows[self.index]

    @property
    def prompt(self) -> list[int]:
        return self.spec.prompt_ids


class Engine:
    """Owns the model on a worker thread and serves jobs from any asyncio loop.

    model / tokenizer: as `chuan.infer.loading` returns them. defaults: the model dir's
    generation settings (`chuan.infer.sampling.generation_defaults`), which the server uses
    for fields a request leaves out. max_batch: rows in the KV pool at once (prefilling or
    decoding). max_queue: rows that may wait for a slot before `submit` refuses. prefill_chunk:
    prompt tokens prefilled per iteration. prefix_cache_tokens: prompt positions whose keys
    and values are kept for reuse (0: no reuse). max_model_len: the longest prompt + reply
    a slot holds (default the model's context).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        defaults: SamplingConfig,
        max_batch: int = 16,
        max_queue: int = 256,
        prefill_chunk: int = 512,
        prefix_cache_tokens: int = 4096,
        max_model_len: int | None = None,
    ):
        for name, value, least in (
            ("max_batch", max_batch, 1),
            ("max_queue", max_queue, 1),
            ("prefill_chunk", prefill_chunk, 1),
            ("prefix_cache_tokens", prefix_cache_tokens, 0),
        ):
            if value < least:
                raise InputError(f"{name} must be at least {least}, got {value}")
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        virtual = virtual_tokens(model)
        self.model = model.get_base_model() if virtual else model
        self.start = virtual.count if virtual else 0  # positions an adapter's tokens take
        context = context_length(model) or max_model_len
        if context is None:
            raise InputError("the model config gives no context length; set max_model_len")
        self.context_length = min(context, max_model_len or context) - self.start
        if self.context_length < 2:
            raise InputError(f"max_model_len {max_model_len} leaves no room for a prompt")
        self.vocab_size = self.model.config.vocab_size
        self.device = next(self.model.parameters()).device
        self.started = int(time.time())
        self.pool = SlotPool(self.model, max_batch, self.start + self.context_length)
        self.prefixes = PrefixCache(self.pool, prefix_cache_tokens)
        self._virtual_kv = self._virtual_key_values(virtual)
        self.metrics = EngineMetrics()
        self.decode_steps = 0
        self._lock = threading.Lock()
        self._queued = 0  # rows submitted and not yet admitted (guarded by _lock)
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._waiting: deque[_Row] = deque()
        self._prefilling: list[_Row] = []
        self._decoding: list[_Row] = []  # row i sits in slot i
        self._slot_rows: list[_Row | None] = [None] * max_batch
        self._free = set(range(max_batch))
        self._chooser: TokenChooser | None = None  # for `_decoding`, rebuilt when it changes
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Job, Event | _Failed]]] = {}
        self._worker = threading.Thread(target=self._run, name="chuan-engine", daemon=True)
        self._worker.start()

    # -- the handlers' side ---------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    @property
    def waiting_rows(self) -> int:
        return self._queued

    @property
    def running_rows(self) -> int:
        return len(self._decoding) + len(self._prefilling)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def submit(self, rows: Sequence[RowSpec], stop_strings: Sequence[str] = ()) -> Job:
        """Queue `rows` for generation; call from the loop that will read the job's events.

        Raises `QueueFull` when the waiting line has no room for them."""
        if not self.alive:
            raise GenerationError("the generation worker has stopped")
        for spec in rows:
            bad = [t for t in spec.prompt_ids if not 0 <= t < self.vocab_size]
            if bad or not spec.prompt_ids:
                raise InputError(
                    f"prompt token ids outside the vocabulary (0..{self.vocab_size - 1}): {bad[:5]}"
                    if bad
                    else "a prompt is empty: give at least one token id (e.g. BOS)"
                )
            budget = spec.config.max_new_tokens if spec.generate else 0
            if len(spec.prompt_ids) + budget > self.context_length:
                raise InputError(
                    f"a prompt of {len(spec.prompt_ids)} tokens and {budget} new tokens does "
                    f"not fit the {self.context_length} positions a sequence may take"
                )
        with self._lock:
            if self._queued + len(rows) > self.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(self._queued, self.max_queue, retry_after=1)
            self._queued += len(rows)
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

    # -- the worker ------------------------------------------------------------------------

    def _virtual_key_values(self, virtual):
        """Per-layer keys/values `[kv_heads, P, head_dim]` of a prompt-learning adapter's
        virtual tokens, which start every slot (None without such an adapter)."""
        if virtual is None:
            return None
        if virtual.key_values is not None:
            return [k[0] for k, _ in virtual.key_values], [v[0] for _, v in virtual.key_values]
        cache = KVCache.for_model(self.model, virtual.count)
        with torch.inference_mode():
            self.model(inputs_embeds=virtual.embeddings, past_key_values=cache, use_cache=True,
                       logits_to_keep=1)  # fmt: skip
        return [k[0] for k in cache.keys], [v[0] for v in cache.values]

    def _run(self) -> None:
        with torch.inference_mode():
            while self._take_jobs(block=not (self._waiting or self.running_rows)):
                self._drop_cancelled()
                self._admit()
                if self._prefilling:
                    rows = self._prefilling[:]
                    self._guarded(self._prefill_step, rows)
                    self._flush()  # first tokens go out before the decode step
                if self._decoding:
                    self._guarded(self._decode_step, self._decoding[:])
                self.metrics.observe_batch(len(self._decoding))
                self._flush()

    def _post(self, job: Job, event: Event | _Failed) -> None:
        """Queue `event` for its job; `_flush` hands it over at the end of the step."""
        self._outbox.setdefault(job._loop, []).append((job, event))

    def _flush(self) -> None:
        """Hand the step's events to their loops, one call per loop; a closed loop (its
        client gone) cancels its jobs."""
        for loop, items in self._outbox.items():
            try:
                loop.call_soon_threadsafe(_hand_over, items)
            except RuntimeError:
                for job, _ in items:
                    job.cancelled = True
        self._outbox = {}

    def _take_jobs(self, *, block: bool) -> bool:
        """Move submitted jobs' rows to the waiting line, waiting for the first when `block`;
        False once `close` was called."""
        while True:
            try:
                job = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if job is None:
                return False
            self._waiting.extend(
                _Row(
                    job,
                    i,
                    TextStream(self.tokenizer, job.stop_strings),
                    row_generator(spec.config.seed, self.device),
                )  # fmt: skip
                for i, spec in enumerate(job.rows)
            )
            block = False

    def _drop_cancelled(self) -> None:
        """Rows whose client went away leave the line, the prefill and the batch."""
        if any(row.job.cancelled for row in self._waiting):
            kept = deque(row for row in self._waiting if not row.job.cancelled)
            self._dequeued(len(self._waiting) - len(kept))
            self._waiting = kept
        for row in self._prefilling + self._decoding:
            if row.job.cancelled:
                self._release(row)

    def _dequeued(self, count: int) -> None:
        with self._lock:
            self._queued -= count

    def _admit(self) -> None:
        """Give free slots to waiting rows, their virtual tokens and cached prefix loaded."""
        while self._waiting and self._free:
            row = self._waiting.popleft()
            self._dequeued(1)
            row.slot = slot = self._free.pop()
            self._slot_rows[slot] = row
            prompt = row.prompt
            tokens = self.pool.tokens[slot]
            tokens.fill_(prompt[0])
            tokens[: len(prompt)] = torch.tensor(prompt, device=self.device)
            if self._virtual_kv is not None:
                self.pool.write(slot, 0, *self._virtual_kv)
            if not row.spec.echo:  # echo needs every prompt position's logits
                row.cached = self.prefixes.load(prompt, slot, self.start)
            row.fed = row.cached
            row.length = self.start + row.fed
            self._prefilling.append(row)
            self.metrics.prompt_tokens += len(prompt)
            self.metrics.cached_tokens += row.cached

    def _prefill_step(self) -> None:
        """The next prompt chunks of the oldest prefilling rows, `prefill_chunk` tokens in all,
        in forwards of rows with similar chunk lengths (`_similar_lengths`)."""
        chunks, budget = [], self.prefill_chunk
        for row in self._prefilling:
            take = min(len(row.prompt) - row.fed, budget)
            chunks.append((row, take))
            budget -= take
            if not budget:
                break
        done = []
        for group in _similar_lengths(chunks):
            done += self._prefill_forward(group)
        for row, _ in done:
            self._prefilling.remove(row)
            self.prefixes.store(row.prompt, row.slot, self.start)
            row.prefill_step = self.decode_steps
            if row.spec.echo:
                self._post(row.job, PromptScored(row.index, tuple(row.prompt_logprobs)))
        generating = [(row, last) for row, last in done if row.spec.generate]
        for row, _ in done:
            if not row.spec.generate:
                self._finish(row, "length", "")
        if generating:
            first = [row for row, _ in generating]
            last_logits = torch.stack([last for _, last in generating])
            chooser = TokenChooser([r.spec.config for r in first], self.device,
                                   [r.generator for r in first])  # fmt: skip
            history = self.pool.tokens[[r.slot for r in first], : max(len(r.prompt) for r in first)]
            for row in self._accept(first, last_logits, chooser.choose(last_logits, history)):
                self._join_decoding(row)

    def _prefill_forward(self, chunks: list[tuple[_Row, int]]) -> list[tuple[_Row, torch.Tensor]]:
        """One forward over `(row, tokens)` chunks, left-padded to the longest; returns the
        rows whose prompt is now done, with their last logits."""
        rows, counts = [row for row, _ in chunks], [count for _, count in chunks]
        width = max(counts)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (row, count) in enumerate(chunks):
            ids[i, width - count :] = torch.tensor(row.prompt[row.fed : row.fed + count])
        view = self.pool.prefill_view([r.slot for r in rows], [r.length for r in rows], counts)
        echo = any(row.spec.echo for row in rows)
        logits = self._forward(ids.to(self.device), view, keep=0 if echo else 1)
        done = []
        for i, (row, count) in enumerate(chunks):
            if row.spec.echo:
                self._score_prompt(row, logits[i, width - count :])
            row.fed += count
            row.length += count
            if row.fed == len(row.prompt):
                done.append((row, logits[i, -1]))
        return done

    def _decode_step(self) -> None:
        """One token for every running row."""
        rows = self._decoding
        view = self.pool.decode_view([row.length for row in rows])
        ids = torch.tensor([[row.next_token] for row in rows], device=self.device)
        logits = self._forward(ids, view, keep=1)[:, -1]
        for row in rows:
            row.length += 1
        self.decode_steps += 1
        if self._chooser is None:
            self._chooser = TokenChooser([r.spec.config for r in rows], self.device,
                                         [r.generator for r in rows])  # fmt: skip
        seen = max(row.length for row in rows) - self.start
        chosen = self._chooser.choose(logits, self.pool.tokens[: len(rows), :seen])
        self._accept(rows[:], logits, chosen)

    def _forward(self, ids: torch.Tensor, view, *, keep: int) -> torch.Tensor:
        """The model's fp32 logits of the last `keep` positions (0: all) through `view`."""
        out = self.model(input_ids=ids, past_key_values=view, attention_spec=view.spec,
                         use_cache=True, logits_to_keep=keep)  # fmt: skip
        return out.logits

    def _score_prompt(self, row: _Row, logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens after this chunk's positions."""
        begin = row.fed
        targets = row.prompt[begin + 1 : begin + 1 + len(logits)]
        logps = logits[: len(targets)].float().log_softmax(-1)
        row.prompt_logprobs += _logprobs_of(logps, targets, row.spec.logprobs or 0)

    def _accept(self, rows: list[_Row], logits: torch.Tensor, chosen: torch.Tensor) -> list[_Row]:
        """Take each row's chosen token: stop, count, report, stream; returns the rows that
        go on (each with its `next_token`)."""
        tokens = chosen.tolist()
        asked = [i for i, row in enumerate(rows) if row.spec.logprobs is not None]
        logprobs = {}
        if asked:
            logps = logits[asked].float().log_softmax(-1)
            top = max(rows[i].spec.logprobs for i in asked)
            entries = _logprobs_of(logps, [tokens[i] for i in asked], top)
            logprobs = dict(zip(asked, entries, strict=True))
        now = time.monotonic()
        going = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            cfg = row.spec.config
            if token in cfg.stop_token_ids:
                self._finish(row, "stop", row.stream.flush())
                continue
            self._count_token(row, now)
            if i in logprobs:
                entry = logprobs[i]
                row.pending.append(TokenLogprob(entry.token, entry.logprob,
                                                entry.top[: row.spec.logprobs]))  # fmt: skip
            text = row.stream.push(token)
            if row.stream.stopped:
                self._finish(row, "stop", text)
            elif row.generated >= cfg.max_new_tokens:
                self._finish(row, "length", text + row.stream.flush())
            else:
                if text:
                    self._post(row.job, TextDelta(row.index, text, tuple(row.pending)))
                    row.pending.clear()
                row.next_token = token
                self.pool.tokens[row.slot, row.length - self.start] = token
                going.append(row)
        return going

    def _count_token(self, row: _Row, now: float) -> None:
        row.generated += 1
        self.metrics.generated_tokens += 1
        if row.first_token_step is None:
            row.first_token_step = self.decode_steps
            self.metrics.time_to_first_token.observe(now - row.job.submitted)
        else:
            self.metrics.inter_token_latency.observe(now - row.last_token_at)
        row.last_token_at = now

    def _finish(self, row: _Row, reason: str, tail: str) -> None:
        """Free the row's slot, then send its last text and its finish (so a client that
        has its answer finds the slot free)."""
        self._release(row)
        self.metrics.finished_rows += 1
        if tail:
            self._post(row.job, TextDelta(row.index, tail, tuple(row.pending)))
            row.pending.clear()
        self._post(
            row.job,
            RowFinished(
                row.index,
                "length" if reason == "length" else "stop",
                row.generated,
                row.cached,
                tuple(row.pending),
                row.prefill_step,
                row.first_token_step,
            ),  # fmt: skip
        )

    def _join_decoding(self, row: _Row) -> None:
        """Move a prefilled row to slot `len(_decoding)`, the end of the decoding rows."""
        target = len(self._decoding)
        if row.slot != target:
            occupant = self._slot_rows[target]
            if occupant is None:
                self.pool.move(row.slot, target, row.length)
                self._free.remove(target)
                self._free.add(row.slot)
            else:  # a row still prefilling: it takes this row's slot
                self.pool.swap(row.slot, target, max(row.length, occupant.length))
                occupant.slot = row.slot
            self._slot_rows[row.slot] = occupant
            self._slot_rows[target] = row
            row.slot = target
        self._decoding.append(row)
        self._chooser = None

    def _release(self, row: _Row) -> None:
        """Free the row's slot; the last decoding row moves into a hole it leaves."""
        if row.done:
            return
        row.done = True
        freed = row.slot
        if freed < 0:  # never admitted
            return
        if row in self._prefilling:
            self._prefilling.remove(row)
        elif freed < len(self._decoding) and self._decoding[freed] is row:
            last = self._decoding.pop()
            if last is not row:
                self.pool.move(last.slot, row.slot, last.length)
                freed, last.slot = last.slot, row.slot
                self._decoding[row.slot] = last
                self._slot_rows[row.slot] = last
            self._chooser = None
        # else: prefilled and finished at its first token, before joining the batch
        self._slot_rows[freed] = None
        self._free.add(freed)

    def _guarded(self, call, rows: list[_Row]) -> None:
        """Run `call`; on an exception fail the jobs of `rows` instead of the worker."""
        try:
            call()
        except Exception as err:  # a bad batch must not take the server down
            log.exception("generation failed")
            message = f"generation failed: {type(err).__name__}: {err}"
            for job in {id(r.job): r.job for r in rows if not r.done}.values():
                self._post(job, _Failed(message))
                job.cancelled = True
            for row in rows:
                self._release(row)


def _similar_lengths(chunks: list, waste: float = 0.25) -> list[list]:
    """`(row, tokens)` chunks in groups whose padding to the longest costs at most `waste` of
    their real tokens: a left-padded forward computes every padded position, and one 400-token
    prompt beside seven 20-token ones would otherwise double the work."""
    groups: list[list] = []
    for chunk in sorted(chunks, key=lambda c: c[1]):
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(count for _, count in group) + chunk[1]
            if chunk[1] * (len(group) + 1) <= (1 + waste) * real:
                group.append(chunk)
                continue
        groups.append([chunk])
    return groups


def _hand_over(items: list[tuple[Job, Event | _Failed]]) -> None:
    """Put a step's events into their jobs' queues, one list per job (on the job's loop)."""
    by_job: dict[int, tuple[Job, list]] = {}
    for job, event in items:
        by_job.setdefault(id(job), (job, []))[1].append(event)
    for job, events in by_job.values():
        job._events.put_nowait(events)


def _logprobs_of(logps: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Each row's entry for `tokens[i]` from log-probabilities `logps` `[n, V]`, with its
    `top` most likely alternatives."""
    index = torch.tensor(tokens, device=logps.device)[:, None]
    chosen = logps.gather(1, index)[:, 0].tolist()
    alternatives = [[]] * len(tokens)
    if top:
        values, ids = logps.topk(top, dim=-1)
        pairs = zip(ids.tolist(), values.tolist(), strict=True)
        alternatives = [list(zip(i, v, strict=True)) for i, v in pairs]
    return [
        TokenLogprob(token, logp, tuple(alt))
        for token, logp, alt in zip(tokens, chosen, alternatives, strict=True)
    ]


def load_engine(
    model_dir: str | Path,
    *,
    device: str | None = None,
    dtype: str = "auto",
    adapter: str | Path | None = None,
    **settings,
) -> Engine:
    """An `Engine` over the model, tokenizer and generation defaults of `model_dir` (with
    a LoRA `adapter` folded in: see `load_model`); `settings` go to `Engine`."""
    from chuan.infer.loading import load_model, load_saved_tokenizer, side_files_dir
    from chuan.infer.sampling import generation_defaults

    side = side_files_dir(model_dir, adapter)
    tokenizer = load_saved_tokenizer(side)
    if tokenizer is None:
        raise MissingError(f"{model_dir} has no tokenizer files; chuan serve needs text")
    model = load_model(model_dir, device=device, dtype=dtype, adapter=adapter)
    return Engine(model, tokenizer, defaults=generation_defaults(side), **settings)
