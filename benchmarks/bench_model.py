"""Benchmarks of chuan's model code against the plain alternatives, printed as markdown tables.

1. Loss peak memory: forward+backward of `chunked_lm_loss` against the unchunked reference
   (full fp32 `[tokens x vocab]` logits, `F.cross_entropy`) at Baichuan 2's vocabulary.
2. Training-step time: zero_grad+forward+backward of `BaichuanForCausalLM` against
   transformers' `LlamaForCausalLM` of the same shape, at two sizes.

Every measurement runs in a fresh subprocess (this script re-invoked with a hidden `--worker`
flag), so no variant inherits another's allocator caches or peak. On CPU, memory is resident
set size: the peak from `getrusage(RUSAGE_SELF).ru_maxrss`, reset with `/proc/self/clear_refs`
once the inputs exist. Linux carries a parent's peak RSS into an exec'd child's `ru_maxrss`,
so this parent process never imports torch: torch, transformers and chuan are imported inside
the worker functions only. On CUDA, memory is `torch.cuda.max_memory_allocated`.

    PYTHONPATH=src python benchmarks/bench_model.py            # full run
    PYTHONPATH=src python benchmarks/bench_model.py --quick    # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import version

MIB = 1 << 20
BAICHUAN2_VOCAB_SIZE = 125_696
CORES = len(os.sched_getaffinity(0))
# Goal: the loss's own workspace (peak above the inputs, minus the [vocab x hidden] weight
# gradient that every method must produce) at most a quarter of the unchunked one's.
CHUNKED_GOAL = 0.25

# (shape, batch, seq_len) per run mode; the shapes are defined in `chuan_config`.
MODEL_RUNS = {
    "full": [("tiny", 8, 256), ("100m", 4, 512)],
    "quick": [("tiny", 2, 64), ("100m", 1, 128)],
}
IMPLS = ("chuan", "chuan-normhead", "hf-llama")


# --- memory and time, inside a worker ------------------------------------------------------


def current_rss() -> int:
    """Resident bytes right now, the baseline an extra peak is measured from."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak(device: str) -> int:
    """Restart peak tracking from now and return the bytes in use now.

    On CPU, writing 5 to clear_refs resets the kernel's RSS high-water mark, so earlier
    transients (imports, model init) cannot hide inside the peak we read later.
    """
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return current_rss()


def peak_bytes(device: str) -> int:
    """Peak bytes since the last `reset_peak` (ru_maxrss is in KiB on Linux)."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds used by all processes, by this one) so far.

    On a small shared machine other processes slow torch's thread pool many-fold (a thread
    that is descheduled stalls every parallel region), so each timing reports the share of
    the CPUs that others took while it ran.
    """
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    own = os.times()
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_cpu_share(before: tuple[float, float], wall_seconds: float) -> float:
    """Fraction of all cores that other processes used since the `before` snapshot."""
    after = cpu_snapshot()
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others) / (wall_seconds * CORES)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# --- workers ------------------------------------------------------------------------------


def loss_variants() -> dict:
    """Name -> `fn(hidden, weight, targets) -> loss`. Call it before the memory baseline, so
    the imports (transformers comes with chuan) land neither in the peak nor in the time."""
    import torch.nn.functional as F

    from chuan.model import chunked_lm_loss

    def chunked(hidden, weight, targets):
        """chuan's chunked loss without z-loss: the same quantity as `unchunked`."""
        return chunked_lm_loss(hidden, weight, targets).loss

    def unchunked(hidden, weight, targets):
        """What a plain training loop does: full fp32 logits, then `F.cross_entropy`. The
        logits are a local, so once this returns only what autograd saved (log-softmax's
        output) is left: the reference's best case."""
        logits = (hidden @ weight.T).float()
        return F.cross_entropy(logits, targets)

    return {"chunked": chunked, "unchunked": unchunked}


