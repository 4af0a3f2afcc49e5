"""`chuan scaling fit`: the compute-optimal frontier of a sweep and `L(C) = a * C^b + L_inf` on it.

Baichuan 2 fitted this form (Henighan et al. 2020) with `scipy.optimize.curve_fit` to the final
losses of seven small models and predicted its 7B and 13B models' losses (Baichuan 2 technical
report, arXiv:2309.10305, §2.7). chuan's own procedure:

- C = 6 N D (`flops` of `runs.csv`); the loss is the final held-out loss of each run.
- Frontier: runs are grouped by compute budget (runs of one `compute` grid value form a group;
  otherwise every run is its own group); each group contributes its lowest-loss run; of those, a
  run is on the frontier when its loss is lower than that of every group with less compute. The
  frontier is thus the lower envelope of loss against compute, falling as compute grows.
- Fit `L = exp(log_a) * C^b + L_inf` with bounds `b < 0` and `0 <= L_inf < min(L)`, started
  from a straight-line fit of `log(L - 0.9 min L)` against `log C`. Compute is divided by its
  geometric mean while fitting (conditioning), and the covariance is carried back to
  (log_a, b, L_inf); standard errors are the square roots of its diagonal.
- Held-out check: fit without the largest-compute group and predict its loss.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chuan.errors import InputError
from chuan.fileio import write_report

MIN_POINTS = 3  # three parameters
_B_MAX = -1e-9  # `b < 0`: curve_fit's bounds are closed
PNG_NAME = "scaling.png"


class ScalingFitError(ValueError):
    """Too few frontier points, or a fit that does not converge; the message says which."""


@dataclass(frozen=True)
class RunPoint:
    """One row of `runs.csv`: what the frontier and the fit need."""

    name: str
    flops: float
    loss: float
    budget: float | None = None
    params: float | None = None
    line: int = 0


def _number(text: str, where: str, column: str, *, optional: bool = False) -> float | None:
    text = (text or "").strip()
    if not text:
        if optional:
            return None
        raise InputError(f"{where}: column '{column}' is empty")
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: column '{column}': {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: column '{column}' must be a positive number, got {text}")
    return value


def read_runs(path: str | Path, loss_column: str = "eval_loss") -> list[RunPoint]:
    """The runs of a `runs.csv` (any CSV with `name`, `flops` and the loss column works)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in ("name", "flops", loss_column) if c not in columns]
        if missing:
            raise InputError(
                f"{path}: no column '{missing[0]}' (columns: {', '.join(columns) or 'none'})"
            )
        points = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            points.append(
                RunPoint(
                    name=row["name"],
                    flops=_number(row["flops"], where, "flops"),
                    loss=_number(row[loss_column], where, loss_column),
                    budget=_number(row.get("budget", ""), where, "budget", optional=True),
                    params=_number(row.get("params", ""), where, "params", optional=True),
                    line=reader.line_num,
                )
            )
    if not points:
        raise InputError(f"{path}: no runs (only a header)")
    return points


def _group_key(point: RunPoint) -> tuple:
    return ("budget", point.budget) if point.budget is not None else ("run", point.name)


def group_minima(points: Sequence[RunPoint]) -> list[RunPoint]:
    """The lowest-loss run of each compute budget (each run is its own budget without one)."""
    best: dict[tuple, RunPoint] = {}
    for p in points:
        key = _group_key(p)
        if key not in best or p.loss < best[key].loss:
            best[key] = p
    return list(best.values())


def frontier(points: Sequence[RunPoint]) -> list[RunPoint]:
    """The compute-optimal frontier, by increasing compute: of the budgets' best runs, those
    with a lower loss than every budget with less compute."""
    front: list[RunPoint] = []
    for p in sorted(group_minima(points), key=lambda p: (p.flops, p.loss)):
        if not front or p.loss < front[-1].loss:
            front.append(p)
    return front


