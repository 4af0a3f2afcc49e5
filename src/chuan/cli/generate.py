"""`chuan generate` (continue a prompt) and `chuan chat` (terminal chat) with a model dir."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from chuan.cli.options import (
    add_adapter_argument,
    add_device_arguments,
    add_retrieval_arguments,
    float_in,
    int_at_least,
)
from chuan.errors import InputError, MissingError

CHAT_COMMANDS = "/clear (forget the conversation), /system TEXT (set the system prompt), /exit"


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="DIR", help="model dir (chuan, Baichuan or HF LLaMA)")
    add_device_arguments(parser)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the decode step under torch.compile (slow start; see docs/generate.md)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: dict, note: str) -> None:
    """The sampling flags; `defaults` maps flag dest to its default, `note` explains them."""
    specs = [
        ("--max-new-tokens", int_at_least(1), "tokens to generate at most"),
        ("--temperature", float_in(0), "0 = greedy"),
        ("--top-k", int_at_least(0), "0 = off"),
        ("--top-p", float_in(0, 1, low_open=True), "1 = off"),
        ("--repetition-penalty", float_in(0, low_open=True), "1 = off"),
        ("--seed", int_at_least(0), "sampling seed (same seed and input, same output)"),
    ]
    for flag, kind, text in specs:
        dest = flag[2:].replace("-", "_")
        if dest in defaults:
            shown = f"default: {defaults[dest]}"
        elif dest == "seed":
            shown = "default: none, a fresh random draw each run"
        else:
            shown = note
        parser.add_argument(flag, type=kind, default=defaults.get(dest), help=f"{text} ({shown})")


def _sampling_config(args: argparse.Namespace, base):
    """`base` (a SamplingConfig) with every sampling flag that was given applied."""
    names = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return dataclasses.replace(base, **given)


def _generate(args: argparse.Namespace) -> None:
    from chuan.infer.generate import SamplingConfig, stream_tokens
    from chuan.infer.loading import load_model, load_saved_tokenizer, side_files_dir
    from chuan.infer.sampling import eos_stop_ids
    from chuan.infer.text import TextStream

    model = load_model(args.model, device=args.device, dtype=args.dtype, adapter=args.adapter)
    tokenizer = load_saved_tokenizer(side_files_dir(args.model, args.adapter))
    bos = model.config.bos_token_id
    if args.prompt_ids is not None:
        try:
            prompt = [int(t) for t in args.prompt_ids.replace(",", " ").split()]
        except ValueError:
            raise InputError(
                f"--prompt-ids takes token ids separated by spaces or commas, e.g. '1 345 22'; "
                f"got {args.prompt_ids!r}"
            ) from None
    elif args.prompt and tokenizer is not None:
        prompt = [bos, *tokenizer.encode(args.prompt, add_special_tokens=False)]
    elif args.prompt:
        raise InputError(f"{args.model} has no tokenizer files: give --prompt-ids, not --prompt")
    else:
        prompt = [bos]
    cfg = _sampling_config(args, SamplingConfig(stop_token_ids=eos_stop_ids(model.config)))
    stream = TextStream(tokenizer) if tokenizer is not None else None
    ids = []
    for token in stream_tokens(model, prompt, cfg, compile=args.compile):
        ids.append(token)
        if stream is not None:
            print(stream.push(token), end="", flush=True)
    if stream is not None:
        print(stream.flush())
    print(json.dumps({"prompt_ids": prompt, "new_ids": ids}))


def load_chat_model(args: argparse.Namespace):
    """The model, tokenizer and sampling settings of a chat verb (`chat`, `rag ask`): the
    model dir (with `--adapter`), its tokenizer and generation defaults, the flags applied;
    the settings are printed to stderr."""
    from chuan.infer.loading import load_model, load_saved_tokenizer, side_files_dir
    from chuan.infer.sampling import describe, generation_defaults

    if not Path(args.model).is_dir():
        raise MissingError(f"{args.model}: no such model dir")
    side = side_files_dir(args.model, args.adapter)
    tokenizer = load_saved_tokenizer(side)
    if tokenizer is None:
        raise MissingError(f"{args.model} has no tokenizer files (tokenizer.model)")
    cfg = _sampling_config(args, generation_defaults(side))
    model = load_model(args.model, device=args.device, dtype=args.dtype, adapter=args.adapter)
    print(f"generation settings: {describe(cfg)}", file=sys.stderr)
    return model, tokenizer, cfg


def open_retrieval(args: argparse.Namespace, kb: str, model_dir: str | None = None):
    """The knowledge base `kb` with the retrieval flags of `add_retrieval_arguments`; a
    reranker from `--rerank-model`, else from `model_dir` when given (else `with_reranker`
    adds the answering model once it is loaded)."""
    from chuan.rag.answer import Retrieval

    retrieval = Retrieval.open(kb, device=args.device, k=args.kb_k, mode=args.mode,
                               threshold=args.threshold, cite_threshold=args.cite_threshold,
                               rerank_depth=args.rerank_depth)  # fmt: skip
    source = args.rerank_model or model_dir
    if args.rerank == "none" or source is None:
        return retrieval
    from chuan.rag.rerank import Reranker

    reranker = Reranker.open(source, args.rerank, device=args.device)
    return dataclasses.replace(retrieval, reranker=reranker)


def with_reranker(retrieval, args: argparse.Namespace, model, tokenizer):
    """`retrieval` with the answering model as its reranker when `--rerank` asks for one and
    `--rerank-model` named none."""
    if retrieval is None or args.rerank == "none" or retrieval.reranker is not None:
        return retrieval
    from chuan.rag.rerank import Reranker

    return dataclasses.replace(retrieval, reranker=Reranker(model, tokenizer, args.rerank))


def grounded_reply(retrieval, model, tokenizer, cfg, messages: list[dict]):
    """Answer the last of `messages` from the knowledge base, printing the checked text as it
    becomes final and then the cited sources (`chuan chat --kb`, `chuan rag ask`)."""
    from chuan.infer.chat import fits_context, stream_chat
    from chuan.rag.answer import format_citations

    answer = retrieval.ask(
        messages,
        lambda grounded: stream_chat(model, tokenizer, grounded, cfg),
        fits=fits_context(model, tokenizer, cfg),
        on_text=lambda text: print(text, end="", flush=True),
    )
    print()
    if answer.citations:
        print(f"sources:\n{format_citations(answer.citations)}")
    return answer


def _chat(args: argparse.Namespace) -> None:
    from chuan.infer.chat import stream_chat

    retrieval = open_retrieval(args, args.kb) if args.kb else None  # a bad KB fails first
    model, tokenizer, cfg = load_chat_model(args)
    retrieval = with_reranker(retrieval, args, model, tokenizer)
    session = ChatSession(args.system or "")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"commands: {CHAT_COMMANDS}", file=sys.stderr)
    while True:
        if interactive:
            print("user> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\r\n")
        if text.startswith("/"):
            if not session.command(text):
                break
            continue
        if not text.strip():
            continue
        if interactive:
            print("assistant> ", end="", flush=True)
        if retrieval is not None:
            answer = grounded_reply(retrieval, model, tokenizer, cfg, session.messages(text))
            session.answered(text, answer.text)
            continue
        pieces = []
        for piece in stream_chat(model, tokenizer, session.messages(text), cfg):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        session.answered(text, "".join(pieces))


class ChatSession:
    """The conversation of `chuan chat`: the system prompt and past turns."""

    def __init__(self, system: str):
        self.system = system
        self.history: list[dict] = []

    def messages(self, user_text: str) -> list[dict]:
        """The messages to answer: system (if any), history, then `user_text`."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": user_text}]

    def answered(self, user_text: str, reply: str) -> None:
        self.history += [
            {"role": "user", "content": user_text},
            {"role": "assistant", "content": reply},
        ]

    def command(self, line: str) -> bool:
        """Run a `/command` line; False means quit."""
        name, _, rest = line.partition(" ")
        if name == "/exit":
            return False
        if name == "/clear":
            self.history = []
            print("(conversation cleared)", file=sys.stderr)
        elif name == "/system":
            self.system = rest.strip()
            print(f"(system prompt {'set' if self.system else 'removed'})", file=sys.stderr)
        else:
            print(f"unknown command {name}; commands: {CHAT_COMMANDS}", file=sys.stderr)
        return True


