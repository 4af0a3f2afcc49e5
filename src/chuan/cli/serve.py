"""`chuan serve`: an OpenAI-compatible HTTP API for a model dir."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from chuan.cli.options import (
    add_adapter_argument,
    add_device_arguments,
    add_retrieval_arguments,
    int_at_least,
    port_number,
)
from chuan.errors import InputError

API_KEY_ENV = "CHUAN_API_KEY"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(flag: str | None) -> str | None:
    """The key clients must send: `--api-key`, else $CHUAN_API_KEY, else none (empty = none)."""
    return flag or os.environ.get(API_KEY_ENV) or None


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from chuan.cli.generate import open_retrieval
    from chuan.infer.engine import load_engine
    from chuan.infer.server import create_app

    if args.runs and not Path(args.runs).is_dir():
        raise InputError(f"--runs {args.runs}: not a directory (the training runs to chart)")
    key = api_key(args.api_key)
    if not _is_loopback(args.host) and key is None:
        print(
            f"chuan serve: warning: listening on {args.host} without an API key; anyone who "
            f"can reach the port can use the model (set --api-key or {API_KEY_ENV})",
            file=sys.stderr,
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    model_name = args.model_name or Path(args.model).resolve().name
    # A reranker gets its own copy of a model: the engine's decodes in its own thread.
    grounding = open_retrieval(args, args.kb, args.model) if args.kb else None
    with load_engine(
        args.model,
        device=args.device,
        dtype=args.dtype,
        adapter=args.adapter,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        prefill_chunk=args.prefill_chunk,
        prefix_cache_tokens=args.prefix_cache_tokens,
        max_model_len=args.max_model_len,
    ) as engine:
        app = create_app(
            engine, model_name=model_name, api_key=key, grounding=grounding, runs_dir=args.runs
        )
        kb = f", answering from {args.kb}" if args.kb else ""
        runs = f", charting runs in {args.runs}" if args.runs else ""
        print(
            f"serving {args.model} as {model_name!r} on http://{args.host}:{args.port}/v1, "
            f"web page http://{args.host}:{args.port}/ "
            f"({engine.device}, {args.max_batch} slots of {engine.context_length} tokens "
            f"({engine.pool.bytes / 2**20:,.0f} MiB of KV cache), prefix cache "
            f"{args.prefix_cache_tokens} tokens, key {'required' if key else 'not required'}"
            f"{kb}{runs})",
            file=sys.stderr,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def register(verbs: argparse._SubParsersAction) -> None:
    serve = verbs.add_parser(
        "serve",
        help="serve a model dir over an OpenAI-compatible HTTP API",
        description="Serve a model dir (with tokenizer files) over HTTP with OpenAI's API: "
        "GET /v1/models, POST /v1/chat/completions (in the model's chat template, Baichuan "
        "2's by default), POST /v1/completions, both with stream=true (server-sent "
        "events), and GET /health. With --kb, chat completions answer from a knowledge base: "
        "sources retrieved with the last user message go into the prompt numbered [n], the "
        "reply's citations are checked, and the response (the last chunk when streamed) has a "
        "top-level `citations` list; POST /v1/kb/search searches the knowledge base. "
        "GET / is a web page: a streamed chat, and live charts of the training runs under "
        "--runs. "
        "One worker thread owns the model and batches concurrent requests token by token: a "
        "new request is prefilled and joins the running batch at the next step, a finished one "
        "leaves it at once, each row with its own sampling settings; prompt prefixes seen "
        "before (a system prompt, few-shot examples) are not prefilled again. GET /metrics "
        "gives Prometheus metrics. See docs/serve.md.",
        epilog="example: chuan serve runs/sft/model --api-key s3cret; then point any OpenAI "
        "client at http://127.0.0.1:8000/v1",
    )
    serve.add_argument("model", metavar="DIR", help="model dir with tokenizer files")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes "
        "the server to the network, so set an API key)",
    )
    serve.add_argument("--port", type=port_number, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--api-key",
        help=f"require `Authorization: Bearer KEY` on /v1 routes (default: ${API_KEY_ENV} "
        "when set, else no key)",
    )
    serve.add_argument(
        "--model-name",
        help="the model id clients send and /v1/models lists (default: DIR's base name)",
    )
    serve.add_argument(
        "--max-batch",
        type=int_at_least(1),
        default=16,
        help="slots of the KV cache: most sequences prefilled or decoded at once, across "
        "requests and choices (default 16); each slot reserves --max-model-len positions",
    )
    serve.add_argument(
        "--max-queue",
        type=int_at_least(1),
        default=256,
        help="sequences that may wait for a slot; past that, requests get 429 with "
        "Retry-After (default 256)",
    )
    serve.add_argument(
        "--max-model-len",
        type=int_at_least(2),
        metavar="N",
        help="longest prompt + reply a slot holds (default: the model's context); lower it to "
        "fit more slots in memory",
    )
    serve.add_argument(
        "--prefill-chunk",
        type=int_at_least(1),
        default=512,
        metavar="N",
        help="prompt tokens prefilled per step (default 512): a long prompt is spread over "
        "several steps so running streams keep their pace",
    )
    serve.add_argument(
        "--prefix-cache-tokens",
        type=int_at_least(0),
        default=4096,
        metavar="N",
        help="prompt positions whose keys and values are kept for requests that start the same "
        "way (default 4096; 0 turns prefix reuse off)",
    )
    add_device_arguments(serve)
    add_adapter_argument(serve)
    serve.add_argument(
        "--kb",
        metavar="KB",
        help="answer chat completions from this knowledge base (`chuan rag index`) with checked "
        "citations, and serve POST /v1/kb/search; see docs/rag.md",
    )
    add_retrieval_arguments(serve, prefix="--kb-")
    serve.add_argument(
        "--runs",
        metavar="DIR",
        help="training runs to show on the web page's runs view: DIR/RUN/metrics.jsonl and "
        "DIR/GROUP/RUN/metrics.jsonl, charted live as they are written",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info: one line per request)",
    )
    serve.set_defaults(func=_serve)
