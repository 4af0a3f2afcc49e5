"""`chuan serve` end to end: a real uvicorn server on a loopback port, driven by the official
`openai` client (sync and async) and by raw HTTP for what a client library would hide.

The model is a tiny random Baichuan with a real trained tokenizer; every text the server
returns is checked against `chuan.infer.generate` on the same ids with the same settings,
and every token count against the ids themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest
import torch

from chuan.errors import InputError
from chuan.infer.chat import build_chat_input
from chuan.infer.engine import Engine, GenerationError, RowFinished, RowSpec
from chuan.infer.generate import generate
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.infer.logprobs import TokenText
from chuan.infer.sampling import generation_defaults
from chuan.infer.server import create_app
from chuan.infer.text import TextStream
from helpers.serving import GENERATION_CONFIG, chat_model_dir, running

KEY = "test-key"
NAME = "tiny-chat"
USER, ASSISTANT = 195, 196  # Baichuan 2 role ids


@pytest.fixture(scope="module")
def model_dir(test_data, tmp_path_factory) -> Path:
    return chat_model_dir(test_data, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_saved_tokenizer(model_dir)


@pytest.fixture(scope="module")
def engine(model, tokenizer, model_dir):
    with Engine(model, tokenizer, defaults=generation_defaults(model_dir), max_batch=8) as engine:
        yield engine


@pytest.fixture(scope="module")
def base_url(engine) -> str:
    """A uvicorn server for the module, on a loopback port the OS picked."""
    with running(create_app(engine, model_name=NAME, api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{base_url}/v1", max_retries=0, timeout=30)


def reference(model, model_dir, prompt: list[int], **settings) -> list[int]:
    """`chuan.infer.generate` with the server's documented defaults: OpenAI's temperature 1
    and top_p 1, the model dir's top_k, repetition penalty and stop ids; `settings` win."""
    settings = {"temperature": 1.0, "top_p": 1.0, "seed": None, **settings}
    cfg = dataclasses.replace(generation_defaults(model_dir), **settings)
    return generate(model, [prompt], cfg)[0]


def text_of(tokenizer, ids: list[int]) -> str:
    """`ids` as text through `TextStream`, the server's detokenizer. It equals
    `tokenizer.decode` except on invalid UTF-8 byte runs (which a random model emits), where
    the stream keeps the valid bytes that `decode` would replace."""
    stream = TextStream(tokenizer)
    return "".join(stream.push(t) for t in ids) + stream.flush()


def chat_ids(tokenizer, text: str) -> list[int]:
    """A one-message conversation in Baichuan 2's format, by hand."""
    return [USER, *tokenizer.encode(text), ASSISTANT]


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).owned_by == "chuan"


def test_chat_greedy_equals_generate_and_counts_usage(client, model, model_dir, tokenizer):
    messages = [{"role": "user", "content": "In the beginning God created"}]
    prompt = build_chat_input(tokenizer, messages, 0, sys.maxsize)
    assert prompt == chat_ids(tokenizer, messages[0]["content"])
    out = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=12, temperature=0
    )
    ids = reference(model, model_dir, prompt, temperature=0.0, max_new_tokens=12)
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == text_of(tokenizer, ids)
    assert choice.finish_reason == ("length" if len(ids) == 12 else "stop")
    assert out.usage.prompt_tokens == len(prompt)
    assert out.usage.completion_tokens == len(ids)
    assert out.usage.total_tokens == len(prompt) + len(ids)
    assert out.id.startswith("chatcmpl-") and out.model == NAME and out.created > 0


