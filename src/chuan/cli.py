"""The `chuan` command line: parse arguments, then call one library function per verb."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _model_init(args: argparse.Namespace) -> None:
    from chuan.model.checkpoint import init_model_dir
    from chuan.model.presets import parameter_count

    config = init_model_dir(
        args.out,
        args.preset,
        vocab_size=args.vocab_size,
        tokenizer_dir=args.tokenizer,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: preset {args.preset}, {parameter_count(config):,} parameters, "
        f"vocab {config.vocab_size:,}, {config.position_encoding}, "
        f"{'NormHead' if config.norm_head else 'plain head'}"
    )


def _model_info(args: argparse.Namespace) -> None:
    from chuan.model import BaichuanConfig, parameter_count, training_flops_per_token

    config = BaichuanConfig.from_pretrained(args.model)
    info = {
        "position_encoding": config.position_encoding,
        "norm_head": config.norm_head,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "vocab_size": config.vocab_size,
        "max_length": config.model_max_length,
        "parameters": parameter_count(config),
        "non_embedding_parameters": parameter_count(config, non_embedding=True),
        "train_flops_per_token": training_flops_per_token(config, config.model_max_length),
    }
    width = max(map(len, info))
    for key, value in info.items():
        shown = f"{value:,}" if type(value) in (int, float) else value
        print(f"{key:<{width}}  {shown}")


def _convert(args: argparse.Namespace) -> None:
    from chuan.model.convert import convert

    out = convert(args.src, args.out, args.to, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to} layout)")


def _generate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import chuan  # noqa: F401  (registers the Baichuan classes)
    from chuan.infer.generate import SamplingConfig, stream_tokens

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    tokenizer = _load_tokenizer(args.model)
    bos = model.config.bos_token_id
    if args.prompt_ids is not None:
        prompt = [int(t) for t in args.prompt_ids.replace(",", " ").split()]
    elif args.prompt and tokenizer is not None:
        prompt = [bos, *tokenizer.encode(args.prompt, add_special_tokens=False)]
    elif args.prompt:
        sys.exit(f"{args.model} has no tokenizer files: give --prompt-ids instead of --prompt")
    else:
        prompt = [bos]
    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        eos_token_id=model.config.eos_token_id,
        seed=args.seed,
    )
    ids = list(stream_tokens(model, prompt, cfg))
    if tokenizer is not None:
        print(tokenizer.decode(ids, skip_special_tokens=True))
    print(json.dumps({"prompt_ids": prompt, "new_ids": ids}))


def _load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    from chuan.model.checkpoint import TOKENIZER_FILES

    if not any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES[:2]):
        return None
    return AutoTokenizer.from_pretrained(model_dir)


def build_parser() -> argparse.ArgumentParser:
    from chuan.model.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="chuan",
        description="Build bilingual Baichuan-style language models end to end.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    model = verbs.add_parser("model", help="create and inspect model dirs")
    model_verbs = model.add_subparsers(dest="model_verb", required=True, metavar="ACTION")
    init = model_verbs.add_parser(
        "init",
        help="write a freshly initialised model dir",
        description="Write a randomly initialised model dir (Baichuan's init: N(0, 0.02), "
        "norms at one) in the Hugging Face layout.",
    )
    init.add_argument("--preset", required=True, choices=sorted(PRESETS), help="model shape")
    vocab = init.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=int, help="override the preset's vocabulary size")
    vocab.add_argument(
        "--tokenizer", metavar="DIR", help="take the vocabulary size and tokenizer files from DIR"
    )
    init.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    init.add_argument("--out", required=True, metavar="DIR", help="model dir to write")
    init.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    init.set_defaults(func=_model_init)

    info = model_verbs.add_parser(
        "info", help="print a model dir's shape, parameter count and FLOPs per token"
    )
    info.add_argument("model", metavar="DIR", help="model dir (chuan or released Baichuan)")
    info.set_defaults(func=_model_info)

    convert = verbs.add_parser(
        "convert",
        help="convert between the Baichuan and Hugging Face LLaMA layouts",
        description="Convert a model dir. The source format is read from SRC/config.json. "
        "--to llama writes a plain LlamaForCausalLM dir (RoPE models only: W_pack split, "
        "NormHead folded into lm_head); --to baichuan imports a LLaMA dir or rewrites a "
        "released Baichuan dir (.bin weights) as safetensors with explicit config fields.",
    )
    convert.add_argument("src", metavar="SRC", help="source model dir")
    convert.add_argument("out", metavar="OUT", help="output model dir")
    convert.add_argument("--to", required=True, choices=["baichuan", "llama"])
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    convert.set_defaults(func=_convert)

    gen = verbs.add_parser(
        "generate",
        help="generate a continuation with a model dir",
        description="Generate with chuan's KV-cache decoder. Greedy by default "
        "(--temperature 0); prints the text when the dir has a tokenizer, and the ids as JSON.",
    )
    gen.add_argument("model", metavar="DIR", help="model dir")
    prompt = gen.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text (needs tokenizer files in DIR)")
    prompt.add_argument("--prompt-ids", help="prompt as token ids, e.g. '1 345 22' (default: BOS)")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed")
    gen.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(f"chuan {args.verb}: error: {err}")


if __name__ == "__main__":
    main()
