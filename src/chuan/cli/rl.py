"""`chuan ppo` and `chuan grpo` (online RL on prompts)."""

from __future__ import annotations

import argparse

from chuan.cli.options import add_recipe_arguments, int_at_least, print_run_result


def _run(args: argparse.Namespace) -> None:
    from chuan.align import rl, rl_config

    load = rl_config.load_ppo_config if args.verb == "ppo" else rl_config.load_grpo_config
    cfg = load(args.config, args.overrides)
    if args.inspect:
        print(rl.inspect_prompts(cfg, args.inspect))
        return
    run = rl.ppo if args.verb == "ppo" else rl.grpo
    print_run_result(run(cfg, resume=args.resume))


_DATA = (
    "Prompts come from any chat data chuan reads: TRL's prompt-only {prompt, reference?}, "
    "preference pairs (the prompt; the chosen answer is the reference), or SFT conversations "
    "(all but the last answer, which is the reference); mixed by weight as in `chuan sft`. "
    "The reward is a `chuan rm` model dir (`reward_model`, sharing the policy's tokenizer) or "
    "a Python function (`reward_function: module:function` or `file.py:function`, called as "
    "fn(prompts, completions, completion_ids=, reference=) -> list of floats, as in TRL). "
    "Rollouts use chuan's batched KV-cache generator (`rollout`: prompts per iteration per "
    "rank, max_new_tokens, temperature, top_k, top_p), each completion seeded from (seed, "
    "iteration, index). Full, freeze, LoRA or QLoRA as in `chuan sft` (under LoRA the "
    "reference is the model with its adapter off); stages, checkpoints between iterations, "
    "exact resume, torchrun with `distributed.strategy: ddp`. Logs per iteration: reward, "
    "KL to the reference, entropy, response length, clip fraction (and value loss); writes "
    "OUT/model/ (and OUT/adapter/ for LoRA), metrics.jsonl, TensorBoard logs, rewards.png, "
    "report.md/json with sampled completions. See docs/rl.md."
)


def register(verbs: argparse._SubParsersAction) -> None:
    ppo = verbs.add_parser(
        "ppo",
        help="PPO with a reward model, a frozen reference and a critic (Baichuan 2's settings)",
        description="Align a chat model with PPO: an actor, a frozen reference (KL), a frozen "
        "reward and a critic (a value head on a decoder, from `critic`, else `reward_model`, "
        "else the base). Per-token reward -β·KL (k1 or k3) plus the score on the last token, "
        "GAE (gamma, lam), clipped policy and value losses. Defaults are Baichuan 2's: critic "
        "warm-up 20 iterations with the actor frozen, clip 0.1, KL coefficient 0.2 decaying "
        "linearly to 0.005, gradient clipping 0.5 per model, constant LR 5e-6. " + _DATA,
        epilog="example: chuan ppo --config configs/ppo-tiny-cpu.yaml",
    )
    grpo = verbs.add_parser(
        "grpo",
        help="GRPO: group-relative policy optimisation with a reward model or a Python function",
        description="Align a chat model with GRPO (DeepSeekMath): `group_size` completions per "
        "prompt, advantages (r - mean) / (std + eps) within each group (0 for a group whose "
        "rewards are all equal), the clipped policy loss normalised per sequence or per token "
        "(`loss_norm`), and a KL term to the reference when `kl_coef` > 0 (k3). No critic. "
        + _DATA,
        epilog="example: chuan grpo --config configs/grpo-tiny-cpu.yaml rollout.temperature=0.9",
    )
    for parser in (ppo, grpo):
        add_recipe_arguments(parser)
        parser.add_argument(
            "--inspect",
            type=int_at_least(1),
            metavar="N",
            help="print the first N prompts as the model sees them (the chat template applied, "
            "with their token counts and references) and exit without training",
        )
        parser.set_defaults(func=_run)