def test_completion_of_ids_and_of_text_equal_generate(client, model, model_dir, tokenizer):
    text = "And the earth was without form"
    prompts = [tokenizer.encode(text), tokenizer.encode(text)[:3]]
    refs = [reference(model, model_dir, p, temperature=0.0, max_new_tokens=10) for p in prompts]
    expected = [text_of(tokenizer, ids) for ids in refs]
    of_text = client.completions.create(model=NAME, prompt=text, max_tokens=10, temperature=0)
    assert of_text.choices[0].text == expected[0]
    of_ids = client.completions.create(model=NAME, prompt=prompts, max_tokens=10, temperature=0)
    assert [c.text for c in of_ids.choices] == expected
    assert [c.index for c in of_ids.choices] == [0, 1]
    assert of_ids.usage.prompt_tokens == sum(map(len, prompts))
    assert of_ids.usage.completion_tokens == sum(map(len, refs))


def test_defaults_come_from_openai_then_the_model_dir(client, model, model_dir, tokenizer):
    """No temperature / top_p / max_tokens sent: OpenAI's 1 and 1, the dir's 6 new tokens,
    top-k 4 and penalty 1.1 (the dir's temperature 0.3 and top-p 0.85 are not used)."""
    messages = [{"role": "user", "content": "Let there be light"}]
    out = client.chat.completions.create(model=NAME, messages=messages, seed=11)
    prompt = chat_ids(tokenizer, messages[0]["content"])
    ids = reference(model, model_dir, prompt, seed=11)
    assert out.choices[0].message.content == text_of(tokenizer, ids)
    assert out.usage.completion_tokens == len(ids) <= GENERATION_CONFIG["max_new_tokens"]


def test_n_choices_are_seeded_rows(client, model, model_dir, tokenizer):
    """Choice j samples with seed + j, so n > 1 gives different, reproducible choices."""
    args = dict(model=NAME, prompt="Who is", max_tokens=8, n=3, seed=7, temperature=1.3)
    args["extra_body"] = {"top_k": 0}  # not in OpenAI's API: an extra field
    first, again = client.completions.create(**args), client.completions.create(**args)
    prompt = tokenizer.encode("Who is")
    sampled = {"temperature": 1.3, "top_k": 0, "max_new_tokens": 8}
    expected = [
        text_of(tokenizer, reference(model, model_dir, prompt, **sampled, seed=7 + j))
        for j in range(3)
    ]
    assert [c.text for c in first.choices] == [c.text for c in again.choices] == expected
    assert first.usage.prompt_tokens == len(prompt)


