"""`chuan dpo` (preference optimisation)."""

from __future__ import annotations

import argparse

from chuan.cli.options import add_recipe_arguments, int_at_least, print_run_result


def _dpo(args: argparse.Namespace) -> None:
    from chuan.align.dpo import dpo, trainer_class
    from chuan.align.dpo_config import load_dpo_config
    from chuan.align.pair_trainer import inspect_pairs

    cfg = load_dpo_config(args.config, args.overrides)
    if args.inspect:
        print(inspect_pairs(cfg, args.inspect, trainer_class(cfg)))
        return
    print_run_result(dpo(cfg, resume=args.resume))


def register(verbs: argparse._SubParsersAction) -> None:
    dpo = verbs.add_parser(
        "dpo",
        help="preference optimisation: DPO, cDPO, IPO, hinge, SimPO, ORPO on chosen/rejected "
        "pairs; KTO on answers labelled desirable or not",
        description="Align a chat model (usually `chuan sft`'s OUT/model) on preference pairs "
        "(TRL-style prompt/chosen/rejected, alpaca with chosen/rejected, hh-rlhf transcripts, "
        "LLaMA-Factory sharegpt pairs, ColossalChat context/chosen/rejected; mixed by weight). "
        "`loss`: sigmoid (DPO, beta 0.1; label_smoothing for cDPO), ipo, hinge, simpo, orpo, "
        "or kto (unpaired data: LLaMA-Factory messages/label, TRL prompt/completion/label, or "
        "pairs split into a desirable and an undesirable answer; desirable_weight, "
        "undesirable_weight). "
        "The reference is a frozen model dir (`reference`, default: the starting model; under "
        "LoRA the same model with its adapter off), scored on the fly or once before training "
        "(`precompute_reference: true`, the same numbers). Full, freeze, LoRA or QLoRA as in "
        "`chuan sft`, the same engine: stages, exact resume, torchrun. Logs the loss, reward "
        "margins and accuracies, chosen/rejected log-probs; writes OUT/model/ (and "
        "OUT/adapter/ for LoRA), metrics.jsonl, TensorBoard logs, report.md/json. See "
        "docs/dpo.md.",
        epilog="example: chuan dpo --config configs/dpo-tiny-cpu.yaml loss=ipo beta=0.5",
    )
    add_recipe_arguments(dpo)
    dpo.add_argument(
        "--inspect",
        type=int_at_least(1),
        metavar="N",
        help="print the first N pairs as the model sees them (chosen and rejected, the scored "
        "answer in ⟦ ⟧, each token with its label) and exit without training",
    )
    dpo.set_defaults(func=_dpo)
