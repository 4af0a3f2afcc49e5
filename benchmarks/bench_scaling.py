"""Scaling law on a CPU: a sweep of model sizes over two orders of magnitude of compute, the fit
of L(C) = a * C^b + L_inf, and the prediction of the largest model's loss from the others.

Baichuan 2 fitted this law on seven small models and predicted its 7B and 13B losses (Baichuan 2
technical report, arXiv:2309.10305, §2.7). This is the same procedure at CPU scale with
`chuan scaling sweep` and `chuan scaling fit`: the sizes of `configs/scaling-cpu.yaml` (ffn = 3 x
hidden, one recipe, the same seed and row order), each trained on a fixed number of tokens per
non-embedding parameter, then the fit on every run, and the held-out check: fit without the
largest-compute run, predict its final held-out loss (goal: within 2%).

Side by side, on the same runs and the same held-out run, what users would pick instead:
- a pure power law L = a * C^b, a straight line in log-log (`numpy.polyfit`), the form without
  an irreducible loss;
- a first `scipy.optimize.curve_fit` of a * C^b + c with its defaults (p0 = 1, 1, 1, no bounds).

The corpus is the Old Testament (929 chapters) in English (KJV) and Chinese (CUV, simplified)
from `../shared/data/text/parallel/bible_kjv_cuvs_wenli.tsv` (public domain), one document per
chapter and language, with a 4,000-piece tokenizer and 128-token rows (about 1.75 M tokens; the
last 256 rows are held out). It is written to `runs/scaling-cpu/{corpus.jsonl,tokenizer,packed}`,
where the config expects it, so `chuan scaling sweep --config configs/scaling-cpu.yaml` works
after a first run of this script.

    python benchmarks/bench_scaling.py --pilot 3     # the 3 smallest sizes + a time estimate
    python benchmarks/bench_scaling.py               # the whole sweep (resumable), fit, PNG

Runs are never repeated: the pilot's runs are the first runs of the whole sweep, and an
interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench_model import cpu_name, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BIBLE = Path("text") / "parallel" / "bible_kjv_cuvs_wenli.tsv"
WORK = Path("runs/scaling-cpu")
VOCAB_SIZE = 4000  # the 2,876 Han characters of the OT (coverage 0.9999) + 768 reserved + merges
MAX_LENGTH = 128
RATE_STEPS = 8  # steps timed per size for the time estimate


def chapter_documents(tsv: Path) -> list[dict]:
    """One document per chapter and language: verses joined, English with spaces."""
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv} not found; pass --data (see ../shared/data/README.md)")
    chapters: dict[str, tuple[list[str], list[str]]] = {}
    for number, line in enumerate(tsv.read_text(encoding="utf-8").splitlines()[1:], start=2):
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"{tsv}:{number}: expected ref, en_kjv, zh_cuv_simplified columns")
        english, chinese = chapters.setdefault(fields[0].rsplit(":", 1)[0], ([], []))
        english.append(fields[1])
        chinese.append(fields[2])
    docs = []
    for english, chinese in chapters.values():
        docs.append({"text": " ".join(v for v in english if v), "category": "en"})
        docs.append({"text": "".join(v for v in chinese if v), "category": "zh"})
    return docs


def prepare_data(data: Path, work: Path) -> tuple[Path, Path]:
    """The corpus, its tokenizer and packed rows under `work` (made once, then reused)."""
    from chuan.data.pack import pack_corpus
    from chuan.tokenizer.train import train_tokenizer

    tokenizer, packed = work / "tokenizer", work / "packed"
    if not (packed / "dataset_info.json").is_file():
        from chuan.fileio import write_atomic

        corpus = work / "corpus.jsonl"
        docs = chapter_documents(data / BIBLE)
        write_atomic(corpus, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        train_tokenizer(corpus, tokenizer, vocab_size=VOCAB_SIZE, progress=False, overwrite=True)
        pack_corpus([corpus], tokenizer, packed, max_length=MAX_LENGTH, overwrite=True)
    return tokenizer, packed


def load_config(args: argparse.Namespace):
    """The recipe of `--config` on the data of `--work` (made first if need be)."""
    from chuan.scaling.sweep import load_sweep_config

    tokenizer, packed = prepare_data(args.data, args.work)
    overrides = [f"data=[{packed}]", f"base.tokenizer={tokenizer}", f"out={args.work / 'sweep'}"]
    return load_sweep_config(args.config, overrides)


def median_rate(run_dir: Path) -> float:
    """Median training tokens/s of a run's logged steps after the first two (warm-up)."""
    from chuan.train.metrics import read_metrics

    rates = [
        r["tokens_per_s"]
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r.get("step", 0) > 2 and "tokens_per_s" in r
    ]
    return float(np.median(rates))