def test_stop_string_cuts_the_text(client):
    args = dict(model=NAME, prompt="Blessed are the", max_tokens=24, temperature=0)
    full = client.completions.create(**args).choices[0].text
    stop = full[len(full) // 2 :][:3]
    cut = client.completions.create(**args, stop=[stop, "never-there"]).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_streamed_chat_assembles_to_the_plain_answer(client):
    args = dict(
        model=NAME, messages=[{"role": "user", "content": "你好"}], max_tokens=16, temperature=0
    )
    plain = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(d or "" for d in deltas) == plain
    assert all(d for d in deltas[1:-1])  # one chunk per non-empty text delta
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 16
    assert len({c.id for c in chunks}) == 1


def sse_events(response: httpx2.Response) -> list[str]:
    """The `data:` payloads of a server-sent event stream, checking its framing."""
    lines = list(response.iter_lines())
    events = [line.removeprefix("data: ") for line in lines if line]
    assert all(line.startswith("data: ") for line in lines if line)
    assert all(lines[i] == "" for i in range(1, len(lines), 2))  # one blank line after each
    return events


def test_raw_completion_stream_is_well_formed(base_url):
    body = {"model": NAME, "prompt": "The Lord", "max_tokens": 5, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx2.stream("POST", f"{base_url}/v1/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] in ("stop", "length")


@pytest.mark.parametrize("slots", [8, 64])
def test_64_concurrent_streams_all_complete(model, model_dir, tokenizer, slots):
    """64 streams at once, queueing for 8 slots or all decoded together in 64; greedy ones
    match `generate`."""

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": f"verse {i}"}],
            max_tokens=4 + i % 5,
            temperature=0 if i % 2 == 0 else 0.9,
            seed=i,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        return text, chunks[-1].choices[0].finish_reason

    async def main(base_url: str):
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url=f"{base_url}/v1", max_retries=0, timeout=60
        )
        async with client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    defaults = generation_defaults(model_dir)
    with (
        Engine(model, tokenizer, defaults=defaults, max_batch=slots) as engine,
        running(create_app(engine, model_name=NAME, api_key=KEY)) as base_url,
    ):
        results = asyncio.run(main(base_url))
        batches = engine.metrics.batch_size
        assert engine.free_slots == slots
    assert all(reason in ("stop", "length") for _, reason in results)
    # Rows decoded together: up to the slots there are (the histogram's buckets 1, 2, 4, ...).
    widest = max(b for b, c in zip(batches.buckets, batches.counts, strict=False) if c)
    assert widest == slots if slots == 8 else widest >= 32
    for i in (0, 14, 30, 62):
        ids = reference(
            model,
            model_dir,
            chat_ids(tokenizer, f"verse {i}"),
            temperature=0.0,
            max_new_tokens=4 + i % 5,
        )
        assert results[i][0] == text_of(tokenizer, ids)


def test_a_new_request_does_not_wait_for_a_running_batch(engine, model_dir, tokenizer):
    """A short job submitted while a long one decodes finishes first: it joins the running
    batch instead of queueing behind it."""
    config = dataclasses.replace(generation_defaults(model_dir), temperature=0.0)
    finished = []

    async def run(name: str, prompt: str, max_new: int, started: asyncio.Event | None = None):
        cfg = dataclasses.replace(config, max_new_tokens=max_new)
        job = engine.submit([RowSpec(tokenizer.encode(prompt), cfg)])
        async for event in job.events():
            if started is not None:
                started.set()
            if isinstance(event, RowFinished):
                finished.append(name)

    async def main():
        started = asyncio.Event()
        long = asyncio.create_task(run("long", "Long", 200, started))
        await started.wait()
        await run("short", "Short", 3)
        await long

    asyncio.run(main())
    assert finished == ["short", "long"]


def test_a_failing_forward_fails_its_job_not_the_engine(engine, model_dir, tokenizer, monkeypatch):
    config = dataclasses.replace(generation_defaults(model_dir), max_new_tokens=2)
    real_forward, calls = engine._forward, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a device error")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward", fails_once)

    async def run(prompt: list[int]) -> list:
        return [event async for event in engine.submit([RowSpec(prompt, config)]).events()]

    with pytest.raises(GenerationError, match="a device error"):
        asyncio.run(run(tokenizer.encode("Amen")))
    assert isinstance(asyncio.run(run(tokenizer.encode("Amen")))[-1], RowFinished)
    assert engine.free_slots == engine.max_batch


def test_the_engine_refuses_ids_outside_the_vocabulary(engine, model_dir):
    config = generation_defaults(model_dir)

    async def submit():
        engine.submit([RowSpec([engine.vocab_size + 1], config)])

    with pytest.raises(InputError, match="outside the vocabulary"):
        asyncio.run(submit())


def test_disconnect_stops_generation(client, base_url, engine):
    with client.completions.create(
        model=NAME, prompt="Long", max_tokens=450, temperature=0, stream=True
    ) as stream:
        next(iter(stream))
    deadline = time.monotonic() + 10
    while engine.running_rows or engine.waiting_rows:
        assert time.monotonic() < deadline, "the abandoned row kept running"
        time.sleep(0.05)
    assert httpx2.get(f"{base_url}/health").json()["running_rows"] == 0


def post(base_url: str, path: str, content: bytes | str, key: str | None = KEY) -> httpx2.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx2.post(f"{base_url}{path}", content=content, headers=headers)


def error_of(response: httpx2.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_json_is_a_400(base_url):
    response = post(base_url, "/v1/chat/completions", '{"model": "tiny-chat", "messages": [')
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert "malformed JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": NAME}, "messages"),
        ({"model": NAME, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "temperature": 5},
            "temperature",
        ),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "tools": [{}]},
            "tools",
        ),
        (
            {
                "model": NAME,
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
            "response_format.type",
        ),  # fmt: skip
    ],
)
def test_an_invalid_field_is_named(base_url, body, param):
    response = post(base_url, "/v1/chat/completions", json.dumps(body))
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and error["message"].startswith(param)


