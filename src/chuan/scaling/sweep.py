"""`chuan scaling sweep`: train a grid of model sizes x budgets with one recipe, for a scaling fit.

Baichuan 2 fitted its scaling law on seven models trained "with identical hyper-parameters and
data" (Baichuan 2 technical report, arXiv:2309.10305, §2.7). A sweep is that: one base
`chuan pretrain` recipe, and a grid of model shapes (`ffn = 3 * hidden` by default, as in
Baichuan 2's scaling models) times token budgets. Every run is one `chuan.train.loop.pretrain`
call whose schedule spans exactly its budget, with the same seed, so every run initialises from
the same seed and reads the same rows in the same order (a run of D tokens sees a prefix of what
a longer run sees).

Runs live under `OUT/runs/NAME/` (ordinary pretraining run dirs). A finished run leaves
`sweep_run.json` beside its report and is skipped when the sweep is run again; an interrupted
one resumes from its newest checkpoint. After every run `OUT/runs.csv` is rewritten
atomically, one row per finished run, which is what `chuan scaling fit` reads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from tqdm import tqdm

from chuan.config import ConfigError, from_dict, load_config, to_dict
from chuan.errors import InputError
from chuan.fileio import write_atomic, write_report
from chuan.train.config import PretrainConfig

CSV_COLUMNS = (
    "name",
    "hidden",
    "layers",
    "heads",
    "ffn",
    "params",
    "params_total",
    "tokens",
    "flops",
    "budget",
    "steps",
    "lr",
    "epochs",
    "train_loss",
    "eval_loss",
    "wall_seconds",
)
RUN_FILE = "sweep_run.json"  # written into a run dir once the run has finished
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# What a sweep sets in every run unless `base` says otherwise: no TensorBoard, no per-step
# progress bar under the sweep's own, every step logged (the train loss is averaged from them),
# and one checkpoint kept (enough to resume an interrupted run).
_BASE_DEFAULTS: dict[str, Any] = {
    "preset": "tiny",
    "log": {"every": 1, "tensorboard": False, "progress": False},
    "checkpoint": {"every": 500, "keep": 1},
}
_SWEEP_OWNED = ("out", "stages", "model")
_GRIDS = ("tokens", "tokens_per_param", "compute")


@dataclass
class ModelShape:
    """One model size of the grid. `ffn` defaults to `3 * hidden` (Baichuan 2's scaling models,
    not the 8/3 SwiGLU rule); `lr` overrides the base recipe's peak learning rate for it."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int | None = None
    lr: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"size name {self.name!r}: use letters, digits, '.', '_' and '-' (it names a dir)"
            )
        for key in ("hidden", "layers", "heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"size {self.name}: {key} must be at least 1")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ConfigError(
                f"size {self.name}: hidden {self.hidden} must split into {self.heads} heads of "
                "an even width"
            )
        if self.ffn is None:
            self.ffn = 3 * self.hidden

    def model_overrides(self) -> dict[str, int]:
        return {
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
        }


