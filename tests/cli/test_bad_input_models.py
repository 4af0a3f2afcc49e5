"""Bad input to the model verbs (issue 20): model dirs, conversion, generation, tokenizer
expansion and training, pretraining exits and the server. Each case ends in one message that
names the file, field or flag and the fix, exits non-zero, and never shows a traceback, never
writes a stale output and never passes silently."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
import uvicorn

from chuan.cli import main
from chuan.errors import InputError
from chuan.infer.generate import BatchDecoder, SamplingConfig, generate
from chuan.infer.loading import load_model
from chuan.model.checkpoint import init_model_dir
from chuan.train.checkpoint import list_checkpoints
from helpers.corpus import write_jsonl
from helpers.pretrain_fixtures import bible_documents, pretrain_config, write_config

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run `chuan ARGV` in process: its exit code and everything it printed (the message of a
    `sys.exit("...")` included). A run that returns normally is code 0."""
    try:
        main([str(a) for a in argv])
        code = 0
        message = ""
    except SystemExit as exit_:
        code, message = exit_.code, ""
        if isinstance(code, str):
            code, message = 1, exit_.code
    out, err = capsys.readouterr()
    text = out + err + message
    assert "Traceback" not in text, text
    return code, text


@pytest.fixture
def tiny(tmp_path) -> Path:
    out = tmp_path / "tiny"
    init_model_dir(out, "tiny", vocab_size=300)
    return out


def _edit_config(model_dir: Path, **fields) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


# 1. weights that do not fit config.json


@pytest.mark.parametrize("to", ["baichuan", "llama"])
def test_convert_refuses_weights_that_do_not_fit_the_config(tiny, tmp_path, capsys, to):
    _edit_config(tiny, intermediate_size=768)  # the weights are 384 wide
    code, text = run_cli(["convert", tiny, tmp_path / "out", "--to", to], capsys)
    assert code == 1
    assert f"{tiny}/model.safetensors" in text and "mlp.gate_proj.weight" in text
    assert "[384, 128]" in text and "[768, 128]" in text  # found and expected
    assert "config.json" in text and "put back" in text
    assert not (tmp_path / "out").exists()  # nothing written that cannot load


def test_generate_and_a_llama_import_refuse_mismatched_weights(tiny, tmp_path, capsys):
    llama = tmp_path / "llama"
    assert run_cli(["convert", tiny, llama, "--to", "llama"], capsys)[0] == 0
    _edit_config(llama, num_key_value_heads=2)  # k/v now 64 rows, the weights have 128
    code, text = run_cli(["convert", llama, tmp_path / "back", "--to", "baichuan"], capsys)
    assert code == 1 and "k_proj.weight" in text and "[64, 128]" in text
    _edit_config(tiny, vocab_size=400)
    code, text = run_cli(["generate", tiny, "--max-new-tokens", "2"], capsys)
    assert code == 1 and "model.safetensors" in text and "embed_tokens" in text
    assert "[300, 128]" in text and "[400, 128]" in text


# 2. config.json that is not a config, and paths that are not model dirs


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "must hold a JSON object"),
        ('{"hidden_size": ', "is not valid JSON (line 1"),
        ("BIG", "hidden_size must be a whole number"),
    ],
)
@pytest.mark.parametrize("verb", ["convert", "info", "generate"])
def test_a_broken_config_json_names_its_path_and_field(
    tiny, tmp_path, capsys, content, expected, verb
):
    if content == "BIG":
        _edit_config(tiny, hidden_size="big")
    else:
        (tiny / "config.json").write_text(content)
    argv = {
        "convert": ["convert", tiny, tmp_path / "out", "--to", "llama"],
        "info": ["model", "info", tiny],
        "generate": ["generate", tiny],
    }[verb]
    code, text = run_cli(argv, capsys)
    assert code == 1
    assert f"{tiny}/config.json" in text and expected in text


@pytest.mark.parametrize(
    "argv",
    [
        ["model", "info", "{missing}"],
        ["generate", "{missing}"],
        ["convert", "{missing}", "{out}", "--to", "llama"],
        ["convert", "{missing}", "{out}", "--to", "baichuan"],
        ["model", "resize", "--model", "{missing}", "--tokenizer", "{missing}", "--out", "{out}"],
        ["quantize", "{missing}", "--bits", "8", "{out}"],
        ["serve", "{missing}"],
    ],
)
def test_every_verb_says_no_such_model_dir(tmp_path, capsys, argv):
    paths = {"missing": tmp_path / "nonexistent", "out": tmp_path / "out"}
    code, text = run_cli([a.format(**paths) for a in argv], capsys)
    assert code == 1 and "no such model dir" in text
    assert "HFValidationError" not in text and "Repo id" not in text


def test_model_info_of_an_absolute_missing_path(capsys):
    code, text = run_cli(["model", "info", "/nonexistent"], capsys)
    assert code == 1 and "/nonexistent: no such model dir" in text


# 3. generation past the model's context


def test_generate_refuses_to_run_past_the_context(tiny, capsys):
    code, text = run_cli(["generate", tiny, "--max-new-tokens", "1000"], capsys)
    assert code == 1
    assert "1000" in text and "512" in text and "--max-new-tokens" in text and "511" in text
    long_prompt = " ".join(["5"] * 2403)
    code, text = run_cli(["generate", tiny, "--prompt-ids", long_prompt], capsys)
    assert code == 1 and "2403 tokens" in text and "context of 512" in text


