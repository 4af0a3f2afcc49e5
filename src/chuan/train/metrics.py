"""What a run tells its user: `metrics.jsonl`, TensorBoard scalars, MFU, and the loss-curve PNG."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from chuan.fileio import write_atomic

# Dense bf16 peaks (FLOP/s) of common accelerators, for MFU when `peak_flops` is not given.
_GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}


class MetricsLogger:
    """Appends one JSON line per record to `metrics.jsonl` and mirrors numbers to TensorBoard.

    Only the main rank writes; on other ranks every call is a no-op.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        # Held open for the run (closed by `close`), appended line by line.
        self._file = (
            open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if enabled
            else None
        )
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after `last_step`: a resumed run logs those steps again."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r["step"] <= last_step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 7) -> float:
    """FLOP/s of a square matmul on this device, the denominator of MFU on a CPU.

    The best of several short timings: other work on the machine only ever slows a timing
    down, so the fastest one is the closest to what the hardware can do.
    """
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, given: float | None) -> tuple[float, str]:
    """The MFU denominator and where it came from: the config, a known GPU, or measured."""
    if given:
        return given, "config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _GPU_PEAKS.items():
            if key in name:
                return value, f"{key} datasheet (dense bf16)"
    return measure_matmul_peak(
        device, dtype
    ), f"measured {str(dtype).removeprefix('torch.')} matmul"


def plot_losses(records: list[dict], out: Path) -> Path | None:
    """Training (and held-out) loss against step; None when there is nothing to plot."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if not train:
        return None
    lines = [(train, "train loss", "-")] + ([(held, "held-out loss", "o-")] if held else [])
    return _plot(lines, out, "optimizer step", "cross-entropy (nats/token)")


def plot_metrics(
    records: list[dict], keys: list[str], out: Path, *, xlabel: str, ylabel: str
) -> Path | None:
    """Each of `keys` (where logged) against step, on one set of axes; None when none is."""
    series = {k: [(r["step"], r[k]) for r in records if r.get(k) is not None] for k in keys}
    lines = [(points, key, "-") for key, points in series.items() if points]
    return _plot(lines, out, xlabel, ylabel) if lines else None


def _plot(lines: list[tuple[list, str, str]], out: Path, xlabel: str, ylabel: str) -> Path:
    """(points, label, format) lines on one set of axes, saved as a PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label, fmt in lines:
        ax.plot(*zip(*points, strict=False), fmt, label=label, linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