def test_a_body_sent_as_a_form_still_parses(base_url):
    """curl -d without -H sends application/x-www-form-urlencoded; the JSON is still read."""
    body = json.dumps({"model": NAME, "prompt": "In", "max_tokens": 2})
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    response = httpx2.post(f"{base_url}/v1/completions", content=body, headers=headers)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 2


def test_wrong_or_missing_key_is_a_401(base_url):
    bad = openai.OpenAI(api_key="wrong", base_url=f"{base_url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.code == "invalid_api_key"
    response = post(base_url, "/v1/completions", '{"model": "x", "prompt": "a"}', key=None)
    assert response.status_code == 401 and "missing API key" in error_of(response)["message"]
    assert httpx2.get(f"{base_url}/health").status_code == 200  # health needs no key


def test_prompt_over_the_context_is_a_400(client, engine):
    limit = engine.context_length
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=NAME, prompt=[5] * (limit + 3), max_tokens=1)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    assert str(limit) in err.value.message and str(limit + 3) in err.value.message
    # A prompt that fits but leaves little room is cut to that room, not refused.
    out = client.completions.create(model=NAME, prompt=[5] * (limit - 2), max_tokens=50)
    assert out.usage.completion_tokens <= 2


def test_unknown_model_and_route_are_404s(client, base_url):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found" and NAME in err.value.message
    response = httpx2.get(f"{base_url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404 and error_of(response)["type"] == "invalid_request_error"


def test_cli_parses_with_loopback_defaults(monkeypatch):
    import argparse

    from chuan.cli.serve import api_key, register

    parser = argparse.ArgumentParser(prog="chuan")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["serve", "some/model"])
    assert (args.host, args.port, args.max_batch, args.api_key) == ("127.0.0.1", 8000, 16, None)
    text = parser._subparsers._group_actions[0].choices["serve"].format_help()
    for flag in (
        "--host",
        "--port",
        "--api-key",
        "--model-name",
        "--max-batch",
        "--device",
        "--dtype",
    ):
        assert flag in text
    monkeypatch.setenv("CHUAN_API_KEY", "from-env")
    assert (api_key(None), api_key("flag")) == ("from-env", "flag")
    monkeypatch.setenv("CHUAN_API_KEY", "")
    assert api_key(None) is None


def test_chat_logprobs_are_the_models_own(client, model, model_dir, tokenizer):
    """Each generated token's log-probability is the model's log-softmax at its position
    (before sampling settings), streamed or not, with `top_logprobs` alternatives."""
    messages = [{"role": "user", "content": "And God saw the light"}]
    prompt = chat_ids(tokenizer, messages[0]["content"])
    ids = reference(model, model_dir, prompt, temperature=0.0, max_new_tokens=6)
    args = dict(model=NAME, messages=messages, max_tokens=6, temperature=0, logprobs=True,
                top_logprobs=3)  # fmt: skip
    out = client.chat.completions.create(**args)
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([prompt + ids])).logits[0].float().log_softmax(-1)
    content = out.choices[0].logprobs.content
    assert len(content) == len(ids)
    for j, (entry, token) in enumerate(zip(content, ids, strict=True)):
        assert entry.logprob == pytest.approx(logps[len(prompt) - 1 + j, token].item(), abs=1e-4)
        best = logps[len(prompt) - 1 + j].topk(3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(),
                                                                        abs=1e-4)  # fmt: skip
        assert bytes(entry.bytes) == TokenText(tokenizer).bytes(token)
    streamed = [
        entry
        for chunk in client.chat.completions.create(**args, stream=True)
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)


