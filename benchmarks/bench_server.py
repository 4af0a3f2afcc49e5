"""Serving throughput: `chuan serve` against the servers users would otherwise run, same model.

Servers, each started in its own subprocess in turn and loaded with the same requests:

- `chuan serve --max-batch 32`: cohort batching (see docs/serve.md);
- `chuan serve --max-batch 1`: the same server decoding one sequence at a time;
- `transformers serve` on the LLaMA export of the same weights (`chuan convert --to llama`),
  as it runs by default, and with `--continuous-batching` (paged attention).

Load: C concurrent clients (the official `AsyncOpenAI` client), each sending
`/v1/completions` requests back to back until `C * --requests-per-client` are done; greedy,
`max_tokens` fixed, prompts from chuan's bundled sample corpus. Reported: requests/s,
completion tokens/s (counted from each response's `usage`), mean and p95 latency. Timings on
a machine shared with other work are noisy; the load average is printed with the table.

    PYTHONPATH=src python benchmarks/bench_server.py                  # tiny model, CPU
    PYTHONPATH=src python benchmarks/bench_server.py --quick          # smoke run
    PYTHONPATH=src python benchmarks/bench_server.py --model DIR --device cuda --dtype bf16
    PYTHONPATH=src python benchmarks/bench_server.py --url http://127.0.0.1:8000 --api-key K \\
        --served-name NAME                                            # a server already running
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
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "chuan" / "assets" / "sample"
TRANSFORMERS_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BENCH_NAME = "bench"


@dataclass
class System:
    """A server under test: how to start it (None: already running) and what to send it."""

    name: str
    url: str
    model: str
    command: list[str] | None = None
    extra_body: dict = field(default_factory=dict)
    api_key: str = "none"


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


def prompts(count: int) -> list[str]:
    """Sample-corpus texts (English and Chinese, long and short), cut to 300 characters."""
    texts = []
    for path in sorted(ASSETS.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            lines = [f.readline() for _ in range(count)]
        texts += [json.loads(line)["text"][:300] for line in lines if line.strip()]
    if not texts:
        raise FileNotFoundError(f"no sample corpus in {ASSETS}")
    return [texts[i * len(texts) // count] for i in range(count)]


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


async def warm_up(client, system: System, max_tokens: int) -> None:
    """One untimed request: first-call costs (allocations, lazy imports) stay out of the numbers."""
    await client.completions.create(
        model=system.model, prompt="warm up", max_tokens=max_tokens, extra_body=system.extra_body
    )


async def load(system: System, clients: int, texts: list[str], max_tokens: int) -> dict:
    """`clients` concurrent clients working through `texts`; throughput and latencies."""
    from openai import AsyncOpenAI

    pending = list(reversed(texts))
    latencies: list[float] = []
    tokens = 0

    async def client_loop(client: AsyncOpenAI) -> None:
        nonlocal tokens
        while pending:
            prompt = pending.pop()
            start = time.perf_counter()
            out = await client.completions.create(
                model=system.model,
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=0,
                extra_body=system.extra_body,
            )
            latencies.append(time.perf_counter() - start)
            tokens += out.usage.completion_tokens

    client = AsyncOpenAI(
        base_url=f"{system.url}/v1", api_key=system.api_key, max_retries=0, timeout=3600
    )
    async with client:
        await warm_up(client, system, max_tokens)
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {
        "system": system.name,
        "clients": clients,
        "requests": len(latencies),
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": tokens / wall,
        "completion_tokens": tokens,
        "mean_latency_s": statistics.fmean(latencies),
        "p95_latency_s": statistics.quantiles(latencies, n=20)[-1],
    }


def measure(
    system: System, levels: list[int], per_client: int, max_tokens: int, log_dir: Path
) -> list[dict]:
    """Start `system` (unless it runs already), load it at each concurrency, stop it. The
    server's output goes to a log file, whose tail is shown if the server fails."""
    log_path = log_dir / (system.name.replace(" ", "_").replace("-", "") + ".log")
    process = None
    with open(log_path, "w") as log:
        if system.command is not None:
            process = subprocess.Popen(system.command, stdout=log, stderr=log)
        try:
            wait_healthy(system.url, process)
            results = []
            for clients in levels:
                texts = prompts(clients * per_client)
                results.append(asyncio.run(load(system, clients, texts, max_tokens)))
                print(json.dumps(results[-1]), file=sys.stderr)
            return results
        except Exception:
            print(f"{system.name} failed; its log ends:", file=sys.stderr)
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)


# --- the systems and the report --------------------------------------------------------------


