"""The serving engine's continuous batching, against llama2c's golden output.

stories260K (a trained llama2.c model) decodes 200 greedy tokens from BOS that llama2.c
recorded; a trained model has clear arg-max margins, so a row that joins a running batch, is
prefilled in chunks, or reuses a cached prefix must reproduce them token for token.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from chuan.infer.engine import Engine, PromptScored, RowFinished, RowSpec, TextDelta
from chuan.infer.generate import SamplingConfig, generate
from chuan.infer.loading import load_saved_tokenizer
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import load_proto

GREEDY = dict(temperature=0.0, stop_token_ids=(2,))


@pytest.fixture(scope="module")
def stories(test_data, tmp_path_factory):
    """stories260K as a chuan model, and llama2.c's greedy 200 tokens from BOS."""
    from chuan.model.convert import load_as_baichuan
    from helpers.llama2c import llama2c_to_hf_llama

    root = tmp_path_factory.mktemp("stories")
    source = test_data / "models" / "tinystories_260k"
    llama2c_to_hf_llama(source / "stories260K.bin", root / "llama")
    expected = json.loads((source / "expected_greedy_200_steps.ids.json").read_text())
    return load_as_baichuan(root / "llama").eval(), expected


@pytest.fixture(scope="module")
def tokenizer(test_data, tmp_path_factory):
    """Any tokenizer covers stories260K's 512 ids for the engine's text streams; the tests
    read token ids (the log-probability entries), not text."""
    proto = load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    return load_saved_tokenizer(write_tokenizer_dir(tmp_path_factory.mktemp("tok"), proto))


def make_engine(stories, tokenizer, **settings) -> Engine:
    return Engine(stories[0], tokenizer, defaults=SamplingConfig(**GREEDY), **settings)


async def tokens_of(job) -> tuple[dict[int, list[int]], dict[int, RowFinished]]:
    """Each row's new token ids and its finish event."""
    ids: dict[int, list[int]] = {}
    ends: dict[int, RowFinished] = {}
    async for event in job.events():
        if isinstance(event, PromptScored):
            continue
        ids.setdefault(event.row, []).extend(e.token for e in event.logprobs)
        if isinstance(event, RowFinished):
            ends[event.row] = event
    return ids, ends


def spec(prompt: list[int], new: int) -> RowSpec:
    return RowSpec(prompt, SamplingConfig(max_new_tokens=new, **GREEDY), logprobs=0)


def test_requests_join_a_running_batch_and_match_the_golden_output(stories, tokenizer):
    """A long row decodes 200 tokens; three requests arrive while it runs. Each is prefilled
    (in 8-token chunks) and gets its first token within two decode steps, long before the
    long row ends, and every row equals llama2.c's greedy output."""
    _, expected = stories

    async def run(engine: Engine):
        long = engine.submit([spec([1], 200)])
        seen = 0
        joined = []
        async for event in long.events():
            if isinstance(event, TextDelta):
                seen += len(event.logprobs)
                if seen in (5, 12, 30):  # join at different points of the long row
                    start = {5: 10, 12: 37, 30: 90}[seen]
                    prompt = [1, *expected[:start]]
                    joined.append((start, asyncio.ensure_future(tokens_of(
                        engine.submit([spec(prompt, 40)])))))  # fmt: skip
            if isinstance(event, RowFinished):
                long_end = event
        return long_end, [(start, await task) for start, task in joined]

    with make_engine(stories, tokenizer, max_batch=4, prefill_chunk=8) as engine:
        long_end, joined = asyncio.run(run(engine))
        assert long_end.completion_tokens == 200 and len(joined) == 3
        for start, (ids, ends) in joined:
            assert ids[0] == expected[start : start + 40]
            end = ends[0]
            assert end.first_token_step - end.prefill_step <= 2
            assert end.first_token_step < 200 - 40  # not after the long row
        assert engine.free_slots == 4


