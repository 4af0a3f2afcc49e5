"""ChatHome's data-mixing claim at CPU scale: domain:general ratio against held-out losses.

ChatHome (Wen et al. 2023, arXiv:2307.15290) fine-tunes a domain model on its domain
instructions mixed with general instructions and reports domain:general = 1:5 as the best
trade-off: the domain skill is kept while general ability is not forgotten. This script runs
the same experiment on two CPU cores with `chuan sft`'s own mixing (`stages[].data[].weight`):

- domain: the bundled zh<->en translation set (`src/chuan/assets/sft/translate_zh_en.jsonl`),
  `--holdout` conversations held out (seeded) for the domain held-out loss;
- general: the Alpaca demo sets, English and Chinese (`../shared/data/sft/alpaca_*_demo.json`),
  `--holdout` held out (half from each language) for the general held-out loss;
- the model: a `tiny` Baichuan 2-style model (RoPE, NormHead) pretrained here for
  `--pretrain-steps` on the bundled sample corpus (`src/chuan/assets/sample/`, Bible zh/en,
  classical poetry, Botchan), with a tokenizer trained on that corpus and the SFT training
  texts (never the held-out ones);
- one full fine-tune per ratio 1:0, 1:1, 1:5, 1:10 from that same pretrained model, each for
  the same number of passes over the domain data (`--epochs`; a stage's `epochs` counts passes
  over its mixed rows, and every mixture holds the whole domain set once), so every run sees
  each domain conversation equally often and the general data comes on top. The general
  conversations are drawn without replacement and repeat only when the mixture needs more
  than the ~1,900 there are (1:10 takes each about 4.7 times).

Held-out loss is the token-mean cross-entropy over assistant tokens only (the answers and
their end tokens, exactly the positions `chuan sft` trains), computed from each run's saved
`OUT/model` on rows built with `chuan.align.sft_data` (packed; segment ids keep the
conversations apart, so packing does not change a conversation's loss).

    python benchmarks/bench_sft_mix.py                  # about 12 minutes on 2 cores
    python benchmarks/bench_sft_mix.py --quick          # smoke run, about 2 minutes
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOMAIN = REPO / "src" / "chuan" / "assets" / "sft" / "translate_zh_en.jsonl"
GENERAL = [
    REPO.parent / "shared" / "data" / "sft" / "alpaca_en_demo.json",
    REPO.parent / "shared" / "data" / "sft" / "alpaca_zh_demo.json",
]
SAMPLE_CORPUS = REPO / "src" / "chuan" / "assets" / "sample"
SEED = 1234
TEMPLATE = "baichuan2"


def read_alpaca(path: Path) -> list[dict]:
    """Alpaca records (`.json` array or `.jsonl`), keeping only the alpaca fields."""
    text = path.read_text(encoding="utf-8")
    records = (
        json.loads(text)
        if text.lstrip().startswith("[")
        else [json.loads(line) for line in text.splitlines() if line.strip()]
    )
    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in records]


def split(records: list[dict], holdout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, held out): `holdout` records drawn seeded; both keep the file order."""
    import numpy as np

    chosen = set(np.random.default_rng(seed).permutation(len(records))[:holdout].tolist())
    kept = [r for i, r in enumerate(records) if i not in chosen]
    held = [r for i, r in enumerate(records) if i in chosen]
    return kept, held


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for r in records:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def prepare_data(work: Path, holdout: int) -> dict[str, Path | int]:
    """The four SFT files (domain / general x train / held out) and the tokenizer corpus."""
    domain_train, domain_held = split(read_alpaca(DOMAIN), holdout, SEED)
    general_train, general_held = [], []
    for index, path in enumerate(GENERAL):
        if not path.is_file():
            sys.exit(f"missing general SFT data {path} (the Alpaca demo sets in ../shared/data)")
        kept, held = split(read_alpaca(path), holdout // len(GENERAL), SEED + 1 + index)
        general_train += kept
        general_held += held
    files = {
        "domain_train": write_jsonl(work / "data" / "domain_train.jsonl", domain_train),
        "domain_heldout": write_jsonl(work / "data" / "domain_heldout.jsonl", domain_held),
        "general_train": write_jsonl(work / "data" / "general_train.jsonl", general_train),
        "general_heldout": write_jsonl(work / "data" / "general_heldout.jsonl", general_held),
    }
    corpus = work / "data" / "tokenizer_corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as out:
        for path in sorted(glob.glob(str(SAMPLE_CORPUS / "*.jsonl"))):
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                text = json.loads(line)["text"]
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        for r in domain_train + general_train:
            text = "\n".join(r[k] for k in ("instruction", "input", "output") if r[k])
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    files["tokenizer_corpus"] = corpus
    return files


def pretrain_base(work: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """A tokenizer and a `tiny` model pretrained on the bundled sample corpus."""
    from chuan.config import from_dict
    from chuan.data.pack import pack_corpus
    from chuan.tokenizer.train import train_tokenizer
    from chuan.train.config import PretrainConfig
    from chuan.train.loop import pretrain

    tokenizer = work / "tok"
    train_tokenizer(
        work / "data" / "tokenizer_corpus.jsonl",
        tokenizer,
        vocab_size=args.vocab_size,
        progress=False,
    )
    packed = work / "packed"
    pack_corpus([SAMPLE_CORPUS], tokenizer, packed, max_length=256, seed=SEED, progress=False)
    config = {
        "out": str(work / "pretrain"),
        "preset": args.preset,
        "tokenizer": str(tokenizer),
        "seed": SEED,
        "micro_batch_size": 8,
        "precision": "fp32",
        "device": "cpu",
        "optim": {
            "lr": 3e-3,
            "warmup_steps": max(1, args.pretrain_steps // 10),
            "min_lr_ratio": 0.1,
        },
        "checkpoint": {"every": args.pretrain_steps + 1, "keep": 1},
        "log": {"every": 10, "tensorboard": False, "progress": False},
        "stages": [{"data": [str(packed)], "steps": args.pretrain_steps}],
    }
    result = pretrain(from_dict(PretrainConfig, config))
    return result.model_dir, {"final_loss": result.final_loss, "tokens": result.tokens}


def sft_run(work: Path, base: Path, files: dict, ratio: float, args: argparse.Namespace) -> dict:
    """One `chuan sft` run at domain:general = 1:ratio; returns its report numbers."""
    from chuan.align.sft import sft
    from chuan.align.sft_config import SFTConfig
    from chuan.config import from_dict

    if ratio:
        data = [
            {"path": str(files["domain_train"]), "weight": 1},
            {"path": str(files["general_train"]), "weight": ratio},
        ]
    else:
        data = [{"path": str(files["domain_train"])}]
    out = work / f"sft-1to{ratio:g}"
    config = {
        "out": str(out),
        "model": str(base),
        "template": TEMPLATE,
        "seed": SEED,
        "finetune": "full",
        "max_length": args.max_length,
        "packing": True,
        "micro_batch_size": args.micro_batch,
        "grad_accum": 1,
        "precision": "fp32",
        "device": "cpu",
        "optim": {"lr": args.lr},  # Baichuan 2's SFT optimizer otherwise: constant, no warmup
        "eval": {"holdout": 0},
        "samples": {"prompts": 0},
        "checkpoint": {"every": 10**9, "keep": 1},
        "log": {"every": 10, "tensorboard": False, "progress": False},
        "stages": [{"data": data, "epochs": args.epochs}],
    }
    start = time.perf_counter()
    result = sft(from_dict(SFTConfig, config))
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    mixed = report["data"]["mixed"]
    return {
        "ratio": ratio,
        "model_dir": str(result.model_dir),
        "steps": result.steps,
        "tokens": result.tokens,
        "domain_samples": mixed.get(str(files["domain_train"]), 0),
        "general_samples": mixed.get(str(files["general_train"]), 0),
        "dropped_too_long": report["data"]["dropped_too_long"],
        "final_loss": result.final_loss,
        "seconds": seconds,
        "tokens_per_s": report["tokens_per_s"],
    }


def heldout_loss(model_dir: str | Path, path: Path, args: argparse.Namespace) -> dict:
    """Token-mean CE over the assistant tokens of the conversations in `path`."""
    import torch

    from chuan.align.sft_config import DataSource
    from chuan.align.sft_data import SFTDataStats, encode_fitting, read_source, to_rows
    from chuan.infer.loading import load_model
    from chuan.tokenizer.chat_templates import get_template
    from chuan.tokenizer.hf import load_tokenizer

    template = get_template(TEMPLATE, load_tokenizer(model_dir))
    stats = SFTDataStats()
    conversations = read_source(DataSource(path=str(path)), stats)
    encoded = encode_fitting(
        template, conversations, args.max_length, mask_history=False, stats=stats
    )
    rows = to_rows([e for _, e in encoded], args.max_length, packing=True, shuffle=False, seed=0)
    model = load_model(model_dir, device="cpu", dtype="fp32")
    model.eval()
    total, labels = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), args.micro_batch):
            batch = rows.batch(range(start, min(start + args.micro_batch, len(rows))))
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                labels=batch.labels,
                loss_reduction="sum",
                use_cache=False,
            )
            total += float(out.ce_loss)
            labels += batch.num_labels
    return {"loss": total / labels, "conversations": len(encoded), "tokens": labels}


