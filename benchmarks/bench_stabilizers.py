"""Baichuan 2's training stabilizers at tiny scale: NormHead on/off x max-z loss on/off.

The report's claims, checked on real text: the max-z loss (`2e-4 * z**2`, `z` the largest
logit) keeps the largest logit bounded, and NormHead (logits against row-normalised output
embeddings) does not hurt the loss. Four `tiny` models (the same seed, rows and schedule)
train through `chuan.train.loop.pretrain` at a learning rate high enough for logits to grow:

    NormHead + z-loss | NormHead only | z-loss only | neither

The corpus is bilingual: documents of five consecutive Old Testament verses in English (KJV)
or in Chinese (CUV, simplified) from `../shared/data/text/parallel/bible_kjv_cuvs_wenli.tsv`
(public domain). A tokenizer is trained on it with `chuan.tokenizer.train.train_tokenizer`,
the documents are packed with `chuan.data.pack.pack_corpus`, and the last rows are held out
for the held-out loss. Prints a markdown table and writes a PNG with two panels (training
and held-out loss against step; largest logit against step).

    PYTHONPATH=src python benchmarks/bench_stabilizers.py              # full run, ~4 minutes
    PYTHONPATH=src python benchmarks/bench_stabilizers.py --quick      # smoke run, < 1 minute
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_model import markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BIBLE = Path("text") / "parallel" / "bible_kjv_cuvs_wenli.tsv"
VERSES_PER_DOC = 5
SMOOTHING = 10  # steps in the moving average of the plotted training loss
Z_LOSS = 2e-4  # Baichuan 2's max-z loss weight


@dataclass(frozen=True)
class Variant:
    name: str
    norm_head: bool
    z_loss_weight: float


VARIANTS = (
    Variant("NormHead + z-loss", True, Z_LOSS),
    Variant("NormHead", True, 0.0),
    Variant("z-loss", False, Z_LOSS),
    Variant("neither", False, 0.0),
)


@dataclass(frozen=True)
class Settings:
    """Corpus and run size; `full` is the documented run, `quick` a smoke run."""

    verses: int
    vocab_size: int
    max_length: int
    batch: int
    steps: int
    eval_every: int
    holdout_rows: int


SETTINGS = {
    "full": Settings(
        verses=8000,
        vocab_size=4000,
        max_length=128,
        batch=8,
        steps=300,
        eval_every=25,
        holdout_rows=64,
    ),
    "quick": Settings(
        verses=1000,
        vocab_size=2000,
        max_length=64,
        batch=4,
        steps=10,
        eval_every=5,
        holdout_rows=8,
    ),
}


def bible_documents(tsv: Path, verses: int) -> list[dict]:
    """Documents of `VERSES_PER_DOC` consecutive verses, each once in English and in Chinese."""
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv} not found; pass --data (see ../shared/data/README.md)")
    lines = tsv.read_text(encoding="utf-8").splitlines()[1 : verses + 1]
    columns = []
    for number, line in enumerate(lines, start=2):
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"{tsv}:{number}: expected ref, en_kjv, zh_cuv_simplified columns")
        columns.append(fields[1:3])
    docs = []
    for start in range(0, len(columns), VERSES_PER_DOC):
        english, chinese = zip(*columns[start : start + VERSES_PER_DOC], strict=True)
        docs.append({"text": " ".join(english), "category": "en"})
        docs.append({"text": "".join(chinese), "category": "zh"})
    return docs


def prepare_corpus(data: Path, settings: Settings, work: Path) -> tuple[Path, Path]:
    """Write the documents, train a tokenizer on them and pack them; returns (tokenizer, packed)."""
    from chuan.data.pack import pack_corpus
    from chuan.tokenizer.train import train_tokenizer

    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as out:
        for doc in bible_documents(data / BIBLE, settings.verses):
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    train_tokenizer(corpus, work / "tokenizer", vocab_size=settings.vocab_size, progress=False)
    pack_corpus(
        [corpus],
        work / "tokenizer",
        work / "packed",
        max_length=settings.max_length,
        progress=False,
    )
    return work / "tokenizer", work / "packed"


def run_config(variant: Variant, args: argparse.Namespace, paths: tuple[Path, Path], out: Path):
    """The `PretrainConfig` of one variant; everything but the two stabilizers is shared."""
    from chuan.config import from_dict
    from chuan.train.config import PretrainConfig

    settings, (tokenizer, packed) = args.settings, paths
    return from_dict(
        PretrainConfig,
        {
            "out": str(out),
            "preset": "tiny",
            "tokenizer": str(tokenizer),
            "model_overrides": {"norm_head": variant.norm_head},
            "z_loss_weight": variant.z_loss_weight,
            "seed": args.seed,
            "micro_batch_size": settings.batch,
            "precision": "fp32",
            "optim": {"lr": args.lr, "warmup_steps": settings.steps // 10},
            "eval": {"holdout_rows": settings.holdout_rows, "every": settings.eval_every},
            "checkpoint": {"every": settings.steps + 1, "keep": 1},
            "log": {"every": 1, "tensorboard": False, "progress": False},
            "stages": [{"data": [str(packed)], "steps": settings.steps}],
        },
    )


def train_variant(
    variant: Variant, args: argparse.Namespace, paths: tuple[Path, Path], work: Path
) -> dict:
    """Train one variant; its curves and summary numbers from the run's metrics.jsonl."""
    from chuan.train.loop import pretrain
    from chuan.train.metrics import read_metrics

    print(f"training {variant.name} ...", file=sys.stderr, flush=True)
    out = work / variant.name.replace(" ", "").replace("+", "_")
    result = pretrain(run_config(variant, args, paths, out))
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "max_logit" in r]
    held = [r for r in records if "eval_loss" in r]
    last = train[-SMOOTHING:]
    return {
        "variant": variant.name,
        "norm_head": variant.norm_head,
        "z_loss_weight": variant.z_loss_weight,
        "steps": [r["step"] for r in train],
        "loss": [r["loss"] for r in train],
        "max_logit": [r["max_logit"] for r in train],
        "eval_steps": [r["step"] for r in held],
        "eval_loss": [r["eval_loss"] for r in held],
        "final_loss": sum(r["loss"] for r in last) / len(last),
        "heldout_loss": result.eval_loss,
        "final_max_logit": train[-1]["max_logit"],
        "peak_max_logit": max(r["max_logit"] for r in train),
    }


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values, so the first points are not dropped."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(runs: list[dict], png: Path) -> None:
    """Two panels: loss (smoothed training, and held-out dots) and the largest logit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chuan.fileio import atomic_file

    fig, (loss_ax, logit_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        style = "-" if run["norm_head"] else "--"
        (line,) = loss_ax.plot(
            run["steps"], moving_average(run["loss"], SMOOTHING), style, label=run["variant"]
        )
        loss_ax.plot(run["eval_steps"], run["eval_loss"], "o", color=line.get_color(), ms=3)
        logit_ax.plot(run["steps"], run["max_logit"], style, color=line.get_color(), lw=1)
    loss_ax.set_title(f"loss (lines: training, {SMOOTHING}-step mean; dots: held-out)")
    loss_ax.set_ylabel("cross-entropy (nats/token)")
    logit_ax.set_title("largest logit in the batch")
    logit_ax.set_ylabel("max logit")
    for ax in (loss_ax, logit_ax):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    loss_ax.legend()
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def print_table(runs: list[dict], args: argparse.Namespace) -> None:
    settings = args.settings
    print(
        f"\n## Stabilizers: tiny preset, {settings.steps} steps of {settings.batch}×"
        f"{settings.max_length} tokens, lr {args.lr:g} (cosine), {settings.holdout_rows} "
        "rows held out\n"
    )
    headers = [
        "variant",
        f"final loss (last {SMOOTHING} steps)",
        "held-out loss",
        "final max logit",
        "peak max logit",
    ]
    rows = [
        [
            run["variant"],
            f"{run['final_loss']:.4f}",
            f"{run['heldout_loss']:.4f}",
            f"{run['final_max_logit']:.2f}",
            f"{run['peak_max_logit']:.2f}",
        ]
        for run in runs
    ]
    print(markdown_table(headers, rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a tiny model with NormHead on/off x max-z loss on/off on real text; "
        "print a table and plot loss and the largest logit against step.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small corpus, 10 steps")
    parser.add_argument(
        "--png",
        type=Path,
        default=Path("docs/stabilizers.png"),
        help="where the plot goes (default docs/stabilizers.png)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write all results here")
    parser.add_argument(
        "--data", type=Path, default=DATA, help=f"the shared data dir (default {DATA})"
    )
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (default 1e-2)")
    parser.add_argument("--seed", type=int, default=7, help="model and data-order seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: as fast as two for this tiny model on two cores, and "
        "not stalled by other processes on a shared CPU)",
    )
    args = parser.parse_args(argv)
    args.settings = SETTINGS["quick" if args.quick else "full"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_stabilizers-") as tmp:
        work = Path(tmp)
        paths = prepare_corpus(args.data, args.settings, work)
        runs = [train_variant(variant, args, paths, work) for variant in VARIANTS]
    plot(runs, args.png)
    print_table(runs, args)
    print(f"\nPlot: {args.png}. Total wall time: {time.perf_counter() - started:.0f} s")
    if args.json:
        from chuan.fileio import write_atomic

        write_atomic(
            args.json, json.dumps({"settings": asdict(args.settings), "runs": runs}, indent=2)
        )


if __name__ == "__main__":
    main()