def add_chat_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model dir, device, adapter and sampling flags of a chat verb (`chat`, `rag ask`)."""
    _add_model_flags(parser)
    add_sampling_arguments(parser, {}, "default: from DIR")
    add_adapter_argument(parser)


def register(verbs: argparse._SubParsersAction) -> None:

    gen = verbs.add_parser(
        "generate",
        help="generate a continuation with a model dir",
        description="Continue a prompt with chuan's KV-cache decoder: greedy by default "
        "(--temperature 0), stopping at the model's EOS or --max-new-tokens. Streams the text "
        "when DIR has tokenizer files, then prints the prompt and new ids as one JSON line. "
        "The prompt gets the model's BOS in front; no chat template is applied.",
    )
    _add_model_flags(gen)
    prompt = gen.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text (needs tokenizer files in DIR)")
    prompt.add_argument("--prompt-ids", help="prompt as token ids, e.g. '1 345 22' (default: BOS)")
    greedy = {"max_new_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0}
    add_sampling_arguments(gen, {**greedy, "repetition_penalty": 1.0}, "")
    add_adapter_argument(gen)
    gen.set_defaults(func=_generate)

    chat = verbs.add_parser(
        "chat",
        help="chat with a model dir in the terminal",
        description="Chat with a chat model in its chat template (the one `chuan sft` recorded "
        "in its tokenizer files, else Baichuan 2's): each line read from stdin is a "
        "user message; the reply streams to stdout; the conversation is kept (and cut to fit "
        "the context, oldest rounds first) until /clear. Commands: "
        f"{CHAT_COMMANDS}. Works with piped input (one message per line). Sampling settings "
        "come from DIR/generation_config.json, with Baichuan 2's chat defaults (temperature "
        "0.3, top-k 5, top-p 0.85, repetition penalty 1.05, 2048 new tokens) for what it "
        "leaves out; the flags override them and the settings used are printed to stderr. "
        "Sampling makes replies differ run to run: give --seed or --temperature 0. "
        "With --kb, every message is answered from a knowledge base with cited sources "
        "(see docs/rag.md).",
    )
    add_chat_model_arguments(chat)
    chat.add_argument("--system", default=None, help="system prompt (default: none)")
    chat.add_argument(
        "--kb",
        metavar="KB",
        help="answer from this knowledge base (`chuan rag index`): each message retrieves "
        "sources that go into the prompt numbered [n]; the reply's citations are checked and "
        "the cited sources listed as [n] file:line; with nothing relevant the reply says so "
        "and the model is not asked",
    )
    add_retrieval_arguments(chat, prefix="--kb-")
    chat.set_defaults(func=_chat)
