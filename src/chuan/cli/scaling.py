"""`chuan scaling`: train a sweep of model sizes x budgets, and fit L(C) = a*C^b + L_inf to it."""

from __future__ import annotations

import argparse
import sys

from chuan.cli.options import float_in


def _sweep(args: argparse.Namespace) -> None:
    from chuan.scaling.sweep import load_sweep_config, plan_sweep, plan_table, run_sweep

    config = load_sweep_config(args.config, args.overrides)
    if args.plan:
        print(plan_table(plan_sweep(config)), end="")
        return
    result = run_sweep(config)
    done = f"{len(result.rows)} runs finished ({result.skipped} skipped as already finished)"
    if result.interrupted:
        print(f"interrupted after {done}; run the same command again to continue")
        sys.exit(128 + result.signal)
    print(
        f"{done}; rows in {result.out / 'runs.csv'}, report in {result.out / 'report.md'}. "
        f"Fit: chuan scaling fit {result.out / 'runs.csv'} --holdout largest"
    )


def _fit(args: argparse.Namespace) -> None:
    from chuan.scaling.fit import fit_sweep

    report = fit_sweep(
        args.runs,
        args.out,
        loss_column=args.loss_column,
        predict=args.predict,
        holdout=args.holdout == "largest",
    )
    f = report["fit"]
    print(
        f"L(C) = {f['a']:.4g} * C^({f['b']:.4f}) + {f['l_inf']:.4f} on "
        f"{len(report['frontier'])} frontier points of {report['runs']} runs, R^2 "
        f"{'n/a' if f['r2'] is None else format(f['r2'], '.4f')}"
    )
    for p in report["predictions"]:
        print(f"predicted loss at C = {p['flops']:.4g}: {p['loss']:.4f}")
    if report["holdout"] is not None:
        h = report["holdout"]
        print(
            f"held out {h['name']}: predicted {h['predicted']:.4f}, actual {h['actual']:.4f} "
            f"({h['relative_error']:+.2%})"
        )
    print(f"report in {report['out']}/report.md")


def register(verbs: argparse._SubParsersAction) -> None:
    group = verbs.add_parser(
        "scaling",
        help="scaling laws: train a sweep of model sizes, fit L(C) = a*C^b + L_inf",
        description="Scaling laws the Baichuan 2 way (docs/scaling.md): `sweep` trains a grid "
        "of model sizes x budgets with one recipe, `fit` fits the compute-optimal frontier.",
    )
    actions = group.add_subparsers(dest="scaling_verb", required=True, metavar="ACTION")

    sweep = actions.add_parser(
        "sweep",
        help="train every model size x budget of a sweep recipe; write OUT/runs.csv",
        description="Train each grid point of a sweep recipe (model sizes x token budgets, "
        "tokens-per-parameter ratios or FLOP budgets) with `chuan pretrain`, cheapest first, "
        "each with a schedule spanning exactly its budget, into OUT/runs/NAME/. Finished runs "
        "are skipped and interrupted ones resumed when the command is run again. Writes "
        "OUT/runs.csv (one row per finished run: shape, parameters, tokens, C = 6ND, final "
        "train and held-out loss, wall seconds), OUT/plan.md and OUT/report.md/json.",
        epilog="example: chuan scaling sweep --config configs/scaling-smoke.yaml "
        "base.optim.lr=1e-3 out=runs/scaling-lr1e-3",
    )
    sweep.add_argument("--config", required=True, metavar="FILE.yaml", help="the sweep recipe")
    sweep.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of recipe fields, e.g. base.optim.lr=1e-3 out=runs/x "
        "tokens_per_param=[10,20]",
    )
    sweep.add_argument(
        "--plan",
        action="store_true",
        help="print the runs (shapes, parameters, tokens, steps, FLOPs, epochs) and stop",
    )
    sweep.set_defaults(func=_sweep)

    fit = actions.add_parser(
        "fit",
        help="fit L(C) = a*C^b + L_inf to a sweep's compute-optimal frontier",
        description="Read runs.csv (columns name, flops and the loss column; budget and params "
        "are used when present), take the compute-optimal frontier (the lowest loss per compute "
        "budget, kept where it is below every smaller budget's), fit L = exp(log_a)*C^b + L_inf "
        "with scipy curve_fit (b < 0, 0 <= L_inf < min L) and write OUT/report.md, "
        "OUT/report.json (parameters, standard errors, residuals, R^2, predictions, holdout) and "
        "OUT/scaling.png.",
        epilog="example: chuan scaling fit runs/scaling-cpu/runs.csv --holdout largest "
        "--predict 1e15 1e16",
    )
    fit.add_argument("runs", metavar="RUNS.csv", help="the sweep's runs.csv (or any such CSV)")
    fit.add_argument(
        "--loss-column",
        default="eval_loss",
        help="the loss to fit: eval_loss (final held-out loss, default) or train_loss",
    )
    fit.add_argument(
        "--predict",
        nargs="+",
        type=float_in(0, low_open=True),
        default=[],
        metavar="C",
        help="also predict the loss at these compute budgets (FLOPs), with standard errors",
    )
    fit.add_argument(
        "--holdout",
        choices=["none", "largest"],
        default="none",
        help="largest: also fit without the largest-compute run (budget) and report its "
        "predicted vs actual loss and the relative error (default none)",
    )
    fit.add_argument(
        "--out", metavar="DIR", help="output dir (default: a `fit` dir beside RUNS.csv)"
    )
    fit.set_defaults(func=_fit)
