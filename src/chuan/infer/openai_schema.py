"""The OpenAI wire format `chuan serve` speaks: request bodies, responses, stream chunks, errors.

Request models validate everything a client may send, so a bad field is answered with a 400
naming it before the model is touched. Fields of OpenAI's API that chuan does not implement
(tools, penalties, ...) are accepted only at their neutral value (`null`, `false`,
`0`, empty); anything else is refused by name rather than silently ignored. A few fields that
change nothing about the text (`user`, `metadata`, `store`, ...) are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from chuan.errors import InputError

# Fields that describe the caller or storage, never the generated text.
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}
)


def _is_neutral(name: str, value: Any) -> bool:
    """Whether an unimplemented OpenAI field holds its no-op value (`best_of`'s is 1)."""
    if name == "best_of":
        return value == 1 and type(value) is int
    if isinstance(value, bool) or value is None:
        return value is not True
    if isinstance(value, (int, float)):
        return value == 0
    return value in ("", [], {})


class StreamOptions(BaseModel):
    """`include_usage` adds a last chunk with empty `choices` and the request's usage."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ResponseFormat(BaseModel):
    """`response_format`: only plain text. chuan does not constrain decoding to a grammar, so
    `json_object` / `json_schema` are refused by name rather than answered with text that
    may not parse."""

    model_config = ConfigDict(extra="allow")

    type: str

    @field_validator("type")
    @classmethod
    def _text_only(cls, kind: str) -> str:
        if kind != "text":
            raise InputError(
                f"{kind!r} is not supported: chuan serve does not constrain decoding to JSON; "
                "send type 'text', ask for JSON in the prompt and validate the reply"
            )
        return kind


class GenerationRequest(BaseModel):
    """Shared sampling fields of both endpoints; extras are checked, not dropped."""

    model_config = ConfigDict(extra="allow")

    model: str
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: list[str] = []  # a single string is accepted too
    seed: Annotated[int | None, Field(ge=-(2**63), lt=2**63)] = None  # int64, as OpenAI's
    # Not in OpenAI's API, accepted as in vLLM and Baichuan's own `generation_config.json`.
    top_k: Annotated[int | None, Field(ge=0)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0.0)] = None
    response_format: ResponseFormat | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, stop: Any) -> Any:
        """OpenAI's `stop` is a string, a list of strings or null; keep one shape."""
        return [stop] if isinstance(stop, str) else [] if stop is None else stop

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, stop: list[str]) -> list[str]:
        if not all(stop):
            raise InputError("stop strings must not be empty")
        return stop

    def unsupported_field(self) -> str | None:
        """The first extra field that is neither ignorable nor at its neutral value, if any.

        Checked by the server rather than by a validator so that its error can name the field
        in `param` (a model validator's errors carry no field location).
        """
        for name, value in (self.model_extra or {}).items():
            if name not in IGNORED_FIELDS and not _is_neutral(name, value):
                return name
        return None


class TextPart(BaseModel):
    """One part of a multi-part message content; only text parts exist for a text model."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A message of the conversation; `developer` is OpenAI's newer name for `system`."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_baichuan(self) -> dict[str, str]:
        """`{role, content}` with the content's text parts joined and `developer` as `system`."""
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(GenerationRequest):
    """`POST /v1/chat/completions`."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None

    @field_validator("messages")
    @classmethod
    def _system_first(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for i, message in enumerate(messages[1:], start=1):
            if message.as_baichuan()["role"] == "system":
                raise InputError(f"message {i} is a system message; only the first may be")
        return messages

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise InputError("top_logprobs needs logprobs: true")
        return self

    @property
    def token_limit(self) -> int | None:
        """`max_completion_tokens` (OpenAI's newer name) or else `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def alternatives(self) -> int | None:
        """Alternatives to report per token (None: no log-probabilities)."""
        return (self.top_logprobs or 0) if self.logprobs else None


def _is_ids(value: Any) -> bool:
    """A non-empty list of non-negative ints (bools are not token ids)."""
    return isinstance(value, list) and bool(value) and all(type(t) is int and t >= 0 for t in value)


class CompletionRequest(GenerationRequest):
    """`POST /v1/completions`; a prompt is text or token ids, one or a list of them."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=0)] = 16  # OpenAI's default for this endpoint
    echo: bool = False
    logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    suffix: None = None

    @model_validator(mode="after")
    def _nothing_to_do(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise InputError("max_tokens is 0 and echo is off: there is nothing to return")
        return self

    @property
    def alternatives(self) -> int | None:
        return self.logprobs

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, prompt: Any) -> Any:
        """One clear message for every wrong shape, instead of one error per union member."""
        texts = (
            isinstance(prompt, list) and bool(prompt) and all(isinstance(p, str) for p in prompt)
        )
        batch = isinstance(prompt, list) and bool(prompt) and all(map(_is_ids, prompt))
        if not (isinstance(prompt, str) or texts or _is_ids(prompt) or batch):
            raise InputError(
                "must be a string, a non-empty list of strings, a non-empty list of "
                "token ids (ints >= 0), or a non-empty list of such lists"
            )
        return prompt

    @property
    def prompts(self) -> list[str | list[int]]:
        """Every prompt of the request: a text or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str) or isinstance(prompt[0], int):
            return [prompt]
        return list(prompt)


class KbSearchRequest(BaseModel):
    """`POST /v1/kb/search` (chuan's own, with `chuan serve --kb`): the best `k` chunks of the
    knowledge base for `query` (default: the server's `--k`)."""

    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, Field(min_length=1)]
    k: Annotated[int | None, Field(ge=1, le=100)] = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # read from the prefix cache, not prefilled


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, `None` for the first prompt token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chuan"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    """A chunk's change to a message; only the parts present are sent (`{}` at the end)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _present_only(self) -> dict[str, str]:
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    """A whole completion, and (with `finish_reason` null until the end) a stream chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a response model (every field, nulls included, as OpenAI does)."""
    return model.model_dump(mode="json")
