"""Scaling laws: the fit against known parameters and a hand-computed covariance, the frontier
on hand-made grids, the holdout arithmetic, the CSV schema, the CLI, and a real sweep of five
model sizes on the bundled sample corpus (with re-runs skipping finished runs)."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import chuan
from chuan.cli import scaling as scaling_cli
from chuan.config import ConfigError, from_dict
from chuan.scaling.fit import (
    RunPoint,
    ScalingFitError,
    fit_power_law,
    frontier,
    holdout_largest,
    read_runs,
)
from chuan.scaling.sweep import (
    CSV_COLUMNS,
    SweepConfig,
    load_sweep_config,
    plan_sweep,
    run_sweep,
    write_runs_csv,
)

SAMPLE = Path(chuan.__file__).parent / "assets" / "sample"
SMOKE = Path(__file__).resolve().parents[2] / "configs" / "scaling-smoke.yaml"


def law(c, a, b, l_inf):
    return a * np.asarray(c, dtype=float) ** b + l_inf


def synthetic_points(a=40.0, b=-0.12, l_inf=1.8, noise=0.0, n=12, seed=0) -> list[RunPoint]:
    c = np.geomspace(1e10, 1e16, n)
    loss = law(c, a, b, l_inf) * (1 + np.random.default_rng(seed).normal(0, noise, n))
    return [
        RunPoint(f"r{i}", float(x), float(y)) for i, (x, y) in enumerate(zip(c, loss, strict=True))
    ]


# -- the fit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "l_inf"), [(40.0, -0.12, 1.8), (900.0, -0.25, 2.6)])
def test_fit_recovers_known_parameters_within_2_percent(a, b, l_inf):
    points = synthetic_points(a, b, l_inf, noise=5e-4)
    fit = fit_power_law([p.flops for p in points], [p.loss for p in points])
    assert fit.a == pytest.approx(a, rel=0.02)
    assert fit.b == pytest.approx(b, rel=0.02)
    assert fit.l_inf == pytest.approx(l_inf, rel=0.02)
    assert fit.r2 > 0.999
    assert not fit.notes
    # the truth lies within a few standard errors (the noise is what the errors measure)
    assert abs(fit.b - b) < 4 * fit.stderr["b"]


def test_covariance_and_prediction_error_match_a_gauss_newton_computation():
    """s^2 (J^T J)^-1 in (log_a, b, L_inf), with J written out by hand, against the fit's
    covariance (fitted on normalised compute and carried back)."""
    points = synthetic_points(noise=2e-3, seed=1)
    c = np.array([p.flops for p in points])
    y = np.array([p.loss for p in points])
    fit = fit_power_law(c, y)
    power = fit.a * c**fit.b
    jac = np.stack([power, power * np.log(c), np.ones_like(c)], axis=1)
    s2 = np.sum((y - power - fit.l_inf) ** 2) / (len(c) - 3)
    expected = s2 * np.linalg.inv(jac.T @ jac)
    np.testing.assert_allclose(fit.covariance, expected, rtol=2e-3)
    target = 3e17
    g = np.array([fit.a * target**fit.b, fit.a * target**fit.b * math.log(target), 1.0])
    assert float(fit.predict_stderr(target)) == pytest.approx(math.sqrt(g @ expected @ g), 2e-3)
    assert float(fit.predict(target)) == pytest.approx(fit.a * target**fit.b + fit.l_inf)


def test_initial_guess_is_a_log_log_line_of_the_loss_above_nine_tenths_of_its_minimum():
    from chuan.scaling.fit import _initial_guess

    log_x = np.log([1.0, 10.0, 100.0])
    loss = np.array([4.0, 3.0, 2.5])
    log_a, b, l_inf = _initial_guess(log_x, loss)
    slope, intercept = np.polyfit(log_x, np.log(loss - 2.25), 1)
    assert (log_a, b, l_inf) == pytest.approx((intercept, slope, 2.25))


def test_three_points_fit_exactly_and_report_unknown_errors():
    fit = fit_power_law([1e9, 1e10, 1e11], [4.0, 3.5, 3.2])
    np.testing.assert_allclose(fit.predict([1e9, 1e10, 1e11]), [4.0, 3.5, 3.2], atol=1e-6)
    assert fit.to_dict()["stderr"] == {"log_a": None, "a": None, "b": None, "l_inf": None}
    assert math.isnan(float(fit.predict_stderr(1e12)))
    assert "standard errors are unknown" in fit.notes[0]


def test_too_few_points_and_a_fit_that_does_not_converge_are_clear_errors(monkeypatch):
    with pytest.raises(ScalingFitError, match="at least 3 frontier points, have 2"):
        holdout_largest(synthetic_points(n=3))
    rising = [RunPoint("a", 1e9, 3.0), RunPoint("b", 1e10, 3.1), RunPoint("c", 1e11, 3.2)]
    with pytest.raises(ScalingFitError, match=r"have 1 \(a\) of 3 runs"):
        holdout_largest([*rising, RunPoint("d", 1e12, 3.3)])

    import scipy.optimize

    def no_convergence(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: The maximum number of calls")

    monkeypatch.setattr(scipy.optimize, "curve_fit", no_convergence)
    with pytest.raises(ScalingFitError, match="did not converge on 12 points"):
        fit_power_law([p.flops for p in synthetic_points()], [p.loss for p in synthetic_points()])


# -- frontier and holdout ---------------------------------------------------------------------


def test_frontier_of_a_sizes_by_tokens_grid_is_the_falling_lower_envelope():
    # (name, C, loss): three sizes x three token budgets; worked out by hand
    grid = [
        ("S_D1", 1, 5.0),
        ("S_D2", 2, 4.5),
        ("S_D4", 4, 4.4),
        ("M_D1", 3, 4.6),  # more compute than S_D2 but a higher loss: off
        ("M_D2", 6, 4.0),
        ("M_D4", 12, 3.9),
        ("L_D1", 9, 4.1),  # above M_D2 (less compute, lower loss): off
        ("L_D2", 18, 3.5),
        ("L_D4", 36, 3.4),
    ]
    points = [RunPoint(n, c * 1e12, loss) for n, c, loss in grid]
    names = [p.name for p in frontier(points)]
    assert names == ["S_D1", "S_D2", "S_D4", "M_D2", "M_D4", "L_D2", "L_D4"]


def test_frontier_of_a_compute_grid_takes_each_budgets_best_run():
    grid = [  # (name, budget, actual C, loss)
        ("S_C1", 1e9, 1.01e9, 3.0),
        ("M_C1", 1e9, 0.99e9, 2.9),  # the best of budget 1e9
        ("S_C2", 1e10, 1.0e10, 2.95),
        ("M_C2", 1e10, 1.02e10, 2.6),  # the best of 1e10
        ("L_C3", 1e11, 1.0e11, 2.7),  # the best of 1e11 but above 1e10's: off the frontier
        ("L_C4", 1e12, 1.0e12, 2.4),
    ]
    points = [RunPoint(n, c, loss, budget=b) for n, b, c, loss in grid]
    assert [p.name for p in frontier(points)] == ["M_C1", "M_C2", "L_C4"]


def test_holdout_largest_predicts_the_left_out_run_from_the_others():
    exact = synthetic_points(a=60.0, b=-0.15, l_inf=2.0, n=8)
    check = holdout_largest(exact)
    assert check.held_out.name == "r7"
    assert [p.name for p in check.frontier] == [f"r{i}" for i in range(7)]
    assert check.relative_error == pytest.approx(0.0, abs=1e-6)

    truth = check.held_out.loss
    worse = [*exact[:7], RunPoint("r7", exact[7].flops, truth * 1.05)]
    check = holdout_largest(worse)
    assert check.predicted == pytest.approx(truth, rel=1e-6)
    assert check.relative_error == pytest.approx((truth - 1.05 * truth) / (1.05 * truth), 1e-5)


def test_holdout_leaves_out_the_whole_largest_budget():
    points = []
    for k in range(5):
        budget = 10.0 ** (9 + k)
        loss = float(law(budget, 60, -0.15, 2))
        points += [
            RunPoint(f"S_C{k}", budget, loss, budget=budget),
            RunPoint(f"L_C{k}", budget * 1.02, loss + 0.05, budget=budget),
        ]
    check = holdout_largest(points)
    assert check.held_out.name == "S_C4"  # the better run of the largest budget
    assert [p.name for p in check.frontier] == ["S_C0", "S_C1", "S_C2", "S_C3"]
    assert check.relative_error == pytest.approx(0.0, abs=1e-6)


# -- CSV and CLI ------------------------------------------------------------------------------


def _rows(points: list[RunPoint]) -> list[dict]:
    return [
        {
            "name": p.name,
            "params": 1000 * (i + 1),
            "tokens": 20_000 * (i + 1),
            "flops": p.flops,
            "eval_loss": p.loss,
            "train_loss": p.loss - 0.01,
        }
        for i, p in enumerate(points)
    ]


def test_runs_csv_schema_round_trips(tmp_path):
    points = synthetic_points(n=4)
    path = write_runs_csv(tmp_path / "runs.csv", _rows(points))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        first = next(reader)
    assert first["budget"] == "" and first["hidden"] == ""  # missing values are empty cells
    back = read_runs(path)
    assert [(p.name, p.flops, p.loss, p.budget) for p in back] == [
        (p.name, p.flops, p.loss, None) for p in points
    ]
    assert [p.loss for p in read_runs(path, "train_loss")] == [p.loss - 0.01 for p in points]


def test_read_runs_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("name,flops,eval_loss\na,1e9,3.0\nb,lots,2.9\n")
    with pytest.raises(ValueError, match=r"runs.csv:3: column 'flops': 'lots' is not a number"):
        read_runs(path)
    with pytest.raises(ValueError, match="no column 'train_loss'"):
        read_runs(path, "train_loss")
    path.write_text("name,flops,eval_loss\na,1e9,\n")
    with pytest.raises(ValueError, match="runs.csv:2: column 'eval_loss' is empty"):
        read_runs(path)


def _cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="chuan")
    scaling_cli.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_fit_writes_png_json_and_markdown(tmp_path, capsys):
    points = synthetic_points(a=60.0, b=-0.15, l_inf=2.0, noise=1e-3, n=7)
    runs = write_runs_csv(tmp_path / "runs.csv", _rows(points))
    out = tmp_path / "fit"
    _cli(
        ["scaling", "fit", str(runs), "--predict", "1e17", "1e18"]
        + ["--holdout", "largest"]
        + ["--out", str(out)]
    )
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["fit"]["b"] == pytest.approx(-0.15, rel=0.05)
    assert [p["flops"] for p in report["predictions"]] == [1e17, 1e18]
    assert report["predictions"][0]["loss"] == pytest.approx(float(law(1e17, 60, -0.15, 2)), 0.01)
    assert report["holdout"]["name"] == "r6"
    assert abs(report["holdout"]["relative_error"]) < 0.01
    assert len(report["frontier"]) == 7 and len(report["fit"]["covariance_log_a_b_l_inf"]) == 3
    assert "Held out" in (out / "report.md").read_text()
    assert "held out r6" in capsys.readouterr().out


def test_cli_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        _cli(["scaling", "fit", "--help"])
    text = capsys.readouterr().out
    for flag in ("--loss-column", "--predict", "--holdout", "--out", "default"):
        assert flag in text
    with pytest.raises(SystemExit):
        _cli(["scaling", "sweep", "--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--plan", "KEY=VALUE"):
        assert flag in text


# -- the sweep --------------------------------------------------------------------------------


def _sweep_fields(**fields) -> dict:
    config = {
        "out": "unused",
        "data": ["unused"],
        "base": {"tokenizer": "unused", "eval": {"holdout_rows": 8}},
        "sizes": [{"name": "s", "hidden": 16, "layers": 1, "heads": 2}],
        "tokens": [1e5],
    }
    config.update(fields)
    return config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"compute": [1e12]}, "exactly one budget grid"),
        ({"tokens": []}, "exactly one budget grid"),
        ({"base": {"tokenizer": "t", "out": "x", "eval": {"holdout_rows": 8}}}, "base.out"),
        ({"base": {"tokenizer": "t"}}, "needs held-out rows"),
        (
            {"base": {"tokenizer": "t", "eval": {"holdout_rows": 8}, "optim": {"lrr": 1}}},
            "unknown key 'base.optim.lrr'",
        ),
        ({"sizes": [{"name": "s", "hidden": 18, "layers": 1, "heads": 2}]}, "even width"),
        ({"sizes": [{"name": "a/b", "hidden": 16, "layers": 1, "heads": 2}]}, "names a dir"),
    ],
)
def test_sweep_config_errors_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SweepConfig, _sweep_fields(**fields))


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> dict[str, Path]:
    """The Bible chapters of the bundled sample corpus (English + Chinese), a 3,000-piece
    tokenizer and 64-token rows, as configs/scaling-smoke.yaml describes."""
    from chuan.data.pack import pack_corpus
    from chuan.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("scaling")
    files = [SAMPLE / "bible_kjv_en.jsonl", SAMPLE / "bible_cuvs_zh.jsonl"]
    train_tokenizer(files, root / "tokenizer", vocab_size=3000, progress=False)
    pack_corpus(files, root / "tokenizer", root / "packed", max_length=64, progress=False)
    return {"tokenizer": root / "tokenizer", "packed": root / "packed", "root": root}


def _smoke(sample_data: dict, out: Path, *extra: str) -> SweepConfig:
    overrides = [
        f"out={out}",
        f"data=[{sample_data['packed']}]",
        f"base.tokenizer={sample_data['tokenizer']}",
        "progress=false",
        *extra,
    ]
    return load_sweep_config(SMOKE, overrides)


def test_compute_grid_plans_tokens_c_over_6n_and_leaves_out_short_runs(sample_data, tmp_path):
    config = _smoke(sample_data, tmp_path, "tokens_per_param=[]", "compute=[2e8,2e9]")
    plan = plan_sweep(config)
    per_step = 16 * 64
    for run in plan.runs:
        assert run.tokens == run.steps * per_step
        assert run.tokens == math.ceil(run.budget / (6 * run.params) / per_step) * per_step
        assert run.config.optim.warmup_steps == max(1, round(0.1 * run.steps))
        assert run.config.stages[0].steps == run.steps
    assert [r.flops for r in plan.runs] == sorted(r.flops for r in plan.runs)
    # h32-l2 (26,784 params) at 2e8 FLOPs is 1,245 tokens, 2 steps: below min_steps=4
    assert any(m.startswith("h32-l2_C200M: ") for m in plan.left_out)
    assert all(r.steps >= 4 for r in plan.runs)


def _stop_the_largest_run_at_step(monkeypatch, step: int) -> None:
    """As if Ctrl-C came during step `step` of the last (largest) run of the smoke sweep."""
    from chuan.train import loop

    calls: dict[str, int] = {}
    real_pretrain = loop.pretrain

    def pretrain(config, *, resume=None):
        if config.out.endswith("h32-l2_r2"):
            calls["steps"] = 0
        return real_pretrain(config, resume=resume)

    def stop_requested(flag, world) -> bool:
        if "steps" not in calls:
            return False
        calls["steps"] += 1
        return calls["steps"] == step

    monkeypatch.setattr(loop, "pretrain", pretrain)
    monkeypatch.setattr(loop, "stop_everywhere", stop_requested)


def _steps_logged(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "tokens_per_s" in r]


def test_sweep_of_five_sizes_trains_resumes_and_skips_finished_runs(
    sample_data, tmp_path, monkeypatch
):
    out = tmp_path / "sweep"
    config = _smoke(sample_data, out)
    _stop_the_largest_run_at_step(monkeypatch, 20)
    stopped = run_sweep(config)
    assert (stopped.trained, stopped.interrupted, len(stopped.rows)) == (4, True, 4)
    assert len((out / "runs.csv").read_text().splitlines()) == 1 + 4
    monkeypatch.undo()
    result = run_sweep(config)  # resumes the stopped run from its step-20 checkpoint
    assert (result.trained, result.skipped, result.interrupted) == (1, 4, False)
    assert _steps_logged(out / "runs" / "h32-l2_r2") == list(range(1, 54))

    with open(out / "runs.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 5
    for row in rows:
        h, layers, tokens = int(row["hidden"]), int(row["layers"]), int(row["tokens"])
        assert int(row["ffn"]) == 3 * h
        # Baichuan 2's N = L (13 h^2 + 2 h) for ffn = 3h, plus chuan's final norm (h)
        assert int(row["params"]) == layers * (13 * h * h + 2 * h) + h
        assert int(row["params_total"]) == int(row["params"]) + 2 * 3000 * h
        assert tokens == int(row["steps"]) * 16 * 64  # no padding in packed rows of text
        assert float(row["flops"]) == 6 * int(row["params"]) * tokens
        assert int(row["steps"]) == math.ceil(2 * int(row["params"]) / (16 * 64))
        assert float(row["wall_seconds"]) > 0 and float(row["train_loss"]) > 0
        report = json.loads((out / "runs" / row["name"] / "report.json").read_text())
        assert float(row["eval_loss"]) == pytest.approx(report["eval_loss"])

    flops = np.array([float(r["flops"]) for r in rows])
    loss = np.array([float(r["eval_loss"]) for r in rows])
    slope = np.polyfit(np.log(flops), loss, 1)[0]
    assert slope < 0 and loss[-1] < loss[0]  # loss falls with compute on average

    weights = out / "runs" / rows[-1]["name"] / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    csv_before = (out / "runs.csv").read_text()
    again = run_sweep(config)
    assert (again.trained, again.skipped) == (0, 5)
    assert weights.stat().st_mtime_ns == stamp
    assert (out / "runs.csv").read_text() == csv_before
    assert "5 of 5 runs finished" in (out / "report.md").read_text()

    with pytest.raises(ValueError, match=r"h12-l1_r2 was trained with another recipe \(optim.lr"):
        run_sweep(_smoke(sample_data, out, "base.optim.lr=0.02"))

    _cli(["scaling", "fit", str(out / "runs.csv")])
    assert json.loads((out / "fit" / "report.json").read_text())["fit"]["b"] < 0


@pytest.mark.parametrize("name", ["scaling-cpu", "scaling-smoke"])
def test_bundled_sweep_configs_load_and_plan(name):
    cfg = load_sweep_config(SMOKE.parent / f"{name}.yaml")
    assert len(cfg.sizes) >= 5
    assert all(size.ffn is None or size.ffn == 3 * size.hidden for size in cfg.sizes)
