"""`chuan serve`'s HTTP side: an OpenAI-compatible API (FastAPI) in front of an `Engine`.

Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`,
`POST /v1/completions` (both with `stream`), and `GET /health` (no key needed). With a knowledge
base (`chuan serve --kb`, a `Grounding`), chat completions answer from retrieved sources with
checked citations (a top-level `citations` list), and `POST /v1/kb/search` searches it. Bodies are
parsed here rather than by FastAPI so that every failure (malformed JSON, a wrong field, a
curl call without a JSON content type) gets one OpenAI-shaped error that names the field:
`{"error": {"message", "type", "param", "code"}}`.

Request fields that OpenAI gives a default of its own keep OpenAI's default (temperature 1,
top_p 1, n 1, max_tokens 16 for completions); the others come from the model dir's
generation settings (top_k, repetition_penalty, stop ids, and max_tokens for chat). The
server never truncates a prompt: a prompt that leaves no room in the context is a 400
`context_length_exceeded`, and max_tokens is cut to the room that is left.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from chuan.errors import InputError
from chuan.infer import openai_schema as oa
from chuan.infer.chat import build_chat_input
from chuan.infer.engine import (
    Engine,
    GenerationError,
    Job,
    PromptScored,
    QueueFull,
    RowFinished,
    RowSpec,
    TextDelta,
    TokenLogprob,
)
from chuan.infer.generate import SamplingConfig
from chuan.infer.logprobs import TokenText
from chuan.infer.metrics import prometheus_text
from chuan.infer.webui import install_web_routes

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class APIError(Exception):
    """An error answered in OpenAI's shape with HTTP status `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.detail = oa.ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = dict(headers or {})
        if status == 401:
            self.headers["WWW-Authenticate"] = "Bearer"

    def response(self) -> JSONResponse:
        body = oa.dump(oa.ErrorResponse(error=self.detail))
        return JSONResponse(body, status_code=self.status, headers=self.headers or None)


def _dotted(loc: tuple) -> str:
    """A pydantic location as a path: `("messages", 0, "role")` -> `messages[0].role`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _invalid_body(err: ValidationError) -> APIError:
    """A 400 naming the first invalid field (and how many more there are)."""
    errors = err.errors()
    param = _dotted(errors[0]["loc"]) or None
    message = errors[0]["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return APIError(400, f"{param}: {message}{more}" if param else message + more, param=param)


class Grounding(Protocol):
    """A knowledge base behind chat completions (`chuan.rag.answer.Retrieval`). It is handed to
    `create_app` rather than imported: the rag room sits above this one.

    `ground(messages, fits)` retrieves with the last user message and returns the turn: its
    `messages` (sources put in, fitted with `fits`), `fixed_reply` (the answer when nothing
    relevant was found, else None), `checker()` (one citation checker per choice: `push`,
    `flush`, `cited`) and `citations(numbers)` (the cited sources as dicts).
    """

    def ground(self, messages: list[dict], fits: Callable[[list[dict]], bool]) -> Any: ...

    def search_results(self, query: str, k: int | None = None) -> list[dict]: ...


async def _json_body(request: Request, schema: type[BaseModel]) -> BaseModel:
    """The request body validated against `schema`, whatever its content type says."""
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is empty: send a JSON object")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise APIError(400, f"malformed JSON body: {err}", code="invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise _invalid_body(err) from err


async def _parse(request: Request, schema: type[oa.GenerationRequest]) -> oa.GenerationRequest:
    """A generation request, with OpenAI's fields that chuan does not implement refused."""
    body = await _json_body(request, schema)
    name = body.unsupported_field()
    if name is not None:
        raise APIError(400, f"{name}: not supported by chuan serve", param=name)
    return body