@dataclass
class SweepConfig:
    """A sweep: the base recipe, the packed data, the sizes and exactly one kind of budget grid.

    base: any `chuan pretrain` field except `out`, `stages` and `model` (the sweep sets those):
        `tokenizer` (required), `preset` (the base shape, default `tiny`), `model_overrides`,
        `seed`, `micro_batch_size`, `grad_accum`, `optim`, `eval` (held-out rows are required:
        the final held-out loss is what a scaling law fits), ...
    tokens: token budgets; every size trains on each.
    tokens_per_param: budgets as D = r * N per size (a fixed tokens-to-parameters ratio).
    compute: FLOP budgets; each size trains on D = C / (6 N) tokens.
    flops_params: the N of C = 6 N D: non-embedding parameters (Kaplan, Baichuan 2) or total.
    warmup_fraction: each run warms up for this fraction of its steps (None: `base.optim`).
    min_steps: grid points shorter than this many optimizer steps are left out (and listed).
    train_loss_window: the train loss of a run is the mean over this last fraction of its steps.
    """

    out: str
    data: list[str]
    sizes: list[ModelShape]
    base: dict[str, Any] = field(default_factory=dict)
    tokens: list[float] = field(default_factory=list)
    tokens_per_param: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    flops_params: Literal["non_embedding", "total"] = "non_embedding"
    warmup_fraction: float | None = 0.05
    min_steps: int = 10
    train_loss_window: float = 0.1
    progress: bool = True

    def __post_init__(self) -> None:
        grids = [k for k in _GRIDS if getattr(self, k)]
        if len(grids) != 1:
            raise ConfigError(
                "give exactly one budget grid: `tokens`, `tokens_per_param` or `compute` "
                f"(got {', '.join(grids) or 'none'})"
            )
        if any(v <= 0 for v in getattr(self, grids[0])):
            raise ConfigError(f"{grids[0]}: budgets must be positive")
        if not self.sizes:
            raise ConfigError("`sizes` is empty; give at least one model shape")
        names = [s.name for s in self.sizes]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ConfigError(f"sizes: the name {duplicate!r} is used twice")
        if not self.data:
            raise ConfigError("`data` is empty; give one or more packed dirs")
        owned = [k for k in _SWEEP_OWNED if k in self.base]
        if owned:
            raise ConfigError(f"base.{owned[0]}: set by the sweep for every run; remove it")
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise ConfigError("warmup_fraction must be in [0, 1)")
        if not 0 < self.train_loss_window <= 1:
            raise ConfigError("train_loss_window must be in (0, 1]")
        probe = self.base_recipe()
        if probe.tokenizer is None:
            raise ConfigError("base.tokenizer is required: it sets every model's vocabulary")
        if not (probe.eval.holdout_rows or probe.eval.data):
            raise ConfigError(
                "a sweep needs held-out rows (the fitted loss is the final held-out loss): set "
                "base.eval.holdout_rows or base.eval.data"
            )

    @property
    def grid(self) -> str:
        return next(k for k in _GRIDS if getattr(self, k))

    def base_recipe(self, **fields: Any) -> PretrainConfig:
        """The base recipe with the sweep's defaults, plus `fields` (deep-merged)."""
        stub = {"out": str(Path(self.out) / "runs" / "_"), "stages": [{"data": self.data}]}
        data = _merge(_merge(_merge(_BASE_DEFAULTS, self.base), stub), fields)
        return from_dict(PretrainConfig, data, prefix="base.")


def load_sweep_config(path: str | Path | None, overrides: list[str] = ()) -> SweepConfig:
    """Read a sweep YAML; `key=value` overrides address it by dotted path (`base.optim.lr=1e-3`)."""
    return load_config(SweepConfig, path, overrides)


def _merge(into: dict, update: dict) -> dict:
    """`into` updated by `update`, recursing into mappings both sides have."""
    merged = dict(into)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataInfo:
    """What the plan needs from the data: row length and how many tokens one pass trains on."""

    vocab_size: int
    row_length: int
    train_tokens: int


@dataclass
class PlannedRun:
    """One grid point: its shape, budget, length and the exact recipe it trains with."""

    name: str
    shape: ModelShape
    params: int
    params_total: int
    n_flops: int  # the N of C = 6 N D (`flops_params`)
    budget: float | None
    steps: int
    tokens: int  # steps x global batch x row length: the tokens its schedule spans
    flops: float
    epochs: float
    config: PretrainConfig


@dataclass
class SweepPlan:
    runs: list[PlannedRun]
    left_out: list[str]  # grid points shorter than `min_steps`, as messages
    data: DataInfo


def _data_info(cfg: SweepConfig, base: PretrainConfig) -> DataInfo:
    from chuan.model.checkpoint import tokenizer_vocab_size
    from chuan.train.data import load_packed

    datasets = [load_packed(path) for path in cfg.data]
    row_length = len(datasets[0][0]["input_ids"])
    rows = sum(len(d) for d in datasets)
    if base.eval.data is None:
        rows -= base.eval.holdout_rows  # held back from the first dataset (see the loop)
    return DataInfo(tokenizer_vocab_size(base.tokenizer), row_length, rows * row_length)


def _short(value: float) -> str:
    """3 significant digits with an SI suffix, for run names: 2.05e6 -> '2.05M'."""
    for power, suffix in ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10**power:
            return f"{value / 10**power:.3g}{suffix}"
    return f"{value:.3g}"


def _budget_tokens(cfg: SweepConfig, value: float, n_flops: int) -> tuple[float, str, float | None]:
    """(tokens wanted, name suffix, compute budget) of one grid value for a model of N params."""
    if cfg.grid == "tokens":
        return value, f"D{_short(value)}", None
    if cfg.grid == "tokens_per_param":
        return value * n_flops, f"r{value:g}", None
    return value / (6 * n_flops), f"C{_short(value)}", value