def plot(rows: list[dict], base: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"1:{r['ratio']:g}" for r in rows]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, name, color in (
        ("domain", "domain held-out (translation)", "tab:blue"),
        ("general", "general held-out (Alpaca zh/en)", "tab:orange"),
    ):
        ax.plot(x, [r[key]["loss"] for r in rows], "o-", color=color, label=name)
        ax.axhline(
            base[key]["loss"],
            color=color,
            linestyle=":",
            linewidth=1,
            label=f"{name.split(' ')[0]}, before SFT",
        )
    ax.set_xticks(x, labels)
    ax.set_xlabel("domain : general mixing ratio")
    ax.set_ylabel("held-out loss, assistant tokens (nats)")
    ax.set_title("chuan sft: data mixing on a tiny model (2 CPU cores)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Held-out domain and general loss of `chuan sft` runs at domain:general "
        "mixing ratios (ChatHome's 1:5 claim at CPU scale); prints a table, writes a plot.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps")
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[0, 1, 5, 10],
        help="general samples per domain sample (default 0 1 5 10)",
    )
    parser.add_argument("--holdout", type=int, default=100, help="held-out conversations (100)")
    parser.add_argument("--preset", default="tiny", help="model preset (tiny)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="tokenizer size (8000)")
    parser.add_argument(
        "--pretrain-steps", type=int, default=400, help="pretraining steps of 8x256 (400)"
    )
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over domain data (1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SFT learning rate (1e-3)")
    parser.add_argument("--max-length", type=int, default=512, help="SFT max length (512)")
    parser.add_argument("--micro-batch", type=int, default=4, help="SFT rows per step (4)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("docs/sft_mix.png"),
        help="the plot (default docs/sft_mix.png, beside the other benchmark plots)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write all results to PATH")
    parser.add_argument("--workdir", help="where the temporary files go (default: system temp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.epochs = 40, 0.25
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    import warnings
    from importlib.metadata import version

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print("# chuan sft data-mixing benchmark\n")
    print(
        f"- torch {version('torch')}, transformers {version('transformers')}, "
        f"{len(os.sched_getaffinity(0))} cores (torch threads = {args.threads})"
    )
    with tempfile.TemporaryDirectory(prefix="bench_sft_mix-", dir=args.workdir) as tmp:
        work = Path(tmp)
        files = prepare_data(work, args.holdout)
        t0 = time.perf_counter()
        base, pre = pretrain_base(work, args)
        pretrain_s = time.perf_counter() - t0
        print(
            f"- base: preset {args.preset}, pretrained {args.pretrain_steps} steps "
            f"({pre['tokens']:,} tokens, final loss {pre['final_loss']:.3f}) in {pretrain_s:.0f} s"
        )
        base_eval = {
            key: heldout_loss(base, files[f"{key}_heldout"], args) for key in ("domain", "general")
        }
        rows = []
        for ratio in args.ratios:
            print(f"running 1:{ratio:g} ...", end=" ", file=sys.stderr, flush=True)
            row = sft_run(work, base, files, ratio, args)
            for key in ("domain", "general"):
                row[key] = heldout_loss(row["model_dir"], files[f"{key}_heldout"], args)
            print(f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)
            rows.append(row)
    print(
        f"- SFT: full fine-tune, {args.epochs:g} passes over the domain data, max length "
        f"{args.max_length}, packed, {args.micro_batch} rows per step, lr {args.lr:g} constant, "
        f"AdamW (0.9, 0.98)"
    )
    d, g = base_eval["domain"], base_eval["general"]
    print(
        f"- held out: {d['conversations']} domain conversations ({d['tokens']:,} assistant "
        f"tokens), {g['conversations']} general ({g['tokens']:,} assistant tokens)\n"
    )
    best_domain = min(r["domain"]["loss"] for r in rows)
    best_general = min(r["general"]["loss"] for r in rows)
    table = [
        ["before SFT (pretrained base)", "–", "–", "–", f"{d['loss']:.4f}", f"{g['loss']:.4f}", "–"]
    ]
    for r in rows:
        dom, gen = r["domain"]["loss"], r["general"]["loss"]
        table.append(
            [
                f"1:{r['ratio']:g}",
                f"{r['domain_samples']:,} + {r['general_samples']:,}",
                f"{r['steps']:,}",
                f"{r['tokens']:,}",
                f"**{dom:.4f}**" if dom == best_domain else f"{dom:.4f}",
                f"**{gen:.4f}**" if gen == best_general else f"{gen:.4f}",
                f"{r['seconds']:.0f}",
            ]
        )
    headers = [
        "domain:general",
        "conversations (domain + general)",
        "steps",
        "tokens trained",
        "domain held-out loss",
        "general held-out loss",
        "seconds",
    ]
    print(markdown_table(headers, table))
    plot(rows, base_eval, args.plot)
    wall = time.perf_counter() - started
    print(f"\nPlot: {args.plot}. Total wall time: {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "pretrain": pre,
                    "base": base_eval,
                    "runs": rows,
                    "wall_seconds": wall,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