def test_a_shared_prompt_prefix_is_not_prefilled_again(stories, tokenizer):
    """Two requests share a 200-token prefix (a "system prompt"): the second loads all 200
    positions from the prefix cache, prefills only its own tokens, and decodes what the
    model decodes without any cache."""
    model, expected = stories
    system = [1, *expected[:199]]
    first, second = system + [expected[199]], system + [330, 280]
    reference = generate(model, [second], SamplingConfig(max_new_tokens=12, **GREEDY))[0]

    async def run(engine: Engine):
        await tokens_of(engine.submit([spec(first, 4)]))
        return await tokens_of(engine.submit([spec(second, 12)]))

    with make_engine(stories, tokenizer, max_batch=2, prefix_cache_tokens=512) as engine:
        ids, ends = asyncio.run(run(engine))
        assert ends[0].cached_tokens == 200
        prefilled = engine.metrics.prompt_tokens - engine.metrics.cached_tokens
        assert prefilled == len(first) + (len(second) - 200)
    assert ids[0] == reference


def test_echo_logprobs_equal_the_perplexity_scorer(stories, tokenizer):
    """Prompt log-probabilities (completions' `echo`) equal `chuan eval ppl`'s per-token
    NLL (`chuan.model.nll.window_nats`, one target per window), across prefill chunks."""
    from chuan.model.nll import Window, window_nats

    model, expected = stories
    ids = [1, *expected[:40]]
    windows = [Window(0, j + 1, j) for j in range(len(ids) - 1)]
    nats = window_nats(model, [ids] * len(windows), windows)

    async def run(engine: Engine):
        job = engine.submit([RowSpec(ids, SamplingConfig(**GREEDY), logprobs=1, echo=True,
                                     generate=False)])  # fmt: skip
        return [event async for event in job.events()]

    with make_engine(stories, tokenizer, max_batch=2, prefill_chunk=16) as engine:
        events = asyncio.run(run(engine))
    scored = next(e for e in events if isinstance(e, PromptScored)).tokens
    assert scored[0] is None and [e.token for e in scored[1:]] == ids[1:]
    assert [e.logprob for e in scored[1:]] == pytest.approx([-n for n in nats], abs=1e-4)
    # The trained model's greedy choice is its top alternative.
    assert all(e.top[0][0] == e.token for e in scored[1:] if e.logprob > -0.05)
    assert events[-1].completion_tokens == 0


def test_a_thousand_requests_and_disconnects_leave_nothing_behind(stories, tokenizer):
    """1,000 short requests, every third cancelled right away or mid-decode: every slot is
    free afterwards, nothing waits or runs, and the answered ones are right."""
    _, expected = stories

    async def run(engine: Engine):
        answered = []
        jobs = []
        for i in range(1000):
            start = i % 50
            job = engine.submit([spec([1, *expected[:start]], 3)])
            if i % 3 == 0:
                job.cancel()
            else:
                jobs.append((start, job))
            if i % 100 == 99:  # let the worker take some before more arrive
                await asyncio.sleep(0.01)
        for n, (start, job) in enumerate(jobs):
            if n % 7 == 0:
                job.cancel()  # maybe mid-decode
                continue
            ids, _ = await tokens_of(job)
            answered.append(ids[0] == expected[start : start + 3])
        return answered

    with make_engine(stories, tokenizer, max_batch=8, max_queue=1000) as engine:
        answered = asyncio.run(run(engine))
        for _ in range(200):
            if not (engine.running_rows or engine.waiting_rows):
                break
            asyncio.run(asyncio.sleep(0.02))
        assert engine.running_rows == 0 and engine.waiting_rows == 0
        assert engine.free_slots == 8 and not any(engine._slot_rows)
    assert len(answered) > 500 and all(answered)


def test_a_full_queue_refuses_new_work(stories, tokenizer):
    from chuan.infer.engine import QueueFull

    async def run(engine: Engine):
        running = engine.submit([spec([1], 200)])
        await anext(running.events())  # it holds the only slot
        engine.submit([spec([1], 5), spec([1], 5)])  # waits: the only slot is taken
        with pytest.raises(QueueFull) as err:
            engine.submit([spec([1], 5)])
        running.cancel()
        return err.value

    with make_engine(stories, tokenizer, max_batch=1, max_queue=2) as engine:
        refused = asyncio.run(run(engine))
        assert refused.retry_after >= 1 and engine.metrics.rejected == 1
