"""Serving: `chuan serve` against `transformers serve --continuous-batching`, same model, one run.

Issue 19's goals: at 1, 8, 32 and 64 concurrent clients, chuan's throughput at least 1.3x
transformers' at no worse p95 time to first token (TTFT); with a shared 200-token system
prompt, at least 2x without prefix reuse. This script measures both, side by side.

Servers, each in its own subprocess, fresh for each scenario (its output in a log file whose
tail is shown if it fails). A scenario's servers run side by side and take turns at each
concurrency, a different one first at each, so that no server always runs first or last
(`--one-at-a-time` starts them one after the other, the default with a GPU). The systems
(`--systems` for plain prompts, `--shared-systems` for the shared one):

- `chuan`: `chuan serve --max-batch 64 --prefix-cache-tokens 4096` (the default prefix cache);
- `chuan-no-prefix`: the same with `--prefix-cache-tokens 0`: no prefix reuse;
- `chuan-b1`: `chuan serve --max-batch 1`, one sequence at a time (off by default);
- `transformers-cb`: `transformers serve --continuous-batching` (paged attention) on the LLaMA
  export of the same weights (`chuan convert --to llama`: transformers cannot load
  `BaichuanForCausalLM`), whose tokenizer files carry the same chat template;
- `transformers`: `transformers serve` without continuous batching (off by default).

Scenarios:

- plain (`--no-plain` skips it): `/v1/completions`, each prompt a different 300-character
  piece of chuan's bundled sample corpus (English and Chinese). No prompt is sent twice in a
  run, so what chuan's prefix cache finds there is only what different texts share (a few
  tokens such as "And the LORD"); its hits are reported.
- shared prompt (`--no-shared-prompt` skips it): `/v1/chat/completions`, every request with
  the same system prompt (an instruction and a passage of the sample corpus, cut to
  `--system-tokens` 200 tokens by the model's tokenizer) and a different short user message.
  On chuan the first request of the run finds the system prompt uncached, the rest can reuse
  it. transformers' continuous batching shares prefixes too, but in whole pages of 256 tokens
  (`ContinuousBatchingConfig.page_size`), so these ~230-token prompts share nothing there.

Load: C concurrent clients (one official `AsyncOpenAI` client), each sending streamed requests
(`stream=True`) back to back until max(C * `--requests-per-client`, `--min-requests`) are done;
greedy, `--max-tokens` per request, the same on every server; one untimed request first. Per
request, TTFT is the time from sending it to the first chunk with non-empty text. Completion
tokens come from the usage chunk the request asks for (`stream_options={"include_usage":
True}`); `transformers serve` (5.x, `cli/serving/completion.py` and `chat_completion.py`) sends
one too, so no re-tokenizing is needed; a server that sends none has its text chunks counted
instead (one per token, or fewer where text is held back), marked in the results. Reported
per level: completion tokens/s over the level's wall time, p50/p95 TTFT, mean latency, and
for chuan the prefix-cache hit tokens: the change of `chuan_prefix_cache_hit_tokens_total`
(and of `chuan_prompt_tokens_total`) on its `/metrics` over the level, and in the JSON its
own mean TTFT (`chuan_time_to_first_token_seconds`: submission to first token, no HTTP).

The C clients start together, so the first C requests of a level arrive in one burst, whose
prefill weighs on p95 TTFT at 32 and 64 clients (a quarter of the level's requests).

The client parses every streamed chunk on the same machine: on a small CPU it takes cores
from the server, alike for every server. Timings on a machine shared with other work are
noisy; the load average is recorded with every level and printed with the tables.

    PYTHONPATH=src python benchmarks/bench_server.py --out results.json   # tiny model, CPU
    PYTHONPATH=src python benchmarks/bench_server.py --quick               # smoke run, < 1 min
    PYTHONPATH=src python benchmarks/bench_server.py --no-plain --max-tokens 16   # prefill-heavy
    PYTHONPATH=src python benchmarks/bench_server.py --model DIR --device cuda --dtype bf16
    PYTHONPATH=src python benchmarks/bench_server.py --url http://127.0.0.1:8000 --api-key K \\
        --served-name NAME --model DIR                      # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "chuan" / "assets" / "sample"
TRANSFORMERS_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BENCH_NAME = "bench"
PLAIN, SHARED = "plain", "shared prompt"
PIECE_CHARS = 300  # characters of corpus text per plain prompt
USER_CHARS = 40  # characters of corpus text per shared-prompt user message
SYSTEM_INSTRUCTION = (
    "You are a helpful bilingual assistant. Answer the user's question briefly, in the "
    "language of the question, using the passage below when it helps.\n\nPassage:\n"
)
SYSTEM_KEYS = ("chuan", "chuan-no-prefix", "chuan-b1", "transformers-cb", "transformers")
HIT_METRIC = "chuan_prefix_cache_hit_tokens_total"
PROMPT_METRIC = "chuan_prompt_tokens_total"
TTFT_METRIC = "chuan_time_to_first_token_seconds"  # from submission to the first token chosen


@dataclass
class System:
    """A server under test: how to start it (None: already running), what to send it, and
    which scenarios it runs."""

    name: str
    url: str
    model: str
    command: list[str] | None = None
    extra_body: dict = field(default_factory=dict)
    api_key: str = "none"
    scenarios: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    """One request's content: a completion `prompt`, or chat `messages`."""

    prompt: str | None = None
    messages: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class Outcome:
    """What one streamed request took and gave. `ttft`: None when no text came at all."""

    ttft: float | None
    latency: float
    completion_tokens: int
    tokens_from_usage: bool
    prompt_tokens: int | None
    cached_tokens: int | None