def _sampling(body: oa.GenerationRequest, defaults: SamplingConfig, max_new: int, choice: int):
    """One row's settings: the request's fields, else OpenAI's default, else the model's."""

    def pick(value, fallback):
        return fallback if value is None else value

    return SamplingConfig(
        max_new_tokens=max_new,
        temperature=pick(body.temperature, 1.0),
        top_p=pick(body.top_p, 1.0),
        top_k=pick(body.top_k, defaults.top_k),
        repetition_penalty=pick(body.repetition_penalty, defaults.repetition_penalty),
        stop_token_ids=defaults.stop_token_ids,
        seed=None if body.seed is None else body.seed + choice,
    )


def _budget(prompt_tokens: int, requested: int, context: int, param: str) -> int:
    """New tokens a prompt may have: `requested`, cut to the room left in the context."""
    room = context - prompt_tokens
    if room < 1 and not (requested == 0 and room == 0):
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens, but the {param} "
            f"came to {prompt_tokens} tokens, which leaves no room for a completion. "
            f"Shorten the {param}.",
            param=param,
            code="context_length_exceeded",
        )
    return min(requested, room)


def _rows(
    engine: Engine, prompts: list[list[int]], body: oa.GenerationRequest, requested: int, param: str
) -> list[RowSpec]:
    """`body.n` rows per prompt, prompt-major (row = prompt * n + choice, as OpenAI indexes).
    `requested` 0 (completions with `echo`) scores the prompt and generates nothing."""
    rows = []
    echo = getattr(body, "echo", False)
    for ids in prompts:
        max_new = _budget(len(ids), requested, engine.context_length, param)
        rows += [
            RowSpec(
                ids,
                _sampling(body, engine.defaults, max(max_new, 1), choice),
                logprobs=body.alternatives,
                echo=echo,
                generate=max_new > 0,
            )
            for choice in range(body.n)
        ]
    return rows


def _chat_ids(engine: Engine, messages: list[dict]) -> list[int]:
    """The chat input of the whole conversation in the model's template (never cut: see
    module doc)."""
    try:
        return build_chat_input(engine.tokenizer, messages, 0, sys.maxsize)
    except ValueError as err:
        raise APIError(400, f"messages: {err}", param="messages") from err


def _completion_ids(engine: Engine, prompt: str | list[int]) -> list[int]:
    """Token ids of one prompt: ids as given, text encoded as the tokenizer is configured
    (Baichuan 2: no BOS); an empty text becomes BOS so that there is something to continue."""
    if isinstance(prompt, list):
        bad = [t for t in prompt if t >= engine.vocab_size]
        if bad:
            vocab = f"0..{engine.vocab_size - 1}"
            message = f"prompt: token ids {bad[:5]} are outside the vocabulary ({vocab})"
            raise APIError(400, message, param="prompt")
        return prompt
    return engine.tokenizer.encode(prompt) or [engine.model.config.bos_token_id]


@dataclass
class _Choice:
    """One row's collected output."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    tokens: int = 0
    cached: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    prompt_ids: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _usage(prompts: list[list[int]], completion_tokens: int, cached: list[int]) -> oa.Usage:
    """Usage as OpenAI counts it: each prompt once (not once per choice), every new token;
    `cached` (each prompt's tokens read from the prefix cache) gives `prompt_tokens_details`."""
    prompt_tokens = sum(map(len, prompts))
    return oa.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=sum(cached)),
    )