def plan_sweep(cfg: SweepConfig) -> SweepPlan:
    """Every run of the grid, cheapest first, with its recipe resolved and validated."""
    from chuan.model.presets import parameter_count, preset_config

    base = cfg.base_recipe()
    info = _data_info(cfg, base)
    per_step = base.micro_batch_size * base.grad_accum * info.row_length
    runs, left_out = [], []
    for shape in cfg.sizes:
        model = preset_config(
            base.preset,
            vocab_size=info.vocab_size,
            **{**base.model_overrides, **shape.model_overrides()},
        )
        params = parameter_count(model, non_embedding=True)
        params_total = parameter_count(model)
        n_flops = params if cfg.flops_params == "non_embedding" else params_total
        for value in getattr(cfg, cfg.grid):
            wanted, suffix, budget = _budget_tokens(cfg, value, n_flops)
            name = f"{shape.name}_{suffix}"
            steps = math.ceil(wanted / per_step)
            if steps < cfg.min_steps:
                left_out.append(
                    f"{name}: {wanted:,.0f} tokens is {steps} step(s) of {per_step:,} tokens, "
                    f"fewer than min_steps={cfg.min_steps}"
                )
                continue
            lr = shape.lr if shape.lr is not None else base.optim.lr
            optim: dict[str, Any] = {"lr": lr}
            if cfg.warmup_fraction is not None:
                optim["warmup_steps"] = max(1, round(cfg.warmup_fraction * steps))
            config = cfg.base_recipe(
                out=str(Path(cfg.out) / "runs" / name),
                model_overrides=shape.model_overrides(),
                stages=[{"name": "pretrain", "data": list(cfg.data), "steps": steps}],
                optim=optim,
            )
            tokens = steps * per_step
            runs.append(
                PlannedRun(
                    name=name,
                    shape=shape,
                    params=params,
                    params_total=params_total,
                    n_flops=n_flops,
                    budget=budget,
                    steps=steps,
                    tokens=tokens,
                    flops=6.0 * n_flops * tokens,
                    epochs=tokens / info.train_tokens,
                    config=config,
                )
            )
    if not runs:
        raise InputError(f"every grid point is shorter than min_steps={cfg.min_steps}")
    runs.sort(key=lambda r: (r.flops, r.name))
    return SweepPlan(runs, left_out, info)


def plan_table(plan: SweepPlan) -> str:
    """The plan as a markdown table, with the total compute."""
    lines = [
        "| run | hidden | layers | heads | ffn | params (non-emb) | tokens | steps | FLOPs (6ND) "
        "| epochs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in plan.runs:
        s = r.shape
        lines.append(
            f"| {r.name} | {s.hidden} | {s.layers} | {s.heads} | {s.ffn} | {r.params:,} | "
            f"{r.tokens:,} | {r.steps:,} | {r.flops:.3g} | {r.epochs:.2f} |"
        )
    total = sum(r.flops for r in plan.runs)
    lines.append("")
    lines.append(f"{len(plan.runs)} runs, {total:.3g} FLOPs (6ND) in all.")
    lines.extend(f"left out: {message}" for message in plan.left_out)
    return "\n".join(lines) + "\n"


# -- running ----------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out: Path
    rows: list[dict]  # one per finished run, in plan order
    trained: int  # runs trained (or finished) by this call
    skipped: int  # runs finished by an earlier call
    interrupted: bool
    left_out: list[str]
    signal: int | None = None  # what stopped an interrupted sweep; `chuan` exits 128 + it


def _without_out(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "out"}


def _first_difference(old: Any, new: Any, key: str = "") -> str | None:
    """The dotted key of the first difference between two plain config trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            found = _first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, f"{key}.{i}")
            if found:
                return found
        return None
    return None if old == new else f"{key}: {old!r} then, {new!r} now"


def _check_same_recipe(run: PlannedRun, run_dir: Path) -> None:
    """A run dir from an earlier sweep must hold this very recipe (the dir may have moved)."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    difference = _first_difference(_without_out(saved), _without_out(to_dict(run.config)))
    if difference:
        raise InputError(
            f"{run_dir} was trained with another recipe ({difference}); delete that dir, or "
            "give the sweep another `out`"
        )


def _train_loss(run_dir: Path, steps: int, window: float) -> float | None:
    """Mean training loss over the last `window` of the run's steps (the last step is noisy)."""
    from chuan.train.metrics import read_metrics

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "tokens_per_s" in r]
    last = [r["loss"] for r in records if r["step"] > (1 - window) * steps] or [
        r["loss"] for r in records[-1:]
    ]
    return sum(last) / len(last) if last else None


