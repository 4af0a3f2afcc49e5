"""The quickstart's stages after pretraining: evaluate (before/after), generate, quantize,
serve. Each loads model dirs through `chuan.infer.loading`, as the verbs do."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
import urllib.request
from pathlib import Path

from chuan.quickstart.data_stages import ASSETS, MAX_LENGTH
from chuan.quickstart.runner import Context

PROMPTS = ["In the beginning God", "起初，神创造", "床前明月光，", "I have been playing always"]
NEW_TOKENS = 40


def _heldout_texts(ctx: Context) -> dict[str, list[str]]:
    """Held-out documents by language, for perplexity."""
    texts: dict[str, list[str]] = {}
    for line in ctx.path("heldout", "heldout.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        texts.setdefault(record.get("category", "other"), []).append(record["text"])
    return texts


def _perplexity(ctx: Context, model_dir: str | Path) -> dict:
    """Per-language loss, perplexity and bits per byte of a model dir on the held-out text."""
    from chuan.eval.perplexity import evaluate_perplexity
    from chuan.infer.loading import load_model, load_saved_tokenizer

    model = load_model(model_dir, device="cpu", dtype="fp32")
    report = evaluate_perplexity(
        model,
        load_saved_tokenizer(model_dir),
        _heldout_texts(ctx),
        max_length=MAX_LENGTH,
        batch_size=8,
        progress=False,
    )
    return {name: stats.to_dict() for name, stats in report.files.items()} | {
        "overall": report.overall.to_dict()
    }


def _quiz(model_dir: str | Path) -> dict:
    from chuan.eval.mcq import McqConfig, evaluate_mcq

    setup = McqConfig(task="cmmlu", data_dir=str(ASSETS / "quiz"), split="test", shots=5)
    result = evaluate_mcq(
        model_dir, setup, device="cpu", dtype="fp32", progress=False, log=lambda _: None
    )
    return {"average": result["average"], "subjects": result["subjects"]}


def evaluate(ctx: Context) -> dict:
    """Held-out perplexity and the bundled quiz, for a freshly initialised model (same
    recipe and seed) and for the pretrained one."""
    from chuan.model.checkpoint import init_model_dir

    init_dir = ctx.path("init-model")
    if not (init_dir / "config.json").is_file():
        init_model_dir(init_dir, "tiny", tokenizer_dir=ctx.path("tokenizer"), overwrite=True)
    models = {"initialised": init_dir, "pretrained": ctx.results["pretrain"]["model_dir"]}
    rows = {
        name: {"perplexity": _perplexity(ctx, path), "quiz": _quiz(path)}
        for name, path in models.items()
    }
    before, after = rows["initialised"], rows["pretrained"]
    bpb = [r["perplexity"]["overall"]["bits_per_byte"] for r in (before, after)]
    quiz = [r["quiz"]["average"] for r in (before, after)]
    return {
        "models": {k: str(v) for k, v in models.items()},
        **rows,
        "summary": f"held-out bits/byte {bpb[0]:.2f} → {bpb[1]:.2f}; quiz accuracy "
        f"{quiz[0]:.1f}% → {quiz[1]:.1f}% (chance 25%)",
    }


def generate(ctx: Context) -> dict:
    """Greedy continuations of a few prompts (repetition penalty 1.1, as Baichuan's base-model
    example), streamed through the same decoder `chuan generate` uses."""
    from chuan.infer.generate import SamplingConfig
    from chuan.infer.generate import generate as decode
    from chuan.infer.loading import load_model, load_saved_tokenizer

    model_dir = ctx.results["pretrain"]["model_dir"]
    model, tokenizer = (
        load_model(model_dir, device="cpu", dtype="fp32"),
        load_saved_tokenizer(model_dir),
    )
    cfg = SamplingConfig(
        max_new_tokens=NEW_TOKENS,
        repetition_penalty=1.1,
        stop_token_ids=(tokenizer.eos_token_id,),
    )
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    began = time.perf_counter()
    outputs = decode(model, prompts, cfg)
    seconds = time.perf_counter() - began
    samples = [
        {"prompt": p, "completion": tokenizer.decode(ids, skip_special_tokens=True)}
        for p, ids in zip(PROMPTS, outputs, strict=True)
    ]
    tokens = sum(len(ids) for ids in outputs)
    return {
        "samples": samples,
        "tokens_per_second": round(tokens / seconds, 1),
        "summary": f"{len(PROMPTS)} prompts, {tokens} tokens at {tokens / seconds:,.0f} tokens/s "
        f"(batch of {len(PROMPTS)}); e.g. {PROMPTS[0]!r} → {samples[0]['completion'][:30]!r}…",
    }


def quantize(ctx: Context) -> dict:
    """int8 and int4 (group 64) copies of the pretrained model, their size and held-out
    perplexity against the fp32 model's."""
    from chuan.infer.quantize import quantize_dir

    model_dir = ctx.results["pretrain"]["model_dir"]
    fp32 = ctx.results["evaluate"]["pretrained"]["perplexity"]["overall"]["perplexity"]
    rows = {}
    for bits, group in ((8, None), (4, 64)):
        out = ctx.path(f"quantized-int{bits}")
        report = quantize_dir(
            model_dir, out, bits=bits, group_size=group, overwrite=True, progress=False
        )
        ppl = _perplexity(ctx, out)["overall"]["perplexity"]
        rows[f"int{bits}"] = {
            "dir": str(out),
            "weight_bytes": report.output_bytes,
            "source_bytes": report.source_bytes,
            "perplexity": ppl,
            "perplexity_change": ppl / fp32 - 1,
        }
    shown = "; ".join(
        f"{k} {r['weight_bytes'] / 2**20:.1f} MiB, ppl {r['perplexity_change']:+.2%}"
        for k, r in rows.items()
    )
    return {
        "fp32_perplexity": fp32,
        **rows,
        "summary": f"fp32 {rows['int8']['source_bytes'] / 2**20:.1f} MiB → {shown}",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, key: str) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def serve(ctx: Context) -> dict:
    """Start `chuan serve`'s app on a free loopback port with an API key, ask it for one
    completion over HTTP, and shut it down."""
    import uvicorn

    from chuan.infer.engine import load_engine
    from chuan.infer.server import create_app

    key = secrets.token_urlsafe(16)
    port = _free_port()
    with load_engine(ctx.results["pretrain"]["model_dir"], device="cpu", max_batch=4) as engine:
        app = create_app(engine, model_name="quickstart", api_key=key)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():  # uvicorn exits on a bind error instead of starting
                    raise RuntimeError(f"the server did not start on 127.0.0.1:{port}")
                time.sleep(0.05)
            began = time.perf_counter()
            body = {"model": "quickstart", "prompt": PROMPTS[0], "max_tokens": 24}
            answer = _post(f"http://127.0.0.1:{port}/v1/completions", body, key)
            seconds = time.perf_counter() - began
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    text = answer["choices"][0]["text"]
    return {
        "url": f"http://127.0.0.1:{port}/v1/completions",
        "prompt": PROMPTS[0],
        "completion": text,
        "usage": answer["usage"],
        "latency_seconds": round(seconds, 3),
        "summary": f"POST /v1/completions answered in {seconds:.2f} s "
        f"({answer['usage']['completion_tokens']} tokens): {text[:30]!r}…",
    }
