"""`chuan generate`: continue a prompt with a model dir."""

from __future__ import annotations

import argparse
import json
import sys

from chuan.infer.loading import load_tokenizer


def _generate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import chuan  # noqa: F401  (registers the Baichuan classes)
    from chuan.infer.generate import SamplingConfig, stream_tokens

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    tokenizer = load_tokenizer(args.model)
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


def register(verbs: argparse._SubParsersAction) -> None:
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
