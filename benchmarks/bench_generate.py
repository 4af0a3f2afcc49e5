"""Decode speed of chuan's generation engine against transformers' `model.generate`.

Both decode the same prompts greedily with the same model object (so the model code is the
same and only the generation machinery differs), 128 new tokens, no stop token, at batch 1
and batch 8 (prompts of different lengths, left-padded), for three model sizes: the `tiny`
preset, a ~10M model and a ~100M model with a 32k vocabulary. Reported per row:

- decode tokens/s (new tokens after the first, over the time after the first) and time to
  first token (prefill + first token), for chuan and for transformers;
- ms per step of chuan's own decode step, and of the bare model forward it wraps (one token
  through chuan's preallocated cache, no sampling): the difference is chuan's per-step
  overhead, the forward is the floor the model code itself sets;
- whether both produced the same tokens (they should: same model, both greedy).

Runs alternate chuan and transformers; each number is the best of the repeats (on a shared
CPU other processes only ever add time). `--compile` adds chuan with `torch.compile` on the
decode step (its compile time is reported separately, not timed). `--new-tokens 1024` shows
the cost of transformers' `DynamicCache`, which `torch.cat`s the whole cache every step.

    PYTHONPATH=src python benchmarks/bench_generate.py             # full run
    PYTHONPATH=src python benchmarks/bench_generate.py --quick     # smoke run
    PYTHONPATH=src python benchmarks/bench_generate.py --device cuda --compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from chuan.fileio import write_atomic
from chuan.infer.cache import KVCache
from chuan.infer.generate import BatchDecoder, SamplingConfig
from chuan.model import BaichuanConfig, BaichuanForCausalLM, preset_config, swiglu_intermediate_size
from chuan.model.presets import parameter_count

NEW_TOKENS = 128  # default; --new-tokens changes it
PROMPT_LEN = 32
BEST = {"ttft_ms": min, "decode_tok_s": max, "step_ms": min}
GOAL = 2.0  # chuan's decode tokens/s over transformers' at batch 1 on CPU


def model_config(size: str) -> BaichuanConfig:
    """`tiny` (the preset), `10m` and `100m` (GPT-2 small's width and depth, 32k vocab)."""
    if size == "tiny":
        return preset_config("tiny")
    hidden, layers, heads, vocab = {"10m": (256, 8, 8, 8000), "100m": (768, 12, 12, 32000)}[size]
    return BaichuanConfig(
        hidden_size=hidden,
        intermediate_size=swiglu_intermediate_size(hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        vocab_size=vocab,
        position_encoding="rope",
        norm_head=True,
        max_position_embeddings=2048,
    )


def prompts_for(batch: int, vocab: int) -> list[list[int]]:
    """`batch` prompts of 32 tokens (batch 1) or of 25..39 tokens (batch 8, so padded)."""
    gen = torch.Generator().manual_seed(batch)
    lengths = [PROMPT_LEN] if batch == 1 else [25 + 2 * i for i in range(batch)]
    return [[1, *torch.randint(3, vocab, (n - 1,), generator=gen).tolist()] for n in lengths]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the three measured things ------------------------------------------------------------


def run_chuan(model, prompts, new_tokens: int, *, compile: bool = False) -> dict:
    """Time to first token and decode rate of `BatchDecoder`, and the tokens."""
    device = next(model.parameters()).device
    cfg = SamplingConfig(max_new_tokens=new_tokens)
    sync(device)
    start = time.perf_counter()
    decoder = BatchDecoder(model, prompts, [cfg] * len(prompts), compile=compile)
    steps = [decoder.step()]
    sync(device)
    first = time.perf_counter()
    while not decoder.done:
        steps.append(decoder.step())
    sync(device)
    end = time.perf_counter()
    tokens = [list(row) for row in zip(*steps, strict=True)]
    return _timing(start, first, end, tokens)


class _StepClock(BaseStreamer):
    """Records when `generate` hands over each new token (its first `put` is the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.puts = device, [], 0

    def put(self, value) -> None:
        self.puts += 1
        if self.puts > 1:
            sync(self.device)
            self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_hf(model, prompts, new_tokens: int) -> dict:
    """The same through transformers' `model.generate` (left padding, attention mask)."""
    device = next(model.parameters()).device
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    clock = _StepClock(device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config, streamer=clock
        )
    sync(device)
    end = time.perf_counter()
    return _timing(start, clock.times[0], end, out[:, width:].tolist())


def _timing(start: float, first: float, end: float, tokens: list[list[int]]) -> dict:
    steps = len(tokens[0]) - 1
    return {
        "ttft_ms": (first - start) * 1e3,
        "decode_tok_s": len(tokens) * steps / (end - first),
        "step_ms": (end - first) * 1e3 / steps,
        "tokens": tokens,
    }


def forward_only_step_ms(model, batch: int, new_tokens: int) -> float:
    """ms per bare one-token forward through a preallocated cache (no mask, no sampling)."""
    device = next(model.parameters()).device
    cache = KVCache.for_model(model, PROMPT_LEN + new_tokens)
    token = torch.ones(batch, 1, dtype=torch.long, device=device)
    with torch.inference_mode():
        model(input_ids=token.expand(batch, PROMPT_LEN), past_key_values=cache, logits_to_keep=1)
        sync(device)
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        sync(device)
    return (time.perf_counter() - start) * 1e3 / (new_tokens - 1)


# --- driver ------------------------------------------------------------------------------


def measure(size: str, batch: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    config = model_config(size)
    model = BaichuanForCausalLM(config).to(device=device, dtype=dtype).eval()
    prompts = prompts_for(batch, config.vocab_size)
    n = args.new_tokens
    runners = {
        "chuan": lambda: run_chuan(model, prompts, n),
        "hf": lambda: run_hf(model, prompts, n),
    }
    row = {"size": size, "params": parameter_count(config), "batch": batch}
    if args.compile:
        start = time.perf_counter()
        run_chuan(model, prompts, n, compile=True)
        row["compile_s"] = time.perf_counter() - start
        runners["chuan+compile"] = lambda: run_chuan(model, prompts, n, compile=True)
    for fn in runners.values():  # warm-up
        fn()
    results = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            results[name].append(fn())
    for name, runs in results.items():
        for key, best in BEST.items():
            row[f"{name}_{key}"] = best(r[key] for r in runs)
    row["forward_ms"] = min(forward_only_step_ms(model, batch, n) for _ in range(args.repeats))
    row["same_tokens"] = all(
        runs[-1]["tokens"] == results["hf"][-1]["tokens"] for runs in results.values()
    )
    return row


def markdown(rows: list[dict], compiled: bool) -> str:
    head = [
        "model",
        "params",
        "batch",
        "chuan tok/s",
        "HF tok/s",
        "chuan / HF",
        "chuan TTFT ms",
        "HF TTFT ms",
        "forward ms/step",
        "chuan ms/step",
        "HF ms/step",
        "same tokens",
    ]
    if compiled:
        head[6:6] = ["compiled tok/s", "compile s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["size"],
            f"{r['params'] / 1e6:.1f}M",
            str(r["batch"]),
            f"{r['chuan_decode_tok_s']:.0f}",
            f"{r['hf_decode_tok_s']:.0f}",
            f"{r['chuan_decode_tok_s'] / r['hf_decode_tok_s']:.2f}x",
            f"{r['chuan_ttft_ms']:.1f}",
            f"{r['hf_ttft_ms']:.1f}",
            f"{r['forward_ms']:.2f}",
            f"{r['chuan_step_ms']:.2f}",
            f"{r['hf_step_ms']:.2f}",
            "yes" if r["same_tokens"] else "NO",
        ]
        if compiled:
            cells[6:6] = [f"{r['chuan+compile_decode_tok_s']:.0f}", f"{r['compile_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict], device: torch.device) -> str:
    """Where the batch-1 goal is met, and how much of chuan's step is the forward itself."""
    out = []
    for r in rows:
        if r["batch"] != 1:
            continue
        ratio = r["chuan_decode_tok_s"] / r["hf_decode_tok_s"]
        line = (
            f"- {r['size']} batch 1 on {device.type}: {ratio:.2f}x transformers eager "
            f"({_verdict(ratio)})"
        )
        if "chuan+compile_decode_tok_s" in r:
            compiled = r["chuan+compile_decode_tok_s"] / r["hf_decode_tok_s"]
            line += f", {compiled:.2f}x with --compile ({_verdict(compiled)})"
        overhead = r["chuan_step_ms"] - r["forward_ms"]
        out.append(
            f"{line}; chuan's step is {r['chuan_step_ms']:.2f} ms of which the model forward "
            f"is {r['forward_ms']:.2f} ms (overhead {overhead:.2f} ms); transformers' step is "
            f"{r['hf_step_ms']:.2f} ms"
        )
    return "\n".join(out)


def _verdict(ratio: float) -> str:
    return f"goal {GOAL:.0f}x {'met' if ratio >= GOAL else 'not met'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny and 10m only, 1 repeat")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="tokens per row")
    parser.add_argument("--sizes", default=None, help="comma list of tiny,10m,100m")
    parser.add_argument("--batches", default="1,8", help="comma list of batch sizes (1,8)")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    default_sizes = "tiny,10m" if args.quick else "tiny,10m,100m"
    sizes = (args.sizes or default_sizes).split(",")
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device {device} ({name}), {torch.get_num_threads()} torch threads, {os.cpu_count()} "
        f"cores, load average {os.getloadavg()[0]:.1f}, {args.dtype}, torch {torch.__version__}, "
        f"transformers {version('transformers')}; greedy, {args.new_tokens} new tokens, "
        f"best of {args.repeats}\n"
    )
    batches = [int(b) for b in args.batches.split(",")]
    rows = [measure(size, batch, args, device, dtype) for size in sizes for batch in batches]
    print(markdown(rows, args.compile))
    print()
    print(summary(rows, device))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        write_atomic(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