def loss_worker(task: dict) -> dict:
    """One forward+backward of one loss variant; the extra peak above hidden/weight/targets."""
    import torch

    device = task["device"]
    loss_fn = loss_variants()[task["variant"]]
    torch.manual_seed(0)
    # randn writes every element, so the inputs are resident before the baseline is taken.
    hidden = torch.randn(task["tokens"], task["hidden_size"], device=device, requires_grad=True)
    weight = torch.randn(task["vocab_size"], task["hidden_size"], device=device)
    weight = weight.div_(task["hidden_size"] ** 0.5).requires_grad_()
    targets = torch.randint(task["vocab_size"], (task["tokens"],), device=device)

    baseline = reset_peak(device)
    cpu_before, start = cpu_snapshot(), time.perf_counter()
    loss = loss_fn(hidden, weight, targets)
    loss.backward()
    synchronize(device)
    seconds = time.perf_counter() - start
    extra = peak_bytes(device) - baseline
    return {
        "variant": task["variant"],
        "extra_peak_mib": extra / MIB,
        "grads_mib": (hidden.grad.nbytes + weight.grad.nbytes) / MIB,
        "seconds": seconds,
        "others_cpu": others_cpu_share(cpu_before, seconds),
        "loss": loss.item(),
        "grad_hidden_norm": hidden.grad.norm().item(),
        "grad_weight_norm": weight.grad.norm().item(),
    }


def chuan_config(shape: str, norm_head: bool):
    """The two benchmarked shapes: the `tiny` preset, and a ~100M-parameter RoPE model (GPT-2
    small's width and depth with the SwiGLU FFN rule and LLaMA's 32k vocabulary)."""
    from chuan.model import BaichuanConfig, preset_config, swiglu_intermediate_size

    if shape == "tiny":
        return preset_config("tiny", norm_head=norm_head, use_cache=False)
    return BaichuanConfig(
        hidden_size=768,
        intermediate_size=swiglu_intermediate_size(768),
        num_hidden_layers=12,
        num_attention_heads=12,
        vocab_size=32000,
        position_encoding="rope",
        norm_head=norm_head,
        max_position_embeddings=2048,
        use_cache=False,
    )


def build_model(impl: str, shape: str):
    """chuan's model (plain or NormHead output layer) or a LLaMA of exactly the same shape."""
    from chuan.model import BaichuanForCausalLM

    config = chuan_config(shape, norm_head=impl == "chuan-normhead")
    if impl != "hf-llama":
        return BaichuanForCausalLM(config)
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_attention_heads,
            vocab_size=config.vocab_size,
            max_position_embeddings=config.max_position_embeddings,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
            use_cache=False,
        )
    )


