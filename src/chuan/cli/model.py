"""`chuan model` (init, info, resize) and `chuan convert`: create, inspect, resize and convert
model dirs."""

from __future__ import annotations

import argparse

from chuan.cli.options import int_at_least


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
    from chuan.model import parameter_count, training_flops_per_token
    from chuan.model.checkpoint import read_config

    config = read_config(args.model)
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


def _model_resize(args: argparse.Namespace) -> None:
    from chuan.model.checkpoint import read_config
    from chuan.tokenizer.resize import resize_model

    read_config(args.model)  # a missing dir or a broken config.json, named before any work

    config = resize_model(
        args.model,
        args.tokenizer,
        args.out,
        old_tokenizer=args.old_tokenizer,
        exclude_dummy_prefix=args.exclude_dummy_prefix,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: vocabulary {config.vocab_size:,}, new rows = mean of old pieces")


def _convert(args: argparse.Namespace) -> None:
    if args.to == "gguf":
        from chuan.infer.gguf import export_gguf

        out = export_gguf(args.src, args.out, overwrite=args.overwrite, outtype=args.outtype)
        print(f"wrote {out} (GGUF, llama architecture, {args.outtype})")
        return
    from chuan.model.convert import convert

    out = convert(args.src, args.out, args.to, overwrite=args.overwrite)
    print(f"wrote {out} ({args.to} layout)")


def register(verbs: argparse._SubParsersAction) -> None:
    from chuan.model.presets import PRESETS

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
    vocab.add_argument(
        "--vocab-size", type=int_at_least(1), help="override the preset's vocabulary size"
    )
    vocab.add_argument(
        "--tokenizer", metavar="DIR", help="take the vocabulary size and tokenizer files from DIR"
    )
    init.add_argument(
        "--seed", type=int_at_least(0), default=0, help="initialisation seed (default 0)"
    )
    init.add_argument("--out", required=True, metavar="DIR", help="model dir to write")
    init.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    init.set_defaults(func=_model_init)

    resize = model_verbs.add_parser(
        "resize",
        help="grow a model's vocabulary to an expanded tokenizer",
        description="Resize a model to an expanded tokenizer (Colossal-LLaMA-2): each new row "
        "of embed_tokens and of lm_head is the mean of the old rows of the piece's split "
        "under the old tokenizer. Old rows are untouched. Runs on the CPU.",
    )
    resize.add_argument("--model", required=True, metavar="DIR", help="model dir to resize")
    resize.add_argument(
        "--tokenizer", required=True, metavar="NEW_DIR", help="the expanded tokenizer"
    )
    resize.add_argument(
        "--old-tokenizer", metavar="DIR", help="the model's tokenizer (default: the model dir)"
    )
    resize.add_argument(
        "--exclude-dummy-prefix",
        action="store_true",
        help="leave the lone '▁' of the dummy prefix out of the mean (Colossal includes it)",
    )
    resize.add_argument("--out", required=True, metavar="DIR", help="model dir to write")
    resize.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    resize.set_defaults(func=_model_resize)

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
        "released Baichuan dir (.bin weights) as safetensors with explicit config fields; "
        "--to gguf writes one OUT.gguf file for llama.cpp (RoPE models, tokenizer embedded).",
    )
    convert.add_argument("src", metavar="SRC", help="source model dir")
    convert.add_argument("out", metavar="OUT", help="output model dir")
    convert.add_argument("--to", required=True, choices=["baichuan", "llama", "gguf"])
    convert.add_argument(
        "--outtype",
        choices=["f32", "f16"],
        default="f32",
        help="with --to gguf: storage type of the matrices (norms stay f32); quantize further "
        "with llama.cpp's llama-quantize",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    convert.set_defaults(func=_convert)