def step_rate(run, scratch: Path, steps: int = RATE_STEPS) -> float:
    """Tokens/s of a run's exact recipe, timed over a few steps in a scratch dir."""
    from chuan.train.loop import pretrain

    out = scratch / run.name
    shutil.rmtree(out, ignore_errors=True)
    stage = replace(run.config.stages[0], steps=steps)
    pretrain(replace(run.config, out=str(out), stages=[stage]))
    rate = median_rate(out)
    shutil.rmtree(out)
    return rate


def estimate(full, rows: list[dict], scratch: Path) -> tuple[list[list], float]:
    """Seconds per run of the whole sweep, and the CPU seconds per wall second meanwhile.

    Measured where a run finished; otherwise its tokens at the rate of a few timed steps of its
    recipe, plus the finished runs' median overhead (model set-up, held-out loss, checkpoint,
    report). On a busy machine, CPU time / wall time while timing, against the threads used,
    says how much faster idle cores would be.
    """
    from chuan.scaling.sweep import plan_sweep

    plan = plan_sweep(full)
    done = {r["name"]: r for r in rows}
    runs_dir = Path(full.out) / "runs"
    overhead = float(
        np.median(
            [r["wall_seconds"] - r["tokens"] / median_rate(runs_dir / r["name"]) for r in rows]
        )
    )
    table, total = [], 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for run in plan.runs:
        if run.name in done:
            seconds, source = done[run.name]["wall_seconds"], "measured"
        else:
            rate = step_rate(run, scratch)
            seconds, source = run.tokens / rate + overhead, f"estimated ({rate:,.0f} tokens/s)"
        total += seconds
        table.append([run.name, f"{run.params:,}", f"{run.tokens:,}", f"{seconds:,.0f}", source])
    table.append(["**total**", "", "", f"**{total:,.0f}** ({total / 60:.1f} min)", ""])
    return table, (time.process_time() - cpu) / (time.perf_counter() - wall)


def pure_power_law(flops: np.ndarray, loss: np.ndarray):
    """log L = log a + b log C by least squares: `numpy.polyfit` on logs."""
    b, log_a = np.polyfit(np.log(flops), np.log(loss), 1)
    return lambda c: np.exp(log_a + b * np.log(c)), {"b": b, "l_inf": None}


def naive_curve_fit(flops: np.ndarray, loss: np.ndarray):
    """`curve_fit(lambda c, a, b, l: a * c**b + l, C, L)` with scipy's defaults."""
    from scipy.optimize import OptimizeWarning, curve_fit

    def law(c, a, b, l_inf):
        return a * c**b + l_inf

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        (a, b, l_inf), _ = curve_fit(law, flops, loss)
    return lambda c: law(np.asarray(c, dtype=float), a, b, l_inf), {"b": b, "l_inf": l_inf}


def compare_fits(points) -> list[list]:
    """chuan's fit and the two alternatives, each fitted on the frontier without the
    largest-compute run and asked for that run's loss."""
    from chuan.scaling.fit import holdout_largest

    check = holdout_largest(points)
    held = check.held_out
    c = np.array([p.flops for p in check.frontier])
    y = np.array([p.loss for p in check.frontier])

    def row(method: str, predict, params: dict) -> list:
        fitted = predict(c)
        r2 = 1 - np.sum((y - fitted) ** 2) / np.sum((y - y.mean()) ** 2)
        guess = float(predict(held.flops))
        error = (guess - held.loss) / held.loss
        l_inf = "—" if params["l_inf"] is None else f"{params['l_inf']:.3f}"
        return [
            method,
            f"{params['b']:.4f}",
            l_inf,
            f"{r2:.4f}",
            f"{guess:.4f}",
            f"{held.loss:.4f}",
            f"**{error:+.2%}**" if math.isfinite(error) else "n/a",
        ]

    fit = check.fit
    rows = [row("chuan: a·C^b + L∞, bounded, log-log start", fit.predict, fit.to_dict())]
    rows.append(row("pure power law a·C^b (log-log line)", *pure_power_law(c, y)))
    try:
        rows.append(row("curve_fit(a·C^b + c), defaults", *naive_curve_fit(c, y)))
    except (RuntimeError, ValueError) as err:
        rows.append(["curve_fit(a·C^b + c), defaults", "fails", "", "", "", "", str(err)])
    return rows