def local_systems(args: argparse.Namespace, model_dir: Path, llama_dir: Path | None):
    here = [sys.executable, __file__]
    device = args.device or "auto"
    systems = []
    for batch in (args.max_batch, 1):
        port = free_port()
        command = [*here, "--serve-chuan", str(model_dir), "--port", str(port)]
        command += ["--max-batch", str(batch), "--dtype", args.dtype, "--log-level", "warning"]
        command += ["--model-name", BENCH_NAME] + (["--device", args.device] if args.device else [])
        systems.append(
            System(
                f"chuan serve --max-batch {batch}",
                f"http://127.0.0.1:{port}",
                BENCH_NAME,
                command,
                {"repetition_penalty": 1.0},
            )
        )
    if llama_dir is not None and not args.skip_transformers:
        dtype = TRANSFORMERS_DTYPES.get(args.dtype, "auto")
        for cb in (False, True):
            port = free_port()
            command = [*here, "--serve-transformers", str(llama_dir), str(port), device, dtype]
            command += ["--cb"] if cb else []
            name = "transformers serve" + (" --continuous-batching" if cb else "")
            systems.append(System(name, f"http://127.0.0.1:{port}", str(llama_dir), command))
    return systems


def markdown_table(results: list[dict], baseline: str) -> str:
    base = {r["clients"]: r["tokens_per_s"] for r in results if r["system"] == baseline}
    lines = [
        "| server | clients | requests | req/s | tokens/s | vs max-batch 1 | mean latency s "
        "| p95 latency s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["clients"], -r["tokens_per_s"])):
        ratio = f"{r['tokens_per_s'] / base[r['clients']]:.2f}x" if r["clients"] in base else "-"
        lines.append(
            f"| {r['system']} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} "
            f"| {r['tokens_per_s']:.1f} | {ratio} | {r['mean_latency_s']:.2f} "
            f"| {r['p95_latency_s']:.2f} |"
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace, model_dir: Path | None) -> str:
    import torch

    shape = ""
    if model_dir is not None:
        from chuan.model import BaichuanConfig, parameter_count

        params = parameter_count(BaichuanConfig.from_pretrained(model_dir))
        shape = f"model {model_dir.name}: {params:,} parameters; "
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"{shape}{device}, {len(os.sched_getaffinity(0))} cores, load average "
        f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}, transformers "
        f"{version('transformers')}; greedy, max_tokens {args.max_tokens}, "
        f"{args.requests_per_client} requests per client"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: a fresh --preset model)")
    parser.add_argument("--preset", default="tiny", help="preset when no --model (tiny)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: a GPU when present)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *TRANSFORMERS_DTYPES])
    parser.add_argument("--max-batch", type=int, default=32, help="chuan's batch (32)")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="(8 32)")
    parser.add_argument("--requests-per-client", type=int, default=4, help="(4)")
    parser.add_argument("--max-tokens", type=int, default=64, help="per request (64)")
    parser.add_argument("--skip-transformers", action="store_true", help="chuan servers only")
    parser.add_argument("--url", help="measure this running server only (no servers started)")
    parser.add_argument("--api-key", default="none", help="key for --url")
    parser.add_argument("--served-name", default=BENCH_NAME, help="model name for --url")
    parser.add_argument("--quick", action="store_true", help="4 and 8 clients, 16 tokens")
    return parser.parse_args(argv)


def main() -> None:
    if sys.argv[1:2] == ["--serve-chuan"]:
        return serve_chuan(sys.argv[2:])
    if sys.argv[1:2] == ["--serve-transformers"]:
        model_dir, port, device, dtype, *cb = sys.argv[2:]
        return serve_transformers(model_dir, int(port), device, dtype, cb == ["--cb"])
    args = parse_args()
    if args.quick:
        args.clients, args.max_tokens = [4, 8], 16
    with tempfile.TemporaryDirectory(prefix="bench_server-") as tmp:
        if args.url:
            url, model_dir = args.url.rstrip("/"), args.model
            systems = [System("running server", url, args.served_name, api_key=args.api_key)]
        else:
            model_dir = args.model or build_model(Path(tmp), args.preset)
            systems = local_systems(args, model_dir, llama_export(model_dir, Path(tmp)))
        results = []
        for system in systems:
            results += measure(
                system, args.clients, args.requests_per_client, args.max_tokens, Path(tmp)
            )
        print(environment(args, model_dir))
        print()
        print(markdown_table(results, "chuan serve --max-batch 1"))


if __name__ == "__main__":
    main()