def test_completion_echo_scores_the_prompt(client, model, tokenizer):
    """`echo` with `max_tokens: 0` returns the prompt's text and each token's log-probability
    given the ones before (the first has none): what lm-eval's `local-completions` reads."""
    text = "In the beginning God created the heaven and the earth"
    ids = tokenizer.encode(text)
    out = client.completions.create(model=NAME, prompt=text, max_tokens=0, echo=True, logprobs=1)
    choice = out.choices[0]
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    assert choice.text == text and out.usage.completion_tokens == 0
    assert choice.logprobs.token_logprobs[0] is None and len(choice.logprobs.tokens) == len(ids)
    expected = [logps[j - 1, ids[j]].item() for j in range(1, len(ids))]
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 1 for top in choice.logprobs.top_logprobs[1:])
    offsets = choice.logprobs.text_offset
    assert offsets[0] == 0 and offsets == sorted(offsets)
    more = client.completions.create(model=NAME, prompt=ids, max_tokens=3, echo=True, logprobs=0,
                                     temperature=0)  # fmt: skip
    assert len(more.choices[0].logprobs.tokens) == len(ids) + more.usage.completion_tokens
    assert more.choices[0].text.startswith(tokenizer.decode(ids))


def test_a_repeated_system_prompt_is_read_from_the_prefix_cache(
    client, model, model_dir, tokenizer
):
    system = " ".join(["And God said, Let there be light: and there was light."] * 8)

    def ask(question: str):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=5,
                                             temperature=0)  # fmt: skip
        prompt = build_chat_input(tokenizer, messages, 0, sys.maxsize)
        ids = reference(model, model_dir, prompt, temperature=0.0, max_new_tokens=5)
        assert out.choices[0].message.content == text_of(tokenizer, ids)
        return out.usage

    ask("Who said it?")
    usage = ask("What was made?")
    assert usage.prompt_tokens_details.cached_tokens >= len(tokenizer.encode(system))


def test_a_full_queue_is_a_429_with_retry_after(model, model_dir, tokenizer):
    defaults = generation_defaults(model_dir)
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": NAME, "prompt": "Long", "max_tokens": 300, "stream": True}
    with (
        Engine(model, tokenizer, defaults=defaults, max_batch=1, max_queue=1) as engine,
        running(create_app(engine, model_name=NAME, api_key=KEY)) as base_url,
        httpx2.Client(base_url=base_url, headers=headers, timeout=30) as http,
        http.stream("POST", "/v1/completions", json=body) as first,
    ):
        next(first.iter_lines())  # decoding: it holds the only slot
        with http.stream("POST", "/v1/completions", json=body) as second:
            assert second.status_code == 200  # waits in the queue
            refused = http.post("/v1/completions", json=body)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert error_of(refused)["type"] == "server_busy"
        metrics = http.get("/metrics").text
    assert 'chuan_requests_total{endpoint="/v1/completions",code="429"} 1' in metrics
    assert "chuan_queue_rejections_total 1" in metrics


def test_metrics_are_prometheus_text_behind_the_key(client, base_url):
    client.completions.create(model=NAME, prompt="In", max_tokens=2)
    assert httpx2.get(f"{base_url}/metrics").status_code == 401
    response = httpx2.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in response.text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['chuan_requests_total{endpoint="/v1/completions",code="200"}'] >= 1
    assert values["chuan_generation_tokens_total"] >= 2
    assert values["chuan_time_to_first_token_seconds_count"] >= 1
    assert (
        values['chuan_time_to_first_token_seconds_bucket{le="+Inf"}']
        == values["chuan_time_to_first_token_seconds_count"]
    )
    assert values["chuan_slots"] == 8 and values["chuan_queue_depth"] == 0
    for name in ("chuan_inter_token_latency_seconds_count", "chuan_batch_size_count",
                 "chuan_prefix_cache_hit_tokens_total", "chuan_running_sequences"):  # fmt: skip
        assert name in values