def runs_table(rows: list[dict]) -> list[list]:
    return [
        [
            r["name"],
            f"{r['params']:,}",
            f"{r['tokens']:,}",
            f"{r['flops']:.3g}",
            f"{r['epochs']:.2f}",
            f"{r['train_loss']:.4f}",
            f"{r['eval_loss']:.4f}",
            f"{r['wall_seconds']:,.0f}",
        ]
        for r in rows
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the scaling sweep of configs/scaling-cpu.yaml on a CPU, fit "
        "L(C) = a*C^b + L_inf, predict the largest run from the others and compare the fit "
        "with a pure power law and a default curve_fit; writes docs/scaling.png.",
    )
    parser.add_argument(
        "--config", type=Path, default=Path("configs/scaling-cpu.yaml"), help="sweep recipe"
    )
    parser.add_argument(
        "--work", type=Path, default=WORK, help=f"data and sweep dir (default {WORK})"
    )
    parser.add_argument("--data", type=Path, default=DATA, help=f"shared data (default {DATA})")
    parser.add_argument(
        "--pilot",
        type=int,
        metavar="K",
        help="train only the K smallest sizes and estimate the whole sweep's time",
    )
    parser.add_argument(
        "--png", type=Path, default=Path("docs/scaling.png"), help="the plot (docs/scaling.png)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's, every core; the estimate in docs/scaling.md was "
        "taken with 1)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from chuan.scaling.fit import fit_sweep, read_runs
    from chuan.scaling.sweep import run_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    full = load_config(args)
    config = replace(full, sizes=full.sizes[: args.pilot]) if args.pilot else full
    started = time.perf_counter()
    result = run_sweep(config)
    wall = time.perf_counter() - started
    if result.interrupted:
        sys.exit("interrupted; run the same command again to continue")
    threads = torch.get_num_threads()
    print(f"\n## Scaling sweep on a CPU ({cpu_name()}, {threads} torch thread(s))\n")
    headers = ["run", "N (non-emb)", "D tokens", "C = 6ND", "epochs", "train loss"]
    headers += ["held-out loss", "wall s"]
    print(markdown_table(headers, runs_table(result.rows)))
    trained = sum(r["wall_seconds"] for r in result.rows)
    print(
        f"\nTraining time of the runs: {trained:,.0f} s ({trained / 60:.1f} min); this call "
        f"{wall:,.0f} s ({result.skipped} runs were already finished)."
    )
    if args.pilot:
        print("\n## Time estimate of the whole sweep\n")
        table, cpu_per_wall = estimate(full, result.rows, args.work / "rate")
        share = min(cpu_per_wall / threads, 1.0)
        print(markdown_table(["run", "N", "D", "seconds", ""], table))
        total = sum(float(row[3].replace(",", "")) for row in table[:-1])
        print(
            f"\nWhile timing, this process got {share:.0%} of its {threads} core(s); on idle "
            f"cores the sweep would take about {total * share / 60:.1f} min."
        )
        return
    csv_path = Path(config.out) / "runs.csv"
    report = fit_sweep(csv_path, holdout=True, title="chuan scaling sweep on a CPU")
    shutil.copyfile(report["png"], args.png)
    f = report["fit"]
    print(
        f"\nFit on all {len(report['frontier'])} frontier runs: L(C) = {f['a']:.4g}·C^"
        f"({f['b']:.4f} ± {f['stderr']['b'] or math.nan:.4f}) + {f['l_inf']:.4f}, "
        f"R² {f['r2']:.4f}\n"
    )
    print("## Predicting the largest run from the others\n")
    headers = ["method", "b", "L∞", "R² (fit points)", "predicted", "actual", "error"]
    print(markdown_table(headers, compare_fits(read_runs(csv_path))))
    print(f"\nPlot: {args.png}; report: {report['out']}/report.md")


if __name__ == "__main__":
    main()