@dataclass
class _ChatFormat:
    """Chat completion objects and chunks of one response."""

    id: str
    created: int
    model: str
    text: TokenText

    def opening(self, rows: int) -> list[BaseModel]:
        """The first chunk of each choice carries the role, as OpenAI's do."""
        return [self._chunk(i, oa.Delta(role="assistant", content=""), None) for i in range(rows)]

    def chunk(self, row: int, text: str | None, reason: str | None, logprobs=()) -> BaseModel:
        return self._chunk(row, oa.Delta(content=text), reason, logprobs)

    def prompt_chunk(self, row: int, prompt: list[int], scored) -> None:
        return None  # chat never echoes the prompt

    def _chunk(self, row: int, delta: oa.Delta, reason: str | None, logprobs=()) -> BaseModel:
        scores = self.text.chat(list(logprobs)) if logprobs else None
        choice = oa.ChatChunkChoice(index=row, delta=delta, finish_reason=reason, logprobs=scores)
        return oa.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        )

    def usage_chunk(self, usage: oa.Usage | None) -> BaseModel:
        return oa.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=usage
        )

    def response(self, choices: list[_Choice], usage: oa.Usage, wants_logprobs: bool):
        return oa.ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                oa.ChatChoice(
                    index=i,
                    message=oa.AssistantMessage(content=c.text),
                    finish_reason=c.finish_reason,
                    logprobs=self.text.chat(c.logprobs) if wants_logprobs else None,
                )
                for i, c in enumerate(choices)
            ],
            usage=usage,
        )


@dataclass
class _CompletionFormat:
    """Text completion objects and chunks of one response (chunks are completions too).

    With `echo`, each choice's text and log-probabilities start with its prompt's."""

    id: str
    created: int
    model: str
    text: TokenText
    echoed: list[str] | None = None  # each prompt's text, with echo
    n: int = 1

    def opening(self, rows: int) -> list[BaseModel]:
        return []

    def chunk(self, row: int, text: str | None, reason: str | None, logprobs=()) -> BaseModel:
        scores = None
        if logprobs:
            scores = self.text.completion(list(logprobs), [e.token for e in logprobs])
        choice = oa.CompletionChoice(index=row, text=text or "", finish_reason=reason,
                                     logprobs=scores)  # fmt: skip
        return self.response_of([choice], None)

    def prompt_chunk(self, row: int, prompt: list[int], scored) -> BaseModel:
        """The echoed prompt of `row`, streamed before its first new text."""
        scores = self.text.completion(list(scored), prompt)
        text = self.echoed[row // self.n]
        return self.response_of([oa.CompletionChoice(index=row, text=text, logprobs=scores)], None)

    def usage_chunk(self, usage: oa.Usage) -> BaseModel:
        return self.response_of([], usage)

    def response(self, choices: list[_Choice], usage: oa.Usage, wants_logprobs: bool):
        return self.response_of(
            [self._choice(i, c, wants_logprobs) for i, c in enumerate(choices)], usage
        )

    def _choice(self, row: int, choice: _Choice, wants_logprobs: bool) -> oa.CompletionChoice:
        prefix = self.echoed[row // self.n] if self.echoed is not None else ""
        scores = None
        if wants_logprobs:
            entries: list[TokenLogprob | None] = list(choice.logprobs)
            tokens = [e.token for e in choice.logprobs]
            prompt = choice.prompt_logprobs
            if prompt is not None:
                entries = list(prompt) + entries
                tokens = choice.prompt_ids + tokens
            scores = self.text.completion(entries, tokens)
        return oa.CompletionChoice(index=row, text=prefix + choice.text,
                                   finish_reason=choice.finish_reason, logprobs=scores)  # fmt: skip

    def response_of(self, choices: list[oa.CompletionChoice], usage: oa.Usage | None):
        return oa.Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )


Format = _ChatFormat | _CompletionFormat


class _Citing:
    """The citation side of one grounded response: a checker per choice, fed the choice's
    text as it comes, and the sources cited by any choice."""

    def __init__(self, turn, rows: int):
        self.turn = turn
        self.checkers = [turn.checker() for _ in range(rows)]

    def push(self, row: int, text: str) -> str:
        return self.checkers[row].push(text)

    def flush(self, row: int) -> str:
        return self.checkers[row].flush()

    def citations(self) -> list[dict]:
        return self.turn.citations(n for checker in self.checkers for n in checker.cited)


class _FixedJob:
    """A job whose rows all answer `text` without the model: a grounded turn with no
    relevant source says so instead of generating."""

    def __init__(self, rows: int, text: str):
        self.rows = [text] * rows

    async def batches(self) -> AsyncIterator[list[TextDelta | RowFinished]]:
        yield [
            event
            for row, text in enumerate(self.rows)
            for event in (TextDelta(row, text), RowFinished(row, "stop", 0))
        ]

    async def events(self) -> AsyncIterator[TextDelta | RowFinished]:
        async for batch in self.batches():
            for event in batch:
                yield event

    def cancel(self) -> None:
        pass


def _sse(payload: BaseModel | dict) -> str:
    """One server-sent event; a model is serialised by pydantic's compiled JSON writer (the
    per-chunk cost of a stream), compact and with non-ASCII text as is, like `json.dumps`
    below."""
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _merged(batch: list) -> list:
    """`batch` with each run of text deltas of one row joined into one: a client reading
    slower than the model decodes gets fewer, longer chunks instead of a growing backlog."""
    merged: list = []
    for event in batch:
        last = merged[-1] if merged else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta) and last.row == event.row:
            merged[-1] = TextDelta(
                event.row, last.text + event.text, last.logprobs + event.logprobs
            )
        else:
            merged.append(event)
    return merged