# --- the servers, as hidden modes of this script -------------------------------------------


def serve_chuan(argv: list[str]) -> None:
    """`chuan serve ARGV` through the CLI module itself (works before it is on PATH)."""
    from chuan.cli.serve import register

    parser = argparse.ArgumentParser(prog="chuan")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["serve", *argv])
    args.func(args)


def serve_transformers(model_dir: str, port: int, device: str, dtype: str, cb: bool) -> None:
    """`transformers serve MODEL_DIR` (chuan imported only for its tokenizer class)."""
    from transformers.cli.serve import Serve

    import chuan  # noqa: F401

    Serve(
        force_model=model_dir,
        port=port,
        device=device,
        dtype=dtype,
        continuous_batching=cb,
        log_level="warning",
    )


# --- model preparation -----------------------------------------------------------------------


def build_model(root: Path, preset: str) -> Path:
    """A `preset` model dir with a tokenizer trained on the bundled sample corpus; its
    generation config asks for no repetition penalty, like transformers' default."""
    from chuan.model.checkpoint import init_model_dir
    from chuan.tokenizer.train import train_tokenizer

    train_tokenizer([ASSETS], root / "tok", vocab_size=8192, progress=False)
    init_model_dir(root / "model", preset, tokenizer_dir=root / "tok", seed=0)
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    generation.update(repetition_penalty=1.0, top_k=0, do_sample=False)
    (root / "model" / "generation_config.json").write_text(json.dumps(generation))
    return root / "model"


def llama_export(model_dir: Path, root: Path) -> Path | None:
    """The LLaMA layout of `model_dir` for transformers serve, or None for ALiBi models."""
    from chuan.model.convert import convert

    try:
        return convert(model_dir, root / "llama", "llama", overwrite=True)
    except ValueError as err:
        print(f"transformers serve skipped: {err}", file=sys.stderr)
        return None


# --- the requests ----------------------------------------------------------------------------