def model_worker(task: dict) -> dict:
    """Warm-up steps, then timed zero_grad+forward+backward steps of one model; median time."""
    import torch

    device = task["device"]
    torch.manual_seed(0)
    model = build_model(task["impl"], task["shape"]).to(device).train()
    config = model.config
    input_ids = torch.randint(config.vocab_size, (task["batch"], task["seq_len"]), device=device)

    baseline = reset_peak(device)
    times = []
    for step in range(task["warmup"] + task["steps"]):
        if step == task["warmup"]:
            cpu_before, timed_start = cpu_snapshot(), time.perf_counter()
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
    others_cpu = others_cpu_share(cpu_before, time.perf_counter() - timed_start)
    timed = times[task["warmup"] :]
    step_seconds = statistics.median(timed)
    peak = peak_bytes(device)
    return {
        "shape": task["shape"],
        "impl": task["impl"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "dims": f"h{config.hidden_size} L{config.num_hidden_layers} "
        f"H{config.num_attention_heads} F{config.intermediate_size} V{config.vocab_size}",
        "batch": f"{task['batch']}x{task['seq_len']}",
        "ms_per_step": step_seconds * 1000,
        "min_ms_per_step": min(timed) * 1000,
        "others_cpu": others_cpu,
        "tokens_per_s": task["batch"] * task["seq_len"] / step_seconds,
        "peak_mib": peak / MIB,
        "step_extra_mib": (peak - baseline) / MIB,
        "loss": loss.item(),
    }


WORKERS = {"loss": loss_worker, "model": model_worker}


def worker_main(task: dict) -> None:
    """Entry point of a subprocess: run one task, print its result as the last stdout line."""
    import torch

    torch.set_num_threads(task["threads"])
    if task["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but torch sees no CUDA device")
    print(json.dumps(WORKERS[task["kind"]](task)))


# --- orchestration (parent process, no torch) ----------------------------------------------


def run_worker(task: dict) -> dict:
    """Run `task` in a fresh interpreter; a failure (e.g. killed for memory) becomes a row."""
    label = " ".join(str(task[key]) for key in ("kind", "variant", "impl", "shape") if key in task)
    print(f"running {label} ...", file=sys.stderr, flush=True)
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(task)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {**task, "error": f"exit {done.returncode}: {reason[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_settings(args: argparse.Namespace) -> dict:
    return {"device": args.device, "threads": args.threads}


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|---" + "|---:" * (len(headers) - 1) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def environment(args: argparse.Namespace) -> dict:
    return {
        "torch": version("torch"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cores": CORES,
        "device": args.device,
        "threads": args.threads,
    }


def loss_benchmark(args: argparse.Namespace) -> dict:
    """Section 1: both loss variants, their memory ratio and their agreement."""
    shape = {"tokens": args.tokens, "hidden_size": args.hidden_size, "vocab_size": args.vocab_size}
    rows = [
        run_worker({"kind": "loss", "variant": variant, **worker_settings(args), **shape})
        for variant in ("chunked", "unchunked")
    ]
    summary = {**shape}
    chunked, unchunked = rows
    if "error" not in chunked and "error" not in unchunked:
        ratio = chunked["extra_peak_mib"] / unchunked["extra_peak_mib"]
        workspace_ratio = (chunked["extra_peak_mib"] - chunked["grads_mib"]) / (
            unchunked["extra_peak_mib"] - unchunked["grads_mib"]
        )
        summary.update(
            ratio=ratio,
            ratio_without_grads=workspace_ratio,
            goal_met=workspace_ratio <= CHUNKED_GOAL,
            loss_abs_diff=abs(chunked["loss"] - unchunked["loss"]),
            grad_hidden_norm_rel_diff=relative_diff(chunked, unchunked, "grad_hidden_norm"),
            grad_weight_norm_rel_diff=relative_diff(chunked, unchunked, "grad_weight_norm"),
        )
    return {"rows": rows, "summary": summary}


def relative_diff(a: dict, b: dict, key: str) -> float:
    return abs(a[key] - b[key]) / max(abs(b[key]), 1e-30)


def print_loss_section(result: dict) -> None:
    summary = result["summary"]
    print(
        f"\n## 1. LM loss forward+backward: {summary['tokens']:,} tokens x "
        f"{summary['vocab_size']:,} vocab, hidden {summary['hidden_size']}, fp32\n"
    )
    headers = [
        "variant",
        "extra peak MiB",
        "of which grads MiB",
        "extra minus grads MiB",
        "fwd+bwd s",
        "others' CPU",
        "loss",
    ]
    rows = []
    for row in result["rows"]:
        if "error" in row:
            rows.append([row["variant"], row["error"], *[""] * 5])
            continue
        rows.append(
            [
                row["variant"],
                f"{row['extra_peak_mib']:,.0f}",
                f"{row['grads_mib']:,.0f}",
                f"{row['extra_peak_mib'] - row['grads_mib']:,.0f}",
                f"{row['seconds']:.2f}",
                f"{row['others_cpu']:.0%}",
                f"{row['loss']:.6f}",
            ]
        )
    print(markdown_table(headers, rows))
    if "ratio" not in summary:
        return
    verdict = "met" if summary["goal_met"] else "NOT met"
    print(
        f"\n- chunked / unchunked workspace (extra peak minus the gradients both must hold): "
        f"{summary['ratio_without_grads']:.3f} (goal <= {CHUNKED_GOAL}: {verdict}); "
        f"including the gradients: {summary['ratio']:.3f}\n"
        f"- |loss difference|: {summary['loss_abs_diff']:.3e}; relative difference of "
        f"gradient norms: hidden {summary['grad_hidden_norm_rel_diff']:.3e}, "
        f"weight {summary['grad_weight_norm_rel_diff']:.3e}"
    )


def model_benchmark(args: argparse.Namespace) -> list[dict]:
    """Section 2: every implementation at every shape, one subprocess each."""
    rows = []
    for shape, batch, seq_len in MODEL_RUNS["quick" if args.quick else "full"]:
        for impl in IMPLS:
            task = {
                "kind": "model",
                "impl": impl,
                "shape": shape,
                "batch": batch,
                "seq_len": seq_len,
                "warmup": args.warmup,
                "steps": args.steps,
                **worker_settings(args),
            }
            rows.append(run_worker(task))
    baselines = {row["shape"]: row for row in rows if row["impl"] == "hf-llama"}
    for row in rows:
        hf = baselines.get(row["shape"], {})
        if "error" not in row and "ms_per_step" in hf:
            row["speedup_vs_hf"] = hf["ms_per_step"] / row["ms_per_step"]
    return rows


def print_model_section(rows: list[dict], args: argparse.Namespace) -> None:
    memory = "peak allocated" if args.device == "cuda" else "peak RSS"
    print(
        f"\n## 2. Training step (zero_grad+forward+backward, fp32, model.train()): "
        f"median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    headers = [
        "shape",
        "implementation",
        "params M",
        "batch",
        "ms/step",
        "min ms",
        "tokens/s",
        "speed-up vs HF (HF ms / ms)",
        "others' CPU",
        f"{memory} MiB",
        "step extra MiB",
        "loss",
    ]
    table = []
    for row in rows:
        if "error" in row:
            table.append([row["shape"], row["impl"], row["error"], *[""] * 9])
            continue
        table.append(
            [
                f"{row['shape']} ({row['dims']})",
                row["impl"],
                f"{row['params_m']:.1f}",
                row["batch"],
                f"{row['ms_per_step']:,.1f}",
                f"{row['min_ms_per_step']:,.1f}",
                f"{row['tokens_per_s']:,.0f}",
                f"{row['speedup_vs_hf']:.2f}x" if "speedup_vs_hf" in row else "n/a",
                f"{row['others_cpu']:.0%}",
                f"{row['peak_mib']:,.0f}",
                f"{row['step_extra_mib']:,.0f}",
                f"{row['loss']:.4f}",
            ]
        )
    print(markdown_table(headers, table))
    print(
        "\nchuan = BaichuanForCausalLM with a plain linear head (norm_head=False); "
        "chuan-normhead = with Baichuan 2's NormHead; hf-llama = transformers "
        "LlamaForCausalLM, sdpa attention, loss from full logits. Step extra = peak minus the "
        "memory in use once the model and batch exist. Others' CPU = share of all cores other "
        "processes used during the timing; above a few percent, times are inflated (min ms is "
        "then the better estimate)."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark chuan's chunked LM loss (peak memory) and training step "
        "(time vs transformers' LlamaForCausalLM); prints markdown tables.",
    )

    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small loss shape, small batches, fewer steps",
    )
    parser.add_argument("--json", metavar="PATH", help="also write all results to PATH")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (default) measures peak RSS, cuda torch.cuda.max_memory_allocated",
    )
    parser.add_argument(
        "--only", choices=("loss", "models"), help="run one section only (default: both)"
    )
    parser.add_argument(
        "--tokens", type=int, help="loss: tokens in the batch (default 4096; --quick 1024)"
    )
    parser.add_argument(
        "--hidden-size",
        type=int,
        help="loss: hidden size (default 4096 = Baichuan2-7B; --quick 512)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=BAICHUAN2_VOCAB_SIZE,
        help=f"loss: vocabulary size (default {BAICHUAN2_VOCAB_SIZE}, Baichuan 2)",
    )
    parser.add_argument("--steps", type=int, help="models: timed steps (default 5; --quick 2)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="models: untimed warm-up steps (default 2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=CORES,
        help=f"torch.set_num_threads in every worker (default {CORES}, the CPU cores)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick_or_full = {"tokens": (1024, 4096), "hidden_size": (512, 4096), "steps": (2, 5)}
    for name, (quick, full) in quick_or_full.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    started = time.perf_counter()
    env = environment(args)
    print("# chuan model benchmarks\n")
    print(f"- torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}")
    print(f"- CPU: {env['cpu']}, {env['cores']} cores (torch threads = {args.threads})")
    print(f"- device: {env['device']}")
    results = {"environment": env, "quick": args.quick}
    if args.only in (None, "loss"):
        results["loss"] = loss_benchmark(args)
        print_loss_section(results["loss"])
    if args.only in (None, "models"):
        results["models"] = model_benchmark(args)
        print_model_section(results["models"], args)
    results["wall_seconds"] = time.perf_counter() - started
    print(f"\nTotal wall time: {results['wall_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