async def _stream(
    job: Job | _FixedJob,
    fmt: Format,
    prompts: list[list[int]],
    include_usage: bool,
    citing: _Citing | None,
) -> AsyncIterator[str]:
    """Server-sent events: the echoed prompt (completions with `echo`), one chunk per text
    delta, a finish chunk per choice, optionally a usage chunk, then `[DONE]`. What arrived
    together is sent in one write (`Job.batches`, `_merged`). Leaving early (the client went
    away) cancels the job.

    With `citing`, a choice's text is sent a sentence at a time, citations checked, and the
    last chunk (empty `choices`, with the usage when asked for) carries `citations`. Token
    log-probabilities ride on the next chunk that is sent for their choice."""
    completion_tokens = 0
    n = len(job.rows) // len(prompts)
    cached = [0] * len(prompts)
    waiting: dict[int, list[TokenLogprob]] = {}
    try:
        out = [_sse(chunk) for chunk in fmt.opening(len(job.rows))]
        async for batch in job.batches():
            for event in _merged(batch):
                row = event.row
                if isinstance(event, PromptScored):
                    out.append(_sse(fmt.prompt_chunk(row, prompts[row // n], event.tokens)))
                    continue
                waiting.setdefault(row, []).extend(event.logprobs)
                if isinstance(event, TextDelta):
                    text = event.text if citing is None else citing.push(row, event.text)
                    if text:
                        out.append(_sse(fmt.chunk(row, text, None, waiting.pop(row))))
                    continue
                rest = "" if citing is None else citing.flush(row)
                if rest:
                    out.append(_sse(fmt.chunk(row, rest, None, waiting.pop(row))))
                completion_tokens += event.completion_tokens
                if row % n == 0:
                    cached[row // n] = event.cached_tokens
                out.append(_sse(fmt.chunk(row, None, event.reason, waiting.pop(row, ()))))
            if out:
                yield "".join(out)
            out = []
        if include_usage or citing is not None:
            usage = _usage(prompts, completion_tokens, cached) if include_usage else None
            last = oa.dump(fmt.usage_chunk(usage))
            if citing is not None:
                last["citations"] = citing.citations()
            yield _sse(last)
        yield "data: [DONE]\n\n"
    except GenerationError as err:
        yield _sse({"error": oa.dump(APIError(500, str(err), type="server_error").detail)})
    finally:
        job.cancel()


async def _collect(job: Job | _FixedJob) -> list[_Choice]:
    choices = [_Choice() for _ in job.rows]
    async for event in job.events():
        choice = choices[event.row]
        if isinstance(event, PromptScored):
            choice.prompt_logprobs = event.tokens
            continue
        choice.logprobs += event.logprobs
        if isinstance(event, TextDelta):
            choice.parts.append(event.text)
        else:
            choice.finish_reason, choice.tokens = event.reason, event.completion_tokens
            choice.cached = event.cached_tokens
    return choices


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect_unless_gone(job: Job | _FixedJob, request: Request) -> list[_Choice] | None:
    """The job's choices, or None (and the job cancelled) when the client hangs up first.

    `Task.cancel()` only requests the cancellation (the task is not `cancelled()` until it
    runs again), so "the client went first" is read as "collecting had not finished", never
    from `cancelled()`: asking an unfinished task for its `result()` raises
    `InvalidStateError`."""
    collecting = asyncio.ensure_future(_collect(job))
    watching = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        finished = collecting.done()
        if not finished:
            job.cancel()
            collecting.cancel()
    if not finished or collecting.cancelled():
        return None
    try:
        return collecting.result()
    except GenerationError as err:
        raise APIError(500, str(err), type="server_error") from err


async def _respond(
    request: Request,
    engine: Engine,
    body: oa.GenerationRequest,
    fmt: Format,
    prompts: list[list[int]],
    rows: list[RowSpec],
    citing: _Citing | None = None,
) -> Response:
    """Submit the rows; stream the events or answer once with the whole response.

    With `citing`, citations are checked and listed; a turn with a fixed reply (no relevant
    source) answers it for every choice without submitting anything."""
    fixed = None if citing is None else citing.turn.fixed_reply
    if fixed is not None:
        job = _FixedJob(body.n, fixed)
    elif not engine.alive:
        raise APIError(503, "the generation worker has stopped", type="server_error")
    else:
        try:
            job = engine.submit(rows, body.stop)
        except QueueFull as err:
            headers = {"Retry-After": str(err.retry_after)}
            raise APIError(429, str(err), type="server_busy", headers=headers) from err
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream(job, fmt, prompts, include_usage, citing)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    choices = await _collect_unless_gone(job, request)
    if choices is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    if citing is not None:
        for row, choice in enumerate(choices):
            choice.parts = [citing.push(row, choice.text) + citing.flush(row)]
    n = len(choices) // len(prompts)
    cached = [choice.cached for choice in choices[::n]]
    usage = _usage(prompts, sum(c.tokens for c in choices), cached)
    for choice, row in zip(choices, rows or (), strict=False):
        choice.prompt_ids = row.prompt_ids
    payload = oa.dump(fmt.response(choices, usage, body.alternatives is not None))
    if citing is not None:
        payload["citations"] = citing.citations()
    return JSONResponse(payload)


def _bearer_check(api_key: str | None):
    """A dependency refusing requests without `Authorization: Bearer <api_key>`."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise APIError(
                401,
                "missing API key: send the header `Authorization: Bearer KEY`",
                code="invalid_api_key",
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), api_key.encode()
        ):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    return check


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, leaves in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = f"{err.detail}: {request.method} {request.url.path}"
        response = APIError(err.status_code, message).response()
        response.headers.update(err.headers or {})
        return response

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = f"internal error: {type(err).__name__}: {err}"
        return APIError(500, message, type="server_error").response()


def _grounded(
    engine: Engine, grounding: Grounding, messages: list[dict], requested: int
) -> tuple[list[int], _Citing]:
    """The prompt ids of `messages` answered from the knowledge base, and its citation side.

    The sources are fitted to leave the reply `requested` tokens, at most half the context
    (the most the server cuts a reply to before it would refuse the prompt)."""
    room = engine.context_length - min(requested, engine.context_length // 2)
    try:
        turn = grounding.ground(messages, lambda m: len(_chat_ids(engine, m)) <= room)
    except InputError as err:
        raise APIError(400, f"messages: {err}", param="messages") from err
    return _chat_ids(engine, turn.messages), turn


def create_app(
    engine: Engine,
    *,
    model_name: str,
    api_key: str | None = None,
    grounding: Grounding | None = None,
    runs_dir: str | Path | None = None,
) -> FastAPI:
    """The OpenAI-compatible app serving `engine`'s model as `model_name`.

    With `api_key`, every `/v1` route needs `Authorization: Bearer <api_key>`; `/health`
    never does. With `grounding`, chat completions answer from its knowledge base with
    citations, and `POST /v1/kb/search` searches it. The web page at `/` chats with the model
    and charts the training runs under `runs_dir` (`chuan.infer.webui`). The caller owns the
    engine (and closes it after the server stops).
    """
    # No /docs or /openapi.json: the surface is exactly the API below.
    app = FastAPI(title="chuan serve", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    authorized = [Depends(_bearer_check(api_key))]
    card = oa.ModelCard(id=model_name, created=engine.started)

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                404,
                f"The model {name!r} does not exist; this server serves {model_name!r}",
                param="model",
                code="model_not_found",
            )

    token_text = TokenText(engine.tokenizer)

    def new_format(kind: type[Format], prefix: str, **extra) -> Format:
        return kind(id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()),
                    model=model_name, text=token_text, **extra)  # fmt: skip

    # Answers by endpoint and status for /metrics; unknown paths count as one endpoint.
    requests: Counter[tuple[str, int]] = Counter()
    endpoints = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
                 "/v1/kb/search"}  # fmt: skip

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        path = request.url.path
        requests[(path if path in endpoints else "other", response.status_code)] += 1
        return response

    @app.get("/health")
    async def health() -> JSONResponse:
        status = {
            "status": "ok" if engine.alive else "worker stopped",
            "model": model_name,
            "waiting_rows": engine.waiting_rows,
            "running_rows": engine.running_rows,
            "max_batch": engine.max_batch,
            "max_queue": engine.max_queue,
        }
        return JSONResponse(status, status_code=200 if engine.alive else 503)

    @app.get("/metrics", dependencies=authorized)
    async def metrics() -> Response:
        text = prometheus_text(engine, dict(requests))
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=authorized)
    async def list_models() -> JSONResponse:
        return JSONResponse(oa.dump(oa.ModelList(data=[card])))

    @app.get("/v1/models/{name:path}", dependencies=authorized)
    async def get_model(name: str) -> JSONResponse:
        check_model(name)
        return JSONResponse(oa.dump(card))

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(request: Request) -> Response:
        body = await _parse(request, oa.ChatCompletionRequest)
        check_model(body.model)
        messages = [m.as_baichuan() for m in body.messages]
        requested = body.token_limit or engine.defaults.max_new_tokens
        citing = None
        if grounding is None:
            prompts = [_chat_ids(engine, messages)]
        else:
            ids, turn = _grounded(engine, grounding, messages, requested)
            prompts, citing = [ids], _Citing(turn, body.n)
        fmt = new_format(_ChatFormat, "chatcmpl")
        if citing is not None and citing.turn.fixed_reply is not None:
            return await _respond(request, engine, body, fmt, prompts, [], citing)
        rows = _rows(engine, prompts, body, requested, "messages")
        return await _respond(request, engine, body, fmt, prompts, rows, citing)

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(request: Request) -> Response:
        body = await _parse(request, oa.CompletionRequest)
        check_model(body.model)
        prompts = [_completion_ids(engine, p) for p in body.prompts]
        rows = _rows(engine, prompts, body, body.max_tokens, "prompt")
        echoed = None
        if body.echo:
            echoed = [p if isinstance(p, str) else engine.tokenizer.decode(p) for p in body.prompts]
        fmt = new_format(_CompletionFormat, "cmpl", echoed=echoed, n=body.n)
        return await _respond(request, engine, body, fmt, prompts, rows)

    if grounding is not None:

        @app.post("/v1/kb/search", dependencies=authorized)
        async def kb_search(request: Request) -> JSONResponse:
            body = await _json_body(request, oa.KbSearchRequest)
            results = grounding.search_results(body.query, body.k)
            return JSONResponse({"object": "list", "query": body.query, "results": results})

    install_web_routes(
        app,
        authorized=authorized,
        runs_dir=runs_dir,
        model_name=model_name,
        grounded=grounding is not None,
    )
    return app