class TextPieces:
    """Distinct pieces of the sample corpus, handed out once each, so that no prompt of a run
    repeats one before it (a repeat would be a whole-prompt prefix-cache hit for chuan).

    Each file's texts are cut into `chars`-character pieces (Botchan's chapters give many,
    the Bible's chapters their opening); the files take turns, so every slice mixes English
    and Chinese, long and short."""

    def __init__(self, chars: int):
        per_file = []
        for path in sorted(ASSETS.glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                texts = [json.loads(line)["text"] for line in f if line.strip()]
            if len(texts) < 50:  # a few long texts (a novel's chapters): cut all of each
                pieces = [t[i : i + chars] for t in texts for i in range(0, len(t), chars)]
            else:
                pieces = [t[:chars] for t in texts]
            per_file.append([p for p in pieces if p.strip()])
        if not per_file:
            raise FileNotFoundError(f"no sample corpus in {ASSETS}")
        seen, self.pieces = set(), []
        for turn in range(max(map(len, per_file))):
            for pieces in per_file:
                if turn < len(pieces) and pieces[turn] not in seen:
                    seen.add(pieces[turn])
                    self.pieces.append(pieces[turn])
        self.next = 0
        self.handed_out: set[str] = set()

    def take(self, count: int, chars: int | None = None) -> list[str]:
        """The next `count` pieces, cut to `chars` characters, none equal to one handed out
        before (a cut can repeat: the Bible has many chapters that begin "And the LORD spake
        unto Moses, saying")."""
        taken = []
        while len(taken) < count:
            if self.next == len(self.pieces):
                raise ValueError(
                    f"the sample corpus has {len(self.pieces)} pieces; a run needs more"
                )
            text = self.pieces[self.next][:chars]
            self.next += 1
            if text not in self.handed_out:
                self.handed_out.add(text)
                taken.append(text)
        return taken


def system_prompt(tokenizer, tokens: int) -> tuple[str, int]:
    """An instruction and a Botchan passage, as long as fits in `tokens` tokens of
    `tokenizer` (None: 4 characters a token, unchecked); returns it and its token count."""
    with open(ASSETS / "botchan_en.jsonl", encoding="utf-8") as f:
        passage = json.loads(f.readline())["text"]
    if tokenizer is None:
        return SYSTEM_INSTRUCTION + passage[: tokens * 4 - len(SYSTEM_INSTRUCTION)], -1

    def count(chars: int) -> int:
        return len(tokenizer.encode(SYSTEM_INSTRUCTION + passage[:chars]))

    low, high = 0, len(passage)  # the longest cut within `tokens` (counts grow with chars)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if count(mid) <= tokens else (low, mid - 1)
    text = (SYSTEM_INSTRUCTION + passage[:low]).rstrip()
    return text, len(tokenizer.encode(text))


def plain_requests(pieces: TextPieces, count: int) -> list[Request]:
    return [Request(prompt=text) for text in pieces.take(count)]


def shared_requests(pieces: TextPieces, system: str, count: int) -> list[Request]:
    """Chat requests: `system`, then a question about a different short corpus piece."""
    return [
        Request(
            messages=(
                {"role": "system", "content": system},
                {"role": "user", "content": f"What comes after this? {text}"},
            )
        )
        for text in pieces.take(count, USER_CHARS)
    ]


# --- running a server and loading it ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy in {timeout:.0f} s")
        time.sleep(0.5)


def scrape_metrics(system: System) -> dict[str, float]:
    """The unlabelled samples of the server's Prometheus `/metrics` ({} where it has none:
    transformers serve)."""
    request = urllib.request.Request(
        f"{system.url}/metrics", headers={"Authorization": f"Bearer {system.api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except OSError:  # HTTPError included
        return {}
    samples = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if line.startswith("#") or "{" in name or not name:
            continue
        try:
            samples[name] = float(value)
        except ValueError:
            return {}  # not Prometheus text
    return samples


async def stream_request(client, system: System, request: Request, max_tokens: int) -> Outcome:
    """Send `request` streamed; time its first text and its end, read its usage."""
    common = dict(
        model=system.model,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=system.extra_body,
    )
    is_chat = request.messages is not None
    start = time.perf_counter()
    if is_chat:
        stream = await client.chat.completions.create(messages=list(request.messages), **common)
    else:
        stream = await client.completions.create(prompt=request.prompt, **common)
    first, text_chunks, usage = None, 0, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text = choice.delta.content if is_chat else choice.text
            if text:
                text_chunks += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    details = getattr(usage, "prompt_tokens_details", None)
    return Outcome(
        ttft=None if first is None else first - start,
        latency=end - start,
        completion_tokens=usage.completion_tokens if usage else text_chunks,
        tokens_from_usage=usage is not None,
        prompt_tokens=usage.prompt_tokens if usage else None,
        cached_tokens=getattr(details, "cached_tokens", None),
    )


def describe_error(err) -> str:
    """An openai error's message, with the server's own when the client hid it: transformers
    serve streams `{"error": "TEXT"}`, which the client reports as "An error occurred during
    streaming" with TEXT as the body."""
    body = getattr(err, "body", None)
    return (
        f"{err.message} ({body})"
        if isinstance(body, str) and body not in err.message
        else err.message
    )


def percentile(values: list[float], pct: int) -> float:
    """The `pct`th percentile, interpolated between the values (never beyond the largest:
    a p95 of 32 requests lies between the two slowest)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


async def load(system: System, clients: int, requests: list[Request], max_tokens: int) -> dict:
    """`clients` concurrent clients working through `requests`; throughput and latencies."""
    from openai import APIError, AsyncOpenAI

    pending = list(reversed(requests))
    outcomes: list[Outcome] = []
    errors: list[str] = []

    async def client_loop(client: AsyncOpenAI) -> None:
        while pending:
            request = pending.pop()
            try:
                outcomes.append(await stream_request(client, system, request, max_tokens))
            except APIError as err:  # counted and reported: a server failing under load
                errors.append(f"{type(err).__name__}: {describe_error(err)}")

    client = AsyncOpenAI(
        base_url=f"{system.url}/v1", api_key=system.api_key, max_retries=0, timeout=3600
    )
    async with client:
        # untimed: first-call costs (allocations, lazy imports) stay out of the numbers; a
        # chat without the shared system prompt, so that it does not seed the prefix cache
        warm = Request(messages=({"role": "user", "content": "warm up"},))
        await stream_request(client, system, warm if requests[0].messages else Request("warm up"),
                             max_tokens)  # fmt: skip
        before = scrape_metrics(system)
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
        after = scrape_metrics(system)
    if not outcomes:
        raise RuntimeError(f"all {len(errors)} requests failed, the first with {errors[0]}")
    tokens = sum(o.completion_tokens for o in outcomes)
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    prompt_tokens = [o.prompt_tokens for o in outcomes if o.prompt_tokens is not None]
    cached = [o.cached_tokens for o in outcomes if o.cached_tokens is not None]
    metered = HIT_METRIC in before and HIT_METRIC in after
    return {
        "system": system.name,
        "clients": clients,
        "max_tokens": max_tokens,
        "requests": len(outcomes),
        "failed_requests": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "completion_tokens": tokens,
        "tokens_counted_from": (
            "usage" if all(o.tokens_from_usage for o in outcomes) else "text chunks"
        ),
        "requests_without_text": len(outcomes) - len(ttfts),
        "ttft_p50_s": percentile(ttfts, 50) if ttfts else None,
        "ttft_p95_s": percentile(ttfts, 95) if ttfts else None,
        "mean_latency_s": statistics.fmean(o.latency for o in outcomes),
        "p95_latency_s": percentile([o.latency for o in outcomes], 95),
        "mean_prompt_tokens": statistics.fmean(prompt_tokens) if prompt_tokens else None,
        "usage_cached_tokens": sum(cached) if cached else None,
        "prefix_cache_hit_tokens": after[HIT_METRIC] - before[HIT_METRIC] if metered else None,
        "metrics_prompt_tokens": after[PROMPT_METRIC] - before[PROMPT_METRIC] if metered else None,
        "server_mean_ttft_s": (
            (after[f"{TTFT_METRIC}_sum"] - before[f"{TTFT_METRIC}_sum"])
            / (after[f"{TTFT_METRIC}_count"] - before[f"{TTFT_METRIC}_count"])
            if metered
            else None
        ),
        "load_average": os.getloadavg(),
    }


@dataclass
class Workload:
    """The requests of every scenario and concurrency, fixed before any server runs so that
    every server gets the same ones."""

    levels: list[int]
    max_tokens: int
    requests: dict[tuple[str, int], list[Request]]


def workload(args: argparse.Namespace, tokenizer) -> tuple[Workload, dict]:
    """The requests, and what the shared system prompt is (its text and token count)."""
    pieces = TextPieces(PIECE_CHARS)
    counts = {c: max(c * args.requests_per_client, args.min_requests) for c in args.clients}
    requests, about = {}, {}
    if args.plain:
        for clients, count in counts.items():
            requests[PLAIN, clients] = plain_requests(pieces, count)
    if args.shared_prompt:
        text, tokens = system_prompt(tokenizer, args.system_tokens)
        about = {"system_prompt": text, "system_prompt_tokens": tokens}
        for clients, count in counts.items():
            requests[SHARED, clients] = shared_requests(pieces, text, count)
    return Workload(args.clients, args.max_tokens, requests), about


@dataclass
class Running:
    """A started server: its process (None: started elsewhere) and its log file."""

    system: System
    process: subprocess.Popen | None
    log_path: Path

    def failure(self, err: Exception, **where) -> dict:
        """The record of a failed start or level; the server's log tail goes to stderr."""
        print(f"{self.system.name} {where or ''} failed ({type(err).__name__}: {err}); its "
              f"log ends:\n{self.log_path.read_text()[-3000:]}", file=sys.stderr)  # fmt: skip
        return {**where, "system": self.system.name, "failed": f"{type(err).__name__}: {err}"}

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None


@contextmanager
def started(system: System, log_dir: Path):
    """Start `system`'s server (unless it runs already), its output in a log file; stop it
    on leaving."""
    log_path = log_dir / (system.name.replace(" ", "_").replace("-", "") + ".log")
    with open(log_path, "w") as log:
        process = None
        if system.command is not None:
            process = subprocess.Popen(system.command, stdout=log, stderr=log)
        try:
            yield Running(system, process, log_path)
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)


def measure(group: list[System], scenario: str, work: Workload, log_dir: Path) -> list[dict]:
    """Start the servers of `group`, load each with `scenario` at each concurrency, stop them.

    The servers run side by side (an idle one takes no CPU: chuan's worker and transformers'
    engine both block while nothing is queued) and take turns at each level, a different one
    going first each time, so that drift in the machine's load and whatever a server leaves
    behind fall on all of them alike rather than on whichever runs last. A level that fails
    is recorded as such, and the server goes on to the next one unless it has exited."""
    results = []
    with ExitStack() as stack:
        servers = []  # started together, so that their start-ups overlap
        for server in [stack.enter_context(started(system, log_dir)) for system in group]:
            begin = time.perf_counter()
            try:
                wait_healthy(server.system.url, server.process)
            except Exception as err:
                results.append(server.failure(err, scenario=scenario))
                continue
            print(f"{server.system.name}: healthy after {time.perf_counter() - begin:.1f} s "
                  "more", file=sys.stderr)  # fmt: skip
            servers.append(server)
        for level, clients in enumerate(work.levels):
            first = level % max(len(servers), 1)
            for server in servers[first:] + servers[:first]:
                if server.exited:
                    continue
                requests = work.requests[scenario, clients]
                try:
                    result = asyncio.run(load(server.system, clients, requests, work.max_tokens))
                except Exception as err:
                    results.append(server.failure(err, scenario=scenario, clients=clients))
                    continue
                results.append({"scenario": scenario, **result})
                print(json.dumps(results[-1]), file=sys.stderr)
    return results


# --- the systems and the report --------------------------------------------------------------


def system_names(args: argparse.Namespace) -> dict[str, str]:
    """The name each system key is reported under: its command line's distinctive part."""
    batch = f"--max-batch {args.max_batch}"
    return {
        "chuan": f"chuan serve {batch} --prefix-cache-tokens {args.prefix_cache_tokens}",
        "chuan-no-prefix": f"chuan serve {batch} --prefix-cache-tokens 0",
        "chuan-b1": "chuan serve --max-batch 1",
        "transformers-cb": "transformers serve --continuous-batching",
        "transformers": "transformers serve",
    }


def local_systems(args: argparse.Namespace, model_dir: Path, llama_dir: Path | None):
    """The systems `--systems` (plain prompts) and `--shared-systems` name, in that order:
    a fresh server per scenario, so that no scenario inherits another's state (chuan's
    prefix cache, full of plain prompts, or the memory of a 64-row batch)."""
    here = [sys.executable, __file__]
    names = system_names(args)
    systems = []
    for scenario, keys, on in ((PLAIN, args.systems, args.plain),
                               (SHARED, args.shared_systems, args.shared_prompt)):  # fmt: skip
        for key in keys if on else []:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            if key.startswith("chuan"):
                batch = 1 if key == "chuan-b1" else args.max_batch
                prefix = 0 if key == "chuan-no-prefix" else args.prefix_cache_tokens
                command = [*here, "--serve-chuan", str(model_dir), "--port", str(port)]
                command += ["--max-batch", str(batch), "--prefix-cache-tokens", str(prefix)]
                command += ["--dtype", args.dtype, "--log-level", "warning"]
                command += ["--model-name", BENCH_NAME]
                command += ["--device", args.device] if args.device else []
                no_penalty = {"repetition_penalty": 1.0}
                systems.append(System(names[key], url, BENCH_NAME, command, no_penalty,
                                      scenarios=[scenario]))  # fmt: skip
            elif llama_dir is not None:
                dtype = TRANSFORMERS_DTYPES.get(args.dtype, "auto")
                command = [*here, "--serve-transformers", str(llama_dir), str(port)]
                command += [args.device or "auto", dtype]
                command += ["--cb"] if key.endswith("-cb") else []
                systems.append(System(names[key], url, str(llama_dir), command,
                                      scenarios=[scenario]))  # fmt: skip
    return systems


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def markdown_table(results: list[dict], scenario: str, names: dict[str, str]) -> str:
    """One row per server and concurrency: tokens/s, its ratio to transformers' continuous
    batching (and, with a shared prompt, to chuan without prefix reuse), TTFT, and chuan's
    prefix-cache hit tokens over the prompt tokens it admitted."""
    rows = [r for r in results if r.get("scenario") == scenario]
    baselines = {"transformers": names["transformers-cb"]}
    if scenario == SHARED:
        baselines["no prefix reuse"] = names["chuan-no-prefix"]
    base = {
        (label, r["clients"]): r["tokens_per_s"]
        for label, name in baselines.items()
        for r in rows
        if r["system"] == name
    }
    head = ["server", "clients", "requests", "tokens/s", *(f"vs {b}" for b in baselines)]
    head += ["p50 TTFT ms", "p95 TTFT ms", "prefix-cache hits / prompt tokens"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    order = {name: i for i, name in enumerate(dict.fromkeys(r["system"] for r in rows))}
    for r in sorted(rows, key=lambda r: (r["clients"], order[r["system"]])):
        hits = (
            "-"
            if r["prefix_cache_hit_tokens"] is None
            else f"{r['prefix_cache_hit_tokens']:,.0f} / {r['metrics_prompt_tokens']:,.0f}"
        )
        done = f"{r['requests']}" + (
            f" ({r['failed_requests']} failed)" if r["failed_requests"] else ""
        )
        cells = [r["system"], r["clients"], done, f"{r['tokens_per_s']:,.0f}"]
        cells += [ratio(r["tokens_per_s"], base.get((b, r["clients"]))) for b in baselines]
        cells += [milliseconds(r["ttft_p50_s"]), milliseconds(r["ttft_p95_s"]), hits]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def plural(clients: int) -> str:
    return f"{clients} client" + ("" if clients == 1 else "s")


def goal_lines(results: list[dict], names: dict[str, str]) -> list[str]:
    """Issue 19's goals, level by level: chuan at >= 1.3x transformers' tokens/s at no worse
    p95 TTFT (plain prompts), and >= 2x without prefix reuse (shared prompt)."""
    index = {(r.get("scenario"), r["system"], r.get("clients")): r for r in results}
    chuan, theirs, no_reuse = names["chuan"], names["transformers-cb"], names["chuan-no-prefix"]
    lines = []
    for (scenario, system, clients), ours in index.items():
        if system != chuan:
            continue
        other = index.get((scenario, theirs, clients))
        if scenario == PLAIN and other:
            speed = ours["tokens_per_s"] / other["tokens_per_s"]
            ttft = ours["ttft_p95_s"] <= other["ttft_p95_s"]
            met = "met" if speed >= 1.3 and ttft else "NOT met"
            lines.append(f"- plain, {plural(clients)}: {speed:.2f}x transformers' tokens/s, p95 "
                         f"TTFT {'no worse' if ttft else 'worse'}: {met}")  # fmt: skip
        base = index.get((scenario, no_reuse, clients))
        if scenario == SHARED and base:
            speed = ours["tokens_per_s"] / base["tokens_per_s"]
            vs = (
                f", {ours['tokens_per_s'] / other['tokens_per_s']:.2f}x transformers'"
                if other
                else ""
            )
            met = "met" if speed >= 2 else "NOT met"
            lines.append(f"- shared prompt, {plural(clients)}: {speed:.2f}x the tokens/s without "
                         f"prefix reuse{vs}: {met}")  # fmt: skip
    return lines


def environment(args: argparse.Namespace, model_dir: Path | None, loads: list[float]) -> str:
    import torch

    shape = ""
    if model_dir is not None:
        from chuan.model import BaichuanConfig, parameter_count

        params = parameter_count(BaichuanConfig.from_pretrained(model_dir))
        shape = f"model {model_dir.name}: {params:,} parameters; "
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    span = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"
    return (
        f"{shape}{device}, {len(os.sched_getaffinity(0))} cores, 1-minute load average "
        f"{span} over the levels; torch {torch.__version__}, transformers "
        f"{version('transformers')}, openai {version('openai')}; greedy, max_tokens "
        f"{args.max_tokens}, max({args.requests_per_client} requests per client, "
        f"{args.min_requests}) per level, streamed"
    )


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


def key_list(text: str) -> list[str]:
    keys = [part for part in text.replace(",", " ").split()]
    unknown = [k for k in keys if k not in SYSTEM_KEYS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(SYSTEM_KEYS)}")
    return keys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: a fresh --preset model)")
    parser.add_argument("--preset", default="tiny", help="preset when no --model (tiny)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: a GPU when present)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *TRANSFORMERS_DTYPES])
    parser.add_argument("--max-batch", type=int, default=64, help="chuan's slots (64)")
    parser.add_argument("--prefix-cache-tokens", type=int, default=4096, help="chuan's (4096)")
    parser.add_argument("--clients", type=int_list, default=[1, 8, 32, 64], help="(1,8,32,64)")
    parser.add_argument("--requests-per-client", type=int, default=4, help="(4)")
    parser.add_argument(
        "--min-requests", type=int, default=32, help="per level, for a p95 at 1 client (32)"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="per request (64)")
    parser.add_argument(
        "--systems",
        type=key_list,
        default=["chuan", "transformers-cb"],
        help=f"for plain prompts, of {', '.join(SYSTEM_KEYS)} (chuan,transformers-cb)",
    )
    parser.add_argument(
        "--shared-systems",
        type=key_list,
        default=["chuan", "chuan-no-prefix", "transformers-cb"],
        help="for the shared prompt (chuan,chuan-no-prefix,transformers-cb)",
    )
    parser.add_argument(
        "--plain", action=argparse.BooleanOptionalAction, default=True, help="plain prompts"
    )
    parser.add_argument(
        "--shared-prompt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="chat with a shared system prompt",
    )
    parser.add_argument("--system-tokens", type=int, default=200, help="shared prompt (200)")
    parser.add_argument(
        "--one-at-a-time",
        action=argparse.BooleanOptionalAction,
        help="start a scenario's servers one after the other instead of side by side (default: "
        "so with a GPU, where transformers' continuous batching takes most free memory)",
    )
    parser.add_argument("--url", help="measure this running server only (no servers started)")
    parser.add_argument("--api-key", default="none", help="key for --url")
    parser.add_argument("--served-name", default=BENCH_NAME, help="model name for --url")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, under a minute: 1 and 8 clients, 16 tokens, 4-8 requests, shared "
        "prompt on chuan only; its numbers mean nothing",
    )
    return parser.parse_args(argv)


def main() -> None:
    if sys.argv[1:2] == ["--serve-chuan"]:
        return serve_chuan(sys.argv[2:])
    if sys.argv[1:2] == ["--serve-transformers"]:
        model_dir, port, device, dtype, *cb = sys.argv[2:]
        return serve_transformers(model_dir, int(port), device, dtype, cb == ["--cb"])
    args = parse_args()
    if args.one_at_a_time is None:
        import torch

        gpu = args.device.startswith("cuda") if args.device else torch.cuda.is_available()
        args.one_at_a_time = gpu
    if args.quick:
        args.clients, args.max_tokens = [1, 8], 16
        args.requests_per_client, args.min_requests = 1, 4
        # transformers serve takes ~25 s to start on a CPU: once, for plain prompts only
        args.shared_systems = [k for k in args.shared_systems if not k.startswith("transformers")]
    with tempfile.TemporaryDirectory(prefix="bench_server-") as tmp:
        names = system_names(args)
        if args.url:
            model_dir = args.model
            scenarios = [s for s, on in ((PLAIN, args.plain), (SHARED, args.shared_prompt)) if on]
            systems = [System("running server", args.url.rstrip("/"), args.served_name,
                              api_key=args.api_key, scenarios=scenarios)]  # fmt: skip
        else:
            model_dir = args.model or build_model(Path(tmp), args.preset)
            systems = local_systems(args, model_dir, llama_export(model_dir, Path(tmp)))
        tokenizer = None
        if model_dir is not None:
            from chuan.infer.loading import load_saved_tokenizer

            tokenizer = load_saved_tokenizer(model_dir)
        work, about = workload(args, tokenizer)
        if about:
            print(f"shared system prompt: {about['system_prompt_tokens']} tokens "
                  f"({len(about['system_prompt'])} characters)", file=sys.stderr)  # fmt: skip
        results = []
        for scenario in (PLAIN, SHARED):
            group = [system for system in systems if scenario in system.scenarios]
            for turn in [[s] for s in group] if args.one_at_a_time else [group]:
                results += measure(turn, scenario, work, Path(tmp))
        measured = [r for r in results if "failed" not in r]
        env = environment(args, model_dir, [r["load_average"][0] for r in measured])
    print(env)
    for scenario in (PLAIN, SHARED):
        if any(r["scenario"] == scenario for r in measured):
            print(f"\n{scenario}:\n")
            print(markdown_table(measured, scenario, names))
    goals = goal_lines(measured, names)
    if goals:
        print("\nissue 19's goals:\n" + "\n".join(goals))
    problems = [
        f"- {r['system']}, {r.get('scenario', '')} {plural(r['clients']) if 'clients' in r else ''}"
        + (f": failed: {r['failed']}" if "failed" in r else
           f": {r['failed_requests']} requests failed (left out of the row), the first with "
           f"{r['first_error']}")
        for r in results
        if "failed" in r or r["failed_requests"]
    ]  # fmt: skip
    if problems:
        print("\nfailures:\n" + "\n".join(problems))
    if args.out:
        payload = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                   **about, "results": results}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