@dataclass
class PowerLawFit:
    """`L(C) = exp(log_a) * C^b + l_inf`, kept as fitted: against `C / c_ref`."""

    c_ref: float
    log_a_ref: float  # log of the coefficient against C / c_ref
    b: float
    l_inf: float
    covariance_ref: np.ndarray  # (log_a_ref, b, l_inf)
    flops: np.ndarray
    loss: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def log_a(self) -> float:
        return self.log_a_ref - self.b * math.log(self.c_ref)

    @property
    def a(self) -> float:
        return math.exp(self.log_a)

    @property
    def covariance_known(self) -> bool:
        """False when curve_fit could not estimate it (as many points as parameters)."""
        return bool(np.all(np.isfinite(self.covariance_ref)))

    @property
    def covariance(self) -> np.ndarray:
        """Covariance of (log_a, b, l_inf): log_a = log_a_ref - b * log(c_ref); NaN if unknown."""
        if not self.covariance_known:
            return np.full((3, 3), np.nan)
        jacobian = np.array([[1.0, -math.log(self.c_ref), 0.0], [0, 1, 0], [0, 0, 1]])
        return jacobian @ self.covariance_ref @ jacobian.T

    @property
    def stderr(self) -> dict[str, float]:
        se = np.sqrt(np.diag(self.covariance))
        return {"log_a": se[0], "a": self.a * se[0], "b": se[1], "l_inf": se[2]}

    def predict(self, flops) -> np.ndarray:
        log_x = np.log(np.asarray(flops, dtype=float) / self.c_ref)
        return np.exp(self.log_a_ref + self.b * log_x) + self.l_inf

    def predict_stderr(self, flops) -> np.ndarray:
        """Standard error of the predicted loss (delta method on the covariance)."""
        log_x = np.log(np.asarray(flops, dtype=float) / self.c_ref)
        if not self.covariance_known:
            return np.full_like(log_x, np.nan)
        power = np.exp(self.log_a_ref + self.b * log_x)
        grad = np.stack([power, power * log_x, np.ones_like(power)], axis=-1)
        return np.sqrt(np.einsum("...i,ij,...j->...", grad, self.covariance_ref, grad))

    @property
    def residuals(self) -> np.ndarray:
        return self.loss - self.predict(self.flops)

    @property
    def r2(self) -> float:
        total = float(np.sum((self.loss - self.loss.mean()) ** 2))
        return 1.0 - float(np.sum(self.residuals**2)) / total if total > 0 else math.nan

    def to_dict(self) -> dict:
        se = self.stderr
        return {
            "form": "L(C) = a * C^b + L_inf",
            "a": self.a,
            "log_a": self.log_a,
            "b": self.b,
            "l_inf": self.l_inf,
            "stderr": {k: _finite_or_none(v) for k, v in se.items()},
            "covariance_log_a_b_l_inf": [
                [_finite_or_none(v) for v in row] for row in self.covariance
            ],
            "r2": _finite_or_none(self.r2),
            "rmse": float(np.sqrt(np.mean(self.residuals**2))),
            "points": len(self.flops),
            "notes": self.notes,
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _initial_guess(log_x: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """(log_a, b, L_inf) from a straight line through log(L - 0.9 min L) against log C."""
    floor = 0.9 * float(loss.min())
    slope, intercept = np.polyfit(log_x, np.log(loss - floor), 1)
    return float(intercept), min(float(slope), -1e-3), floor


def fit_power_law(flops: Sequence[float], loss: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of `L = exp(log_a) * C^b + L_inf` (b < 0, 0 <= L_inf < min L)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    c = np.asarray(flops, dtype=float)
    loss_arr = np.asarray(loss, dtype=float)
    if len(c) < MIN_POINTS:
        raise ScalingFitError(
            f"need at least {MIN_POINTS} frontier points to fit a, b and L_inf, have {len(c)}; "
            "add model sizes or budgets to the sweep"
        )
    if not (np.all(np.isfinite(c)) and np.all(c > 0) and np.all(np.isfinite(loss_arr))):
        raise ScalingFitError("compute must be positive and losses finite")
    if loss_arr.min() <= 0:
        raise ScalingFitError("losses must be positive")
    c_ref = float(np.exp(np.mean(np.log(c))))
    log_x = np.log(c / c_ref)
    p0 = _initial_guess(log_x, loss_arr)
    bounds = ([-np.inf, -np.inf, 0.0], [np.inf, _B_MAX, float(loss_arr.min()) * (1 - 1e-9)])

    def model(lx, log_a, b, l_inf):
        return np.exp(log_a + b * lx) + l_inf

    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OptimizeWarning)
        try:
            params, cov = curve_fit(model, log_x, loss_arr, p0=p0, bounds=bounds, maxfev=20000)
        except (RuntimeError, ValueError) as err:
            raise ScalingFitError(
                f"the fit of L = a*C^b + L_inf did not converge on {len(c)} points ({err}); "
                "check that the loss falls with compute"
            ) from None
    if any(issubclass(w.category, OptimizeWarning) for w in caught) or not np.all(np.isfinite(cov)):
        notes.append(
            "the covariance could not be estimated (as many points as parameters, or a "
            "parameter at its bound): standard errors are unknown"
        )
    log_a_ref, b, l_inf = (float(v) for v in params)
    if l_inf >= bounds[1][2] * (1 - 1e-6):
        notes.append("L_inf sits at its upper bound min(L): the losses barely fall")
    elif l_inf <= 1e-9:
        notes.append("L_inf sits at its lower bound 0: the points fit a pure power law best")
    if b >= -1e-6:
        notes.append("b sits at its bound 0: the loss does not fall with compute")
    return PowerLawFit(c_ref, log_a_ref, b, l_inf, np.asarray(cov), c, loss_arr, notes)


def fit_frontier(points: Sequence[RunPoint]) -> tuple[list[RunPoint], PowerLawFit]:
    """The frontier of `points` and the power law fitted to it."""
    front = frontier(points)
    if len(front) < MIN_POINTS:
        names = ", ".join(p.name for p in front)
        raise ScalingFitError(
            f"need at least {MIN_POINTS} frontier points, have {len(front)} ({names}) of "
            f"{len(points)} runs; add model sizes or budgets to the sweep"
        )
    return front, fit_power_law([p.flops for p in front], [p.loss for p in front])


@dataclass
class HoldoutCheck:
    """The largest-compute budget left out of the fit and predicted from the others."""

    held_out: RunPoint  # the budget's lowest-loss run
    fit: PowerLawFit
    frontier: list[RunPoint]

    @property
    def predicted(self) -> float:
        return float(self.fit.predict(self.held_out.flops))

    @property
    def predicted_stderr(self) -> float:
        return float(self.fit.predict_stderr(self.held_out.flops))

    @property
    def relative_error(self) -> float:
        """(predicted - actual) / actual."""
        return (self.predicted - self.held_out.loss) / self.held_out.loss

    def to_dict(self) -> dict:
        return {
            "name": self.held_out.name,
            "flops": self.held_out.flops,
            "actual": self.held_out.loss,
            "predicted": self.predicted,
            "predicted_stderr": _finite_or_none(self.predicted_stderr),
            "relative_error": self.relative_error,
            "fit": self.fit.to_dict(),
            "frontier": [p.name for p in self.frontier],
        }


def holdout_largest(points: Sequence[RunPoint]) -> HoldoutCheck:
    """Fit without the largest-compute budget (all its runs), predict that budget's best loss."""
    groups: dict[tuple, list[RunPoint]] = {}
    for p in points:
        groups.setdefault(_group_key(p), []).append(p)
    largest = max(groups.values(), key=lambda g: max(p.flops for p in g))
    rest = [p for p in points if _group_key(p) != _group_key(largest[0])]
    front, fit = fit_frontier(rest)
    return HoldoutCheck(min(largest, key=lambda p: p.loss), fit, front)


# -- report -----------------------------------------------------------------------------------


def plot_scaling(
    points: Sequence[RunPoint],
    front: Sequence[RunPoint],
    fit: PowerLawFit,
    predictions: Sequence[float],
    holdout: HoldoutCheck | None,
    png: Path,
    *,
    title: str = "",
) -> Path:
    """Loss against compute (log x): every run, the frontier, the fit, predictions, holdout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = sorted({p.params for p in points if p.params is not None})
    cmap = plt.get_cmap("viridis", max(len(sizes), 2))
    for i, n in enumerate(sizes):
        group = [p for p in points if p.params == n]
        ax.scatter(
            [p.flops for p in group],
            [p.loss for p in group],
            color=cmap(i),
            s=22,
            label=f"N = {n:,.0f}",
            zorder=2,
        )
    unsized = [p for p in points if p.params is None]
    if unsized:
        ax.scatter([p.flops for p in unsized], [p.loss for p in unsized], color="grey", s=22)
    ax.scatter(
        [p.flops for p in front],
        [p.loss for p in front],
        s=90,
        facecolors="none",
        edgecolors="black",
        label="frontier",
        zorder=3,
    )
    every_c = [p.flops for p in points] + list(predictions)
    grid = np.geomspace(min(every_c) / 1.5, max(every_c) * 1.5, 200)
    se = fit.stderr
    ax.plot(
        grid,
        fit.predict(grid),
        color="C3",
        label=f"fit: {fit.a:.3g}·C^({fit.b:.3f}) + {fit.l_inf:.3f}"
        + (f" (±{se['b']:.3f} on b)" if math.isfinite(se["b"]) else ""),
    )
    ax.axhline(fit.l_inf, color="C3", linestyle=":", linewidth=1, label="L∞")
    if predictions:
        c = np.asarray(predictions, dtype=float)
        ax.errorbar(
            c,
            fit.predict(c),
            yerr=np.nan_to_num(fit.predict_stderr(c)),
            fmt="*",
            color="C1",
            markersize=12,
            capsize=3,
            label="predicted",
            zorder=4,
        )
    if holdout is not None:
        ax.plot(grid, holdout.fit.predict(grid), color="C0", linestyle="--", linewidth=1)
        ax.scatter(
            [holdout.held_out.flops],
            [holdout.predicted],
            marker="x",
            color="C0",
            s=80,
            label=f"held out {holdout.held_out.name}: predicted {holdout.predicted:.3f} vs "
            f"{holdout.held_out.loss:.3f} ({holdout.relative_error:+.2%})",
            zorder=4,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("final held-out loss (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png)
    return png


def _markdown(report: dict) -> str:
    f = report["fit"]
    se = f["stderr"]

    def pm(key: str, spec: str) -> str:
        return "" if se[key] is None else f" ± {se[key]:{spec}}"

    lines = [
        "# Scaling-law fit",
        "",
        f"`{report['csv']}`, loss column `{report['loss_column']}`: {report['runs']} runs, "
        f"{len(report['frontier'])} on the compute-optimal frontier.",
        "",
        f"**L(C) = a·C^b + L∞** with a = {f['a']:.4g}{pm('a', '.2g')}, "
        f"b = {f['b']:.4f}{pm('b', '.4f')}, L∞ = {f['l_inf']:.4f}{pm('l_inf', '.4f')}; "
        f"R² = {_fmt(f['r2'], '.4f')}, RMSE {f['rmse']:.4f}.",
        *(f"- note: {note}" for note in f["notes"]),
        "",
        "| frontier run | C (FLOPs) | loss | fit | residual |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {p['name']} | {p['flops']:.4g} | {p['loss']:.4f} | {p['fit']:.4f} | "
            f"{p['residual']:+.4f} |"
            for p in report["frontier"]
        ),
    ]
    if report["predictions"]:
        lines += ["", "| predict at C | loss | ± (1 s.e.) |", "|---:|---:|---:|"]
        lines += [
            f"| {p['flops']:.4g} | {p['loss']:.4f} | {_fmt(p['stderr'], '.4f')} |"
            for p in report["predictions"]
        ]
    h = report["holdout"]
    if h is not None:
        lines += [
            "",
            f"**Held out** `{h['name']}` (C = {h['flops']:.4g}), the largest compute: fitted on "
            f"the other {len(h['frontier'])} frontier points, predicted {h['predicted']:.4f}"
            f" ± {_fmt(h['predicted_stderr'], '.4f')}, actual {h['actual']:.4f}: relative error "
            f"**{h['relative_error']:+.2%}** (b = {h['fit']['b']:.4f}, L∞ = "
            f"{h['fit']['l_inf']:.4f}).",
        ]
    lines += ["", f"![scaling]({PNG_NAME})"]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def fit_sweep(
    csv_path: str | Path,
    out: str | Path | None = None,
    *,
    loss_column: str = "eval_loss",
    predict: Sequence[float] = (),
    holdout: bool = False,
    title: str = "",
) -> dict:
    """Fit a `runs.csv`; write OUT/report.json, report.md and scaling.png; return the report.

    `out` defaults to a `fit` dir beside the CSV. With `holdout`, the largest-compute budget is
    also left out of a second fit and predicted (the main fit uses every run).
    """
    csv_path = Path(csv_path)
    out = csv_path.parent / "fit" if out is None else Path(out)
    points = read_runs(csv_path, loss_column)
    front, fit = fit_frontier(points)
    check = holdout_largest(points) if holdout else None
    fitted = fit.predict([p.flops for p in front])
    report = {
        "csv": str(csv_path),
        "loss_column": loss_column,
        "runs": len(points),
        "frontier": [
            {"name": p.name, "flops": p.flops, "loss": p.loss, "fit": float(y), "residual": r}
            for p, y, r in zip(front, fitted, fit.residuals.tolist(), strict=True)
        ],
        "fit": fit.to_dict(),
        "predictions": [
            {
                "flops": float(c),
                "loss": float(fit.predict(c)),
                "stderr": _finite_or_none(float(fit.predict_stderr(c))),
            }
            for c in predict
        ],
        "holdout": None if check is None else check.to_dict(),
        "out": str(out),
        "png": str(out / PNG_NAME),
    }
    plot_scaling(points, front, fit, list(predict), check, out / PNG_NAME, title=title)
    write_report(out, report, _markdown(report))
    return report