def test_the_library_refuses_it_too(tiny):
    model = load_model(tiny, device="cpu")
    with pytest.raises(InputError, match="prompt 1 .*510 tokens.* plus max_new_tokens 8"):
        generate(model, [[1, 2], [1] * 510], SamplingConfig(max_new_tokens=8))
    with pytest.raises(InputError, match="at most 2 or shorten"):
        BatchDecoder(model, [[1] * 510], [SamplingConfig(max_new_tokens=3)])
    assert len(generate(model, [[1] * 510], SamplingConfig(max_new_tokens=2))[0]) == 2  # fits


def test_prompt_ids_that_are_not_ids_name_the_flag(tiny, capsys):
    code, text = run_cli(["generate", tiny, "--prompt-ids", "1 two 3"], capsys)
    assert code == 1 and "--prompt-ids" in text and "'1 two 3'" in text


# 4. tokenizer expand from a corrupt base


def test_expand_with_a_corrupt_base_names_the_file(tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer.model").write_bytes(b"not a protobuf \xff\xfe\x00 at all")
    pieces = write_jsonl(tmp_path / "pieces.jsonl", [{"piece": "你好"}])
    argv = ["tokenizer", "expand", "--base", base, "--pieces", pieces, "--out", tmp_path / "o"]
    code, text = run_cli(argv, capsys)
    assert code == 1
    assert f"{base}/tokenizer.model is not a SentencePiece model" in text
    assert "DecodeError" not in text and not (tmp_path / "o").exists()


# 5. overwrite messages name the command-line flag


def test_tokenizer_train_into_a_full_dir_names_the_flag(test_data, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", bible_documents(test_data, 20))
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    code, text = run_cli(
        ["tokenizer", "train", corpus, "--vocab-size", "1000", "--out", out], capsys
    )
    assert code == 1 and "use --overwrite" in text and "overwrite=True in Python" in text
    assert "pass overwrite=True" not in text
    assert (out / "keep.txt").read_text() == "earlier output"


# 6. a recipe value out of range fails before the run starts


def test_pretrain_negative_lr_fails_before_any_output(tmp_path, capsys):
    out = tmp_path / "run"
    config = REPO / "configs" / "tiny-cpu.yaml"
    code, text = run_cli(["pretrain", "--config", config, "optim.lr=-1", f"out={out}"], capsys)
    assert code == 1 and "optim.lr" in text and "> 0" in text and "-1" in text
    assert not out.exists()


# 7. an interrupted pretraining run exits 128 + the signal


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, test_data) -> dict[str, Path]:
    from chuan.data.pack import pack_corpus
    from chuan.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("signal")
    text = write_jsonl(root / "corpus.jsonl", bible_documents(test_data, 200))
    train_tokenizer(text, root / "tok", vocab_size=2000, num_threads=1, progress=False)
    pack_corpus([text], root / "tok", root / "packed", max_length=64, progress=False)
    return {"tokenizer": root / "tok", "packed": root / "packed"}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_pretrain_saves_and_exits_128_plus_the_signal(
    tmp_path, small_corpus, sig, code
):
    run = tmp_path / "run"
    recipe = pretrain_config(
        run,
        small_corpus["packed"],
        small_corpus["tokenizer"],
        checkpoint={"every": 10_000, "keep": 1},
        stages=[{"data": [str(small_corpus["packed"])], "steps": 10_000}],
    )
    config = write_config(tmp_path / "config.yaml", recipe)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chuan.cli", "pretrain", "--config", str(config)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count('"loss"') >= 2):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run did not start in time"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert "--resume auto" in out and "Traceback" not in out
    assert len(list_checkpoints(run)) == 1
    assert json.loads((run / "report.json").read_text())["status"] == "interrupted"


# 8. clients that give up on a non-streaming request


@pytest.fixture(scope="module")
def served(tmp_path_factory, test_data):
    """A uvicorn server over a tiny model, logging into the root logger (what caplog sees)."""
    from chuan.infer.engine import Engine
    from chuan.infer.loading import load_saved_tokenizer
    from chuan.infer.sampling import generation_defaults
    from chuan.infer.server import create_app
    from chuan.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("serve")
    corpus = write_jsonl(root / "corpus.jsonl", bible_documents(test_data, 100))
    train_tokenizer(corpus, root / "tok", vocab_size=1200, num_threads=1, progress=False)
    init_model_dir(root / "model", "tiny", tokenizer_dir=root / "tok", seed=5)
    model_dir = root / "model"
    engine = Engine(
        load_model(model_dir, device="cpu"),
        load_saved_tokenizer(model_dir),
        defaults=generation_defaults(model_dir),
        max_batch=8,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(engine, model_name="tiny")
    # log_config=None: uvicorn's loggers propagate to the root logger instead of stderr.
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, log_level="warning", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield engine, f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(5)
    sock.close()
    engine.close()


def test_abandoned_requests_log_no_traceback(served, caplog):
    engine, url = served
    body = {"model": "tiny", "prompt": "In the beginning", "max_tokens": 400, "temperature": 0}
    with caplog.at_level(logging.WARNING):
        for _ in range(30):
            with pytest.raises(httpx2.TimeoutException):
                httpx2.post(f"{url}/v1/completions", json=body, timeout=0.05)
        deadline = time.monotonic() + 30
        while engine.running_rows or engine.waiting_rows:
            assert time.monotonic() < deadline, "abandoned rows kept running"
            time.sleep(0.05)
        time.sleep(0.3)  # let the handlers of the last requests finish
        answer = httpx2.post(f"{url}/v1/completions", json={**body, "max_tokens": 2}, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 2
    assert httpx2.get(f"{url}/health").json()["status"] == "ok"
    assert "Traceback" not in caplog.text and "InvalidStateError" not in caplog.text, caplog.text