def _row(run: PlannedRun, result, wall: float, window: float, info: DataInfo) -> dict:
    s = run.shape
    return {
        "name": run.name,
        "hidden": s.hidden,
        "layers": s.layers,
        "heads": s.heads,
        "ffn": s.ffn,
        "params": run.params,
        "params_total": run.params_total,
        "tokens": result.tokens,
        "flops": 6.0 * run.n_flops * result.tokens,
        "budget": run.budget,
        "steps": result.steps,
        "lr": run.config.optim.lr,
        "epochs": result.tokens / info.train_tokens,
        "train_loss": _train_loss(result.run_dir, run.steps, window),
        "eval_loss": result.eval_loss,
        "wall_seconds": round(wall, 2),
    }


def _train(run: PlannedRun, cfg: SweepConfig, info: DataInfo) -> dict | int:
    """Train (or resume) one run; its CSV row, or the number of the signal that stopped it."""
    from chuan.train.loop import pretrain

    run_dir = Path(run.config.out)
    if run_dir.exists() and not (run_dir / "checkpoints").is_dir():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume
    start = time.perf_counter()
    result = pretrain(run.config, resume="auto")
    if result.interrupted:
        return result.signal or signal.SIGTERM
    row = _row(run, result, time.perf_counter() - start, cfg.train_loss_window, info)
    write_atomic(run_dir / RUN_FILE, json.dumps(row, indent=2))
    return row


def write_runs_csv(path: Path, rows: list[dict]) -> Path:
    """`runs.csv`, atomically: the columns of `CSV_COLUMNS`, empty cells for missing values."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return write_atomic(path, text.getvalue())


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Train every run of the plan not finished yet, cheapest first; write `OUT/runs.csv`.

    A SIGINT / SIGTERM stops the current run at a checkpoint and ends the sweep; calling it
    again continues where it stopped.
    """
    plan = plan_sweep(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "plan.md", plan_table(plan))
    rows: list[dict] = []
    trained = skipped = 0
    stopped_by = None
    bar = tqdm(
        total=sum(r.flops for r in plan.runs),
        unit="FLOP",
        unit_scale=True,
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    try:
        for i, run in enumerate(plan.runs, start=1):
            run_dir = Path(run.config.out)
            bar.set_description(f"run {i}/{len(plan.runs)} {run.name}")
            if (run_dir / "config.yaml").is_file():
                _check_same_recipe(run, run_dir)
            if (run_dir / RUN_FILE).is_file():
                rows.append(json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")))
                skipped += 1
            else:
                row = _train(run, cfg, plan.data)
                if isinstance(row, int):
                    stopped_by = row
                    break
                rows.append(row)
                trained += 1
                bar.write(
                    f"{run.name}: held-out loss {row['eval_loss']:.4f}, {row['wall_seconds']:.0f} s"
                )
            bar.update(run.flops)
            write_runs_csv(out / "runs.csv", rows)
    finally:
        bar.close()
    interrupted = stopped_by is not None
    result = SweepResult(out, rows, trained, skipped, interrupted, plan.left_out, stopped_by)
    _write_report(result, plan)
    return result


def _write_report(result: SweepResult, plan: SweepPlan) -> None:
    total_wall = sum(r["wall_seconds"] for r in result.rows)
    report = {
        "status": "interrupted" if result.interrupted else "finished",
        "runs_planned": len(plan.runs),
        "runs_finished": len(result.rows),
        "trained_now": result.trained,
        "skipped_finished": result.skipped,
        "left_out": result.left_out,
        "wall_seconds": total_wall,
        "runs_csv": str(result.out / "runs.csv"),
    }
    lines = [
        f"# Scaling sweep ({report['status']})",
        "",
        f"- {len(result.rows)} of {len(plan.runs)} runs finished ({result.trained} trained by "
        f"the last call, {result.skipped} skipped as finished); {total_wall:,.0f} s of training",
        f"- rows: `{result.out / 'runs.csv'}`; fit them with "
        f"`chuan scaling fit {result.out / 'runs.csv'} --holdout largest`",
        "",
        "| run | params (non-emb) | tokens | FLOPs | train loss | held-out loss | s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.rows:
        train = "n/a" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['tokens']:,} | {r['flops']:.3g} | {train} | "
            f"{r['eval_loss']:.4f} | {r['wall_seconds']:.0f} |"
        )
    lines.extend(["", *(f"- left out: {m}" for m in result.left_out)])
    write_report(result.out, report, "\n".join(lines).rstrip() + "\n")
