"""Weight-only quantization side by side: fp32 / bf16 (what users run without quantizing)
against chuan's int8 and int4, on a small model trained here on real text, plus the matmuls
at Baichuan2-7B's shapes where the kernel choice matters.

Tables (markdown):

1. Weight memory of this model, Baichuan2-7B and -13B (computed from the shapes) next to
   Baichuan's published numbers.
2. Accuracy on held-out KJV / CUV verses: logits error against fp32 (max, mean, greedy
   agreement) and perplexity, for int8 and int4 with groups of 128, 64 and 32.
3. Speed of the small model on the CPU: greedy decode tokens/s (KV cache) and one 512-token
   forward, each precision in fp32 and bf16 compute.
4. One Linear at Baichuan2-7B shapes: dense fp32 / bf16 matmul against the weight-only paths
   (PyTorch's int8/int4 kernels; dequantize + dense, in cache-sized blocks as chuan does or the
   whole matrix at once), 1 row (a decode step) and 64 rows; "chuan uses" marks the path
   `QLinear` picks.

torchao is not compared: it is not installed, and its CPU int8/int4 weight-only configs call
the same two aten kernels as chuan's `QLinear`.

    PYTHONPATH=src python benchmarks/bench_quantize.py            # about 5 minutes
    PYTHONPATH=src python benchmarks/bench_quantize.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chuan.infer.generate import SamplingConfig, stream_tokens
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.infer.quantize import (
    QLinear,
    QuantSpec,
    quantize_dir,
    quantize_model,
    render_memory_table,
)
from chuan.model import BaichuanForCausalLM, preset_config
from chuan.model.checkpoint import copy_side_files
from chuan.model.nll import perplexity

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TRAIN_VERSES = 6000
HELD_OUT_VERSES = 1000
VARIANTS = {
    "fp32": None,
    "int8": QuantSpec(8),
    "int4 g128": QuantSpec(4, 128),
    "int4 g64": QuantSpec(4, 64),
    "int4 g32": QuantSpec(4, 32),
}


# ---- the model ---------------------------------------------------------------------------


def bible_documents(verses: int) -> list[dict]:
    """Documents of five consecutive KJV / CUV verses (the tests' helper)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.pretrain_fixtures import bible_documents as documents

    return documents(SHARED_DATA, verses)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.corpus import write_jsonl as write

    return write(path, records)


def encode_documents(tokenizer, docs: list[dict], eos: int = 2) -> list[int]:
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer.encode(doc["text"], add_special_tokens=False) + [eos]
    return ids


def train_small_model(root: Path, *, steps: int, seq_len: int = 128, seed: int = 0) -> Path:
    """Train a 3,000-piece tokenizer and a 4-layer `tiny` model (RoPE, NormHead) on the first
    KJV / CUV verses with a plain AdamW loop; returns the model dir (with tokenizer files)."""
    from chuan.tokenizer.train import train_tokenizer

    docs = bible_documents(TRAIN_VERSES)
    train_tokenizer(
        write_jsonl(root / "train.jsonl", docs), root / "tok", vocab_size=3000, progress=False
    )
    tokenizer = load_saved_tokenizer(root / "tok")
    ids = torch.tensor(encode_documents(tokenizer, docs))
    rows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    torch.manual_seed(seed)
    model = BaichuanForCausalLM(preset_config("tiny", vocab_size=len(tokenizer)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    for step in range(steps):
        batch = rows[torch.randint(0, len(rows), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}", file=sys.stderr)
    model.save_pretrained(root / "model")
    copy_side_files(root / "tok", root / "model")
    return root / "model"


def held_out_ids(model_dir: Path, tokens: int) -> list[int]:
    """Tokens of the verses after the training ones (English and Chinese documents)."""
    docs = bible_documents(TRAIN_VERSES + HELD_OUT_VERSES)
    held = docs[len(bible_documents(TRAIN_VERSES)) :]
    return encode_documents(load_saved_tokenizer(model_dir), held)[:tokens]


# ---- tables ------------------------------------------------------------------------------


def quantized(model: BaichuanForCausalLM, spec: QuantSpec | None) -> BaichuanForCausalLM:
    clone = copy.deepcopy(model)
    if spec is not None:
        quantize_model(clone, spec)
    return clone.eval()


def weight_mib(model: BaichuanForCausalLM) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


@torch.no_grad()
def accuracy_table(model: BaichuanForCausalLM, ids: list[int], window: int) -> str:
    tokens = torch.tensor([ids[:window]])
    reference = model(input_ids=tokens).logits
    lines = [
        "| weights | MiB in memory | max abs logit error | mean abs logit error | "
        "greedy agreement | held-out perplexity |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, spec in VARIANTS.items():
        variant = quantized(model, spec)
        logits = variant(input_ids=tokens).logits
        diff = (logits - reference).abs()
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        ppl = perplexity(variant, ids, max_length=window)
        lines.append(
            f"| {name} | {weight_mib(variant):.2f} | {diff.max():.4f} | {diff.mean():.5f} | "
            f"{agree:.2%} | {ppl:.3f} |"
        )
    return "\n".join(lines)


def best_of(fn, repeats: int) -> float:
    """Minimum wall time of `repeats` calls after one warm-up (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def speed_table(model: BaichuanForCausalLM, ids: list[int], new_tokens: int, repeats: int) -> str:
    prompt, window = ids[:16], torch.tensor([ids[:512]])
    cfg = SamplingConfig(max_new_tokens=new_tokens)
    lines = [
        "| weights | compute | decode tokens/s | 512-token forward ms |",
        "|---|---|---:|---:|",
    ]
    for name in ("fp32", "int8", "int4 g128"):
        for dtype in (torch.float32, torch.bfloat16):
            variant = quantized(model, VARIANTS[name]).to(dtype)
            decode = best_of(lambda v=variant: list(stream_tokens(v, prompt, cfg)), repeats)
            forward = best_of(lambda v=variant: v(input_ids=window), repeats)
            label = "dense" if name == "fp32" else name
            lines.append(
                f"| {label} | {str(dtype).removeprefix('torch.')} | {new_tokens / decode:,.0f} | "
                f"{forward * 1e3:.1f} |"
            )
    return "\n".join(lines)


def _qlinear(weight: torch.Tensor, spec: QuantSpec) -> QLinear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return QLinear.from_linear(linear, spec)


def _matmul_variants(weight: torch.Tensor, rows: int, dtype: torch.dtype) -> dict:
    """path -> (zero-argument callable computing `x @ weight.T`, whether QLinear takes it).
    The fp32 kernels are scalar loops (seconds at 64 rows): in fp32 they are timed at 1 row."""
    x = torch.randn(rows, weight.shape[1]).to(dtype)
    dense = weight.to(dtype)
    variants = {"dense": (lambda: F.linear(x, dense), False)}
    for label, spec in (("int8", QuantSpec(8)), ("int4 g128", QuantSpec(4, 128))):
        layer = _qlinear(weight, spec)
        used = layer.uses_kernel(x)
        if used or rows == 1 or dtype == torch.bfloat16:
            variants[f"{label} kernel"] = (lambda layer=layer: layer.kernel_matmul(x), used)
        blocked = lambda layer=layer: layer.dequantized_matmul(x)  # noqa: E731
        whole = lambda layer=layer: F.linear(x, layer.dequantize(dtype))  # noqa: E731
        variants[f"{label} dequantize in blocks"] = (blocked, not used)
        variants[f"{label} dequantize whole"] = (whole, False)
    return variants


@torch.no_grad()
def matmul_table(repeats: int, shapes: dict[str, tuple[int, int]]) -> str:
    lines = [
        "| Linear (out x in) | compute | rows | path | chuan uses | ms | speed vs dense |",
        "|---|---|---:|---|:---:|---:|---:|",
    ]
    for label, (out_features, in_features) in shapes.items():
        weight = torch.randn(out_features, in_features) * 0.02
        for dtype in (torch.float32, torch.bfloat16):
            for rows in (1, 64):
                variants = _matmul_variants(weight, rows, dtype)
                times = {k: best_of(fn, repeats) for k, (fn, _) in variants.items()}
                for path, seconds in times.items():
                    used = "yes" if variants[path][1] else ""
                    lines.append(
                        f"| {label} {out_features}x{in_features} | "
                        f"{str(dtype).removeprefix('torch.')} | {rows} | {path} | {used} | "
                        f"{seconds * 1e3:.2f} | {times['dense'] / seconds:.2f}x |"
                    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps and repeats")
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    args = parser.parse_args()
    steps, repeats = (30, 2) if args.quick else (args.steps, 5)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; timings are noisy on a shared machine\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = train_small_model(root, steps=steps)
        report = quantize_dir(model_dir, root / "int4", bits=4, progress=False)
        print("## Weight memory (targets quantized, the rest bf16)\n")
        print(render_memory_table(report.memory_table) + "\n")
        model = load_model(model_dir, device="cpu", dtype="fp32")
        ids = held_out_ids(model_dir, 4096 if not args.quick else 1024)
        print(f"## Accuracy on {len(ids):,} held-out tokens (KJV + CUV verses), windows of 256\n")
        print(accuracy_table(model, ids, 256) + "\n")
        print("## The small model on the CPU\n")
        print(speed_table(model, ids, 32 if args.quick else 128, repeats) + "\n")
    shapes = {"o_proj": (4096, 4096), "gate_proj": (11008, 4096)}
    if args.quick:
        shapes = {"o_proj": (1024, 1024)}
    print("## One Linear at Baichuan2-7B shapes (CPU)\n")
    print(matmul_table(repeats, shapes))
    print(f"\nTimes are the best of {repeats} runs after a warm-up.")


if __name__ == "__main__":
    main()
