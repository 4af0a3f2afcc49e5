"""chuan's GGUF export run by llama.cpp (through llama-cpp-python) against chuan itself.

A small model is trained here on KJV / CUV verses (`bench_quantize.train_small_model`),
exported with `chuan.infer.gguf.export_gguf` in f32 and f16, and quantized further with
llama.cpp's own `llama_model_quantize` to Q8_0 and Q4_0 (what a llama.cpp user would run).
Tables (markdown):

1. Fidelity: last-position logits of llama.cpp against chuan fp32 on held-out prompts, and
   greedy continuations: how many prompts give exactly chuan's tokens, the mean length of the
   common prefix, decode tokens/s of both (chuan fp32 / int8 / int4 for the quantized rows).
2. Tokenizer: llama.cpp's SentencePiece tokenization of held-out lines from the embedded
   vocabulary against chuan's tokenizer.

llama.cpp keeps its KV cache in f32 here (its default is f16) so that the f32 export can be
compared token for token. Needs `pip install llama-cpp-python`.

    PYTHONPATH=src python benchmarks/bench_gguf.py            # about 5 minutes
    PYTHONPATH=src python benchmarks/bench_gguf.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_quantize import bible_documents, held_out_ids, quantized, train_small_model
from chuan.infer.generate import SamplingConfig, stream_tokens
from chuan.infer.gguf import export_gguf
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.infer.quantize import QuantSpec

GGML_TYPE_F32 = 0
PROMPT_TOKENS = 16
# GGUF file -> (how it is made, the chuan weights it is compared with for speed)
FILES = {
    "f32": ("export_gguf outtype=f32", None),
    "f16": ("export_gguf outtype=f16", None),
    "Q8_0": ("llama_model_quantize from f16", QuantSpec(8)),
    "Q4_0": ("llama_model_quantize from f16", QuantSpec(4, 128)),
}


def llama_quantize(src: Path, out: Path, ftype: str) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize {ftype} failed")
    return out


def write_gguf_files(model_dir: Path, root: Path) -> dict[str, Path]:
    files = {
        name: export_gguf(model_dir, root / f"{name}.gguf", outtype=name) for name in ("f32", "f16")
    }
    for ftype in ("Q8_0", "Q4_0"):
        files[ftype] = llama_quantize(files["f16"], root / f"{ftype}.gguf", ftype)
    return files


def open_llama(path: Path, threads: int, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=512,
        n_threads=threads,
        n_threads_batch=threads,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        logits_all=logits_all,
        verbose=False,
    )


def llama_greedy(llm, prompt: list[int], new_tokens: int, eos: int) -> list[int]:
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if token == eos or len(out) == new_tokens:
            break
        out.append(token)
    return out


def chuan_greedy(model, prompt: list[int], new_tokens: int, eos: int) -> list[int]:
    cfg = SamplingConfig(max_new_tokens=new_tokens, stop_token_ids=(eos,))
    return list(stream_tokens(model, prompt, cfg))


def timed(fn, *args) -> tuple[list[int], float]:
    start = time.perf_counter()
    tokens = fn(*args)
    return tokens, time.perf_counter() - start


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


@torch.no_grad()
def logits_error(path: Path, model, prompts: list[list[int]], threads: int) -> float:
    """Max |llama.cpp - chuan| of the last prompt position's logits, over the prompts."""
    llm = open_llama(path, threads, logits_all=True)
    worst = 0.0
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        theirs = np.asarray(llm.scores[len(prompt) - 1])
        ours = model(input_ids=torch.tensor([prompt])).logits[0, -1].numpy()
        worst = max(worst, float(np.abs(theirs - ours).max()))
    return worst


def fidelity_table(files: dict[str, Path], model, prompts, new_tokens: int, threads: int) -> str:
    eos = model.config.eos_token_id
    reference = [chuan_greedy(model, p, new_tokens, eos) for p in prompts]
    lines = [
        "| GGUF | made by | max abs logit diff vs chuan fp32 | llama.cpp greedy = chuan fp32 "
        "(mean common prefix) | llama.cpp tokens/s | chuan at the same bits: greedy = fp32 "
        "(prefix), tokens/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, path in files.items():
        made_by, spec = FILES[name]
        llm = open_llama(path, threads)
        theirs = [timed(llama_greedy, llm, p, new_tokens, eos) for p in prompts]
        ours = quantized(model, spec)
        mine = [timed(chuan_greedy, ours, p, new_tokens, eos) for p in prompts]
        label = "fp32" if spec is None else f"int{spec.bits}"
        lines.append(
            f"| {name} | {made_by} | {logits_error(path, model, prompts, threads):.2e} | "
            f"{_agreement(theirs, reference)} | {_rate(theirs):,.0f} | "
            f"{label}: {_agreement(mine, reference)}, {_rate(mine):,.0f} |"
        )
    return "\n".join(lines)


def _agreement(runs: list[tuple[list[int], float]], reference: list[list[int]]) -> str:
    same = sum(tokens == ref for (tokens, _), ref in zip(runs, reference, strict=True))
    prefix = np.mean([common_prefix(t, r) for (t, _), r in zip(runs, reference, strict=True)])
    return f"{same}/{len(runs)} ({prefix:.1f})"


def _rate(runs: list[tuple[list[int], float]]) -> float:
    return sum(len(t) for t, _ in runs) / sum(s for _, s in runs)


def tokenizer_table(gguf_file: Path, model_dir: Path, lines: list[str], threads: int) -> str:
    from llama_cpp import Llama

    vocab = Llama(model_path=str(gguf_file), vocab_only=True, verbose=False, n_threads=threads)
    tokenizer = load_saved_tokenizer(model_dir)
    same = sum(
        vocab.tokenize(line.encode(), add_bos=False, special=False)
        == tokenizer.encode(line, add_special_tokens=False)
        for line in lines
    )
    return "\n".join(
        [
            "| lines | identical ids (llama.cpp vs chuan tokenizer) |",
            "|---:|---:|",
            f"| {len(lines)} | {same} ({same / len(lines):.1%}) |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps, prompts and tokens")
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    args = parser.parse_args()
    steps, n_prompts, new_tokens = (30, 2, 16) if args.quick else (args.steps, 8, 64)
    threads = torch.get_num_threads()
    import llama_cpp

    print(
        f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, {threads} "
        "threads; timings are noisy on a shared machine\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = train_small_model(root, steps=steps)
        model = load_model(model_dir, device="cpu", dtype="fp32")
        ids = held_out_ids(model_dir, 4096)
        prompts = [ids[i * 256 : i * 256 + PROMPT_TOKENS] for i in range(n_prompts)]
        files = write_gguf_files(model_dir, root)
        print(f"## llama.cpp on chuan's GGUF export: {n_prompts} held-out prompts, ", end="")
        print(f"greedy {new_tokens} tokens\n")
        print(fidelity_table(files, model, prompts, new_tokens, threads) + "\n")
        held = [d["text"] for d in bible_documents(7000)[-200:]]
        print("## Tokenizer embedded in the GGUF (held-out KJV / CUV documents)\n")
        print(tokenizer_table(files["f32"], model_dir, held, threads))


if __name__ == "__main__":
    main()
