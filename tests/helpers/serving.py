"""Tiny model dirs and a live `chuan serve` app on a loopback port, for the server tests
(`tests/infer/`), the knowledge-base server tests (`tests/rag/`) and lm-eval's tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from helpers.corpus import write_jsonl
from helpers.pretrain_fixtures import bible_documents

# Written into the model dir: what the server falls back on where OpenAI has no default.
GENERATION_CONFIG = {
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "do_sample": True,
    "max_new_tokens": 6,
    "temperature": 0.3,
    "top_k": 4,
    "top_p": 0.85,
    "repetition_penalty": 1.1,
}


def chat_model_dir(test_data: Path, root: Path, *, seed: int = 5) -> Path:
    """A random `tiny` model dir with a real 1,200-piece tokenizer trained on KJV / CUV verses
    (Baichuan 2's role ids 195/196) and `GENERATION_CONFIG`."""
    from chuan.model.checkpoint import init_model_dir
    from chuan.tokenizer.train import train_tokenizer

    corpus = write_jsonl(root / "corpus.jsonl", bible_documents(test_data, 100))
    train_tokenizer(corpus, root / "tok", vocab_size=1200, num_threads=1, progress=False)
    init_model_dir(root / "model", "tiny", tokenizer_dir=root / "tok", seed=seed)
    (root / "model" / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    return root / "model"


def llama_vocab_model_dir(test_data: Path, root: Path, *, seed: int = 11) -> Path:
    """A random `tiny` model dir with the LLaMA tokenizer (32,000 pieces)."""
    from chuan.model.checkpoint import init_model_dir
    from chuan.tokenizer.hf import write_tokenizer_dir
    from chuan.tokenizer.spm import load_proto

    proto = load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    tok = write_tokenizer_dir(root / "tok", proto)
    init_model_dir(root / "model", "tiny", tokenizer_dir=tok, seed=seed)
    return root / "model"


@contextmanager
def serving(model_dir: Path, *, max_batch: int = 8, **app_settings) -> Iterator[str]:
    """`chuan serve`'s app (`create_app(engine, **app_settings)`) for `model_dir` on CPU with
    the dir's generation defaults, on a loopback port; yields the base URL."""
    from chuan.infer.engine import Engine
    from chuan.infer.loading import load_model, load_saved_tokenizer
    from chuan.infer.sampling import generation_defaults
    from chuan.infer.server import create_app

    model, tokenizer = load_model(model_dir, device="cpu"), load_saved_tokenizer(model_dir)
    defaults = generation_defaults(model_dir)
    with (
        Engine(model, tokenizer, defaults=defaults, max_batch=max_batch) as engine,
        running(create_app(engine, **app_settings)) as url,
    ):
        yield url


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a loopback port the OS picked; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()
