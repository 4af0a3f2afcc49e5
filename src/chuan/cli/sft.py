"""`chuan sft` (supervised fine-tuning) and `chuan lora merge`."""

from __future__ import annotations

import argparse

from chuan.cli.options import add_recipe_arguments, int_at_least, print_run_result


def _sft(args: argparse.Namespace) -> None:
    from chuan.align.sft import inspect, sft
    from chuan.align.sft_config import load_sft_config

    cfg = load_sft_config(args.config, args.overrides)
    if args.inspect:
        print(inspect(cfg, args.inspect))
        return
    print_run_result(sft(cfg, resume=args.resume))


def _merge(args: argparse.Namespace) -> None:
    from chuan.align.adapters import merge_adapter

    out = merge_adapter(args.base, args.adapter, args.out, overwrite=args.overwrite)
    print(f"merged {args.adapter} into {args.base}: {out}")


def register(verbs: argparse._SubParsersAction) -> None:
    sft = verbs.add_parser(
        "sft",
        help="supervised fine-tuning: full, freeze, LoRA, QLoRA, AdaLoRA, prefix, prompt or "
        "P-tuning (v1/v2), on chat data",
        description="Fine-tune any chuan / Baichuan / HF LLaMA model dir on conversations "
        "(alpaca, sharegpt / Baichuan 2 fine-tune, OpenAI messages, Colossal source/target "
        "files, mixed by weight), with the loss on the answers only, packed rows that keep "
        "samples apart, and a chat template (baichuan2, chatml, llama2, plain) written into the "
        "output's tokenizer files. Same engine as `chuan pretrain`: stages, checkpoints with "
        "exact resume, torchrun (DDP / FSDP2). `finetune` picks what trains: full, freeze, "
        "lora, qlora, adalora, prefix, ptuning_v2, prompt, ptuning (peft's methods, options "
        "under the keys lora, adalora, prefix, prompt, ptuning). Writes OUT/model/ (for LoRA "
        "and AdaLoRA the merged model; none for the virtual-token methods), OUT/adapter/ (every "
        "peft method), OUT/rejects.jsonl, metrics.jsonl, TensorBoard logs, "
        "report.md/json with the loss curve and replies before and after. See docs/sft.md.",
        epilog="example: chuan sft --config configs/sft-tiny-cpu.yaml finetune=lora "
        "lora.r=8 --inspect 2",
    )
    add_recipe_arguments(sft)
    sft.add_argument(
        "--inspect",
        type=int_at_least(1),
        metavar="N",
        help="print the first N samples as the model sees them (trained spans in ⟦ ⟧, each "
        "token with its label) and exit without training",
    )
    sft.set_defaults(func=_sft)

    lora = verbs.add_parser(
        "lora",
        help="LoRA / AdaLoRA adapters: merge one into its base model",
        description="Work with peft LoRA and AdaLoRA adapters of chuan models.",
    )
    actions = lora.add_subparsers(dest="action", required=True, metavar="ACTION")
    merge = actions.add_parser(
        "merge",
        help="fold a LoRA or AdaLoRA adapter into its base: a plain model dir",
        description="Fold a peft LoRA or AdaLoRA adapter (OUT/adapter of `chuan sft`, or any "
        "peft LoRA of a chuan model) into its base model: W += (alpha / r) B A, in fp32. The "
        "result is a complete model dir; its tokenizer files (and chat template) come from the "
        "adapter dir when it has them, else from the base. Prefix, prompt and P-tuning "
        "adapters are refused: their virtual tokens change no weight; use them with --adapter "
        "in chuan generate, chat and serve.",
        epilog="example: chuan lora merge runs/base/model runs/sft/adapter --out runs/merged",
    )
    merge.add_argument("base", help="the base model dir the adapter was trained on")
    merge.add_argument("adapter", help="the adapter dir (adapter_config.json + weights)")
    merge.add_argument("--out", required=True, help="the merged model dir to write")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    merge.set_defaults(func=_merge)
