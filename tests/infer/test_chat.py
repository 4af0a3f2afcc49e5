"""Chat: incremental detokenisation of Chinese, Baichuan 2's prompt builder by hand and
against the stored chat template, `chat` / `stream_chat` / `model.chat`, and `chuan chat`
fed through stdin."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from chuan.cli import main
from chuan.infer.chat import build_chat_input, chat, default_config, stream_chat
from chuan.infer.generate import SamplingConfig, generate
from chuan.infer.loading import load_model
from chuan.infer.text import TextStream
from chuan.model.checkpoint import init_model_dir
from chuan.tokenizer.hf import load_tokenizer
from chuan.tokenizer.train import train_tokenizer

USER, ASSISTANT, EOS = 195, 196, 2
ZH_TEXTS = [
    "我们今天去看龘靐的电影吧, okay? 你好",
    "鼹鼠🦙在今晚 12:30 出发。\n  第二行   spaces",
]
GREEDY = SamplingConfig(max_new_tokens=12, stop_token_ids=(2,))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, test_data) -> Path:
    """A Baichuan 2-style tokenizer trained on 300 Tatoeba pairs: rare characters fall back
    to UTF-8 byte pieces, and ids 195/196 are the role pieces `<reserved_106/107>`."""
    root = tmp_path_factory.mktemp("zh_tok")
    lines = []
    source = test_data / "text" / "parallel" / "tatoeba_cmn_eng.txt"
    with open(source, encoding="utf-8-sig") as f:
        for _, line in zip(range(300), f, strict=False):
            lines += line.split("\t")[:2]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    train_tokenizer(root / "corpus.txt", root / "tok", vocab_size=1200, progress=False)
    return root / "tok"


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok_dir) -> Path:
    """A random tiny model dir (init std 0.1, so replies vary) with that tokenizer."""
    out = tmp_path_factory.mktemp("chat_model") / "tiny"
    init_model_dir(out, "tiny", tokenizer_dir=tok_dir, seed=7, initializer_range=0.1)
    return out


# --- incremental detokenisation ---------------------------------------------------------


def _stream(tokenizer, ids: list[int], **kwargs) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, **kwargs)
    pieces = [stream.push(i) for i in ids]
    return [*pieces, stream.flush()], stream


def test_text_stream_rebuilds_chinese_with_byte_fallback(tok_dir, test_data):
    llama = test_data / "tokenizers" / "llama" / "tokenizer.model"
    tokenizers = [
        load_tokenizer(tok_dir),
        load_tokenizer(tok_dir, use_fast=False),
        load_tokenizer(llama),  # a dummy prefix: decode drops the first space
    ]
    for tokenizer in tokenizers:
        for text in ZH_TEXTS:
            ids = [1, *tokenizer.encode(text, add_special_tokens=False), 2]
            assert any(p.startswith("<0x") for p in tokenizer.convert_ids_to_tokens(ids))
            pieces, _ = _stream(tokenizer, ids)
            assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
            assert not any("\ufffd" in p for p in pieces)
            one_by_one = "".join(tokenizer.decode([i]) for i in ids)
            assert "\ufffd" in one_by_one  # what naive streaming would have shown
    assert load_tokenizer(tok_dir).convert_ids_to_tokens(
        load_tokenizer(tok_dir).encode("龘", add_special_tokens=False)
    ) == ["<0xE9>", "<0xBE>", "<0x98>"]


def test_text_stream_stop_strings(tok):
    ids = tok.encode("你好世界。再见世界", add_special_tokens=False)
    pieces, stream = _stream(tok, ids, stop_strings=["。再", "xyz"])
    assert "".join(pieces) == "你好世界" and stream.stopped
    assert not any("。" in p for p in pieces)
    pieces, stream = _stream(tok, ids, stop_strings=["世界!"])
    assert "".join(pieces) == "你好世界。再见世界" and not stream.stopped
    held = TextStream(tok, stop_strings=["界。"])
    shown = "".join(held.push(i) for i in tok.encode("你好世界", add_special_tokens=False))
    assert shown == "你好世" and held.flush() == "界"


# --- the prompt ---------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "你是助手。"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！有什么事？"},
    {"role": "user", "content": "我爱    编程"},
    {"role": "assistant", "content": "很好。"},
    {"role": "user", "content": "再见"},
]


def _by_hand(tok, messages: list[dict]) -> tuple[list[int], list[list[int]]]:
    """System ids and each round's ids, written out from b.3."""
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    role = {"user": USER, "assistant": ASSISTANT}
    system, rounds = enc(messages[0]["content"]), []
    for m in messages[1:]:
        if m["role"] == "user":
            rounds.append([])
        rounds[-1] += [role[m["role"]], *enc(m["content"])]
    return system, rounds


def _prompt(tok, messages: list[dict], max_input: int) -> list[int]:
    """`build_chat_input` with room for exactly `max_input` prompt tokens."""
    return build_chat_input(tok, messages, 4096 - max_input, 4096)


def test_build_chat_input_budget_and_truncation(tok):
    system, (r1, r2, r3) = _by_hand(tok, CONVERSATION)
    full = system + r1 + r2 + r3 + [ASSISTANT]
    assert build_chat_input(tok, CONVERSATION, 100, 4096) == full
    # Every round fits the history budget, but the appended assistant id then overflows
    # max_input, and the left truncation cuts the first system token.
    assert _prompt(tok, CONVERSATION, len(full) - 1) == full[1:]
    # One token less: the oldest round no longer fits.
    assert _prompt(tok, CONVERSATION, len(full) - 2) == system + r2 + r3 + [ASSISTANT]
    # r2 does not fit but the older, shorter r1 would: the walk stops at the first misfit.
    assert len(r1) < len(r2)
    max_input = len(system) + len(r3) + len(r1)
    assert _prompt(tok, CONVERSATION, max_input) == system + r3 + [ASSISTANT]
    # The newest round alone is over budget: kept anyway, then cut from the left.
    max_input = len(r3) - 1
    assert _prompt(tok, CONVERSATION, max_input) == (system + r3 + [ASSISTANT])[-max_input:]


def test_build_chat_input_says_what_it_leaves_out(tok, caplog):
    system, (r1, r2, r3) = _by_hand(tok, CONVERSATION)
    full = system + r1 + r2 + r3 + [ASSISTANT]
    with caplog.at_level(logging.INFO, logger="chuan.infer.chat"):
        _prompt(tok, CONVERSATION, len(full))
        assert not caplog.records  # everything fits: nothing to say
        _prompt(tok, CONVERSATION, len(full) - 2)
        assert "1 earlier round(s) left out" in caplog.text
        caplog.clear()
        _prompt(tok, CONVERSATION, len(r3) - 1)
        assert "2 earlier round(s) left out" in caplog.text
        dropped = len(system + r3) + 1 - (len(r3) - 1)
        assert f"its first {dropped} tokens are dropped" in caplog.text


def test_build_chat_input_details(tok):
    system, (r1, r2) = _by_hand(tok, CONVERSATION[:5])
    # Last message from the assistant: no assistant id appended; no EOS after answers.
    assert build_chat_input(tok, CONVERSATION[:5], 10, 4096) == system + r1 + r2
    # No system message: nothing before the first round.
    question = [USER, *tok.encode(CONVERSATION[3]["content"], add_special_tokens=False)]
    assert build_chat_input(tok, CONVERSATION[1:4], 10, 4096) == r1 + question + [ASSISTANT]
    with pytest.raises(ValueError, match="message 2: a system message may only come first"):
        build_chat_input(tok, [*CONVERSATION[1:3], CONVERSATION[0]], 10, 4096)
    with pytest.raises(ValueError, match="message 0: role must be one of"):
        build_chat_input(tok, [{"role": "human", "content": "hi"}], 10, 4096)
    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        build_chat_input(tok, CONVERSATION, 4096, 4096)


def test_tokenizer_without_role_pieces_is_refused(test_data):
    llama = load_tokenizer(test_data / "tokenizers" / "llama" / "tokenizer.model")
    with pytest.raises(ValueError, match="id 195 is '<0xC0>', not a <reserved_N> piece"):
        build_chat_input(llama, CONVERSATION, 10, 4096)


@pytest.mark.parametrize("use_fast", [True, False])
def test_stored_chat_template_gives_the_same_ids(tok_dir, use_fast):
    tokenizer = load_tokenizer(tok_dir, use_fast=use_fast)
    for messages in (CONVERSATION, CONVERSATION[:5], CONVERSATION[1:4]):
        # A prompt: after a question the assistant id; after an answer nothing (Baichuan's
        # chat continues it), and no EOS either way.
        template = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        assert template["input_ids"] == build_chat_input(tokenizer, messages, 10, 4096)
    # The training form of a finished conversation ends with EOS (Baichuan 2 fine-tune.py).
    finished = tokenizer.apply_chat_template(CONVERSATION[:5])["input_ids"]
    assert finished == [*build_chat_input(tokenizer, CONVERSATION[:5], 10, 4096), EOS]


# --- replies --------------------------------------------------------------------------------


def test_chat_reply_is_the_decoded_generation(model_dir, tok):
    model = load_model(model_dir)
    messages = CONVERSATION[:2]
    prompt = build_chat_input(tok, messages, GREEDY.max_new_tokens, model.config.model_max_length)
    ids = generate(model, [prompt], GREEDY)[0]
    assert len(ids) > 3
    expected = tok.decode(ids, skip_special_tokens=True)
    assert chat(model, tok, messages, GREEDY) == expected
    assert "".join(stream_chat(model, tok, messages, GREEDY)) == expected
    assert model.chat(tok, messages, GREEDY) == expected
    assert "".join(model.stream_chat(tok, messages, GREEDY)) == expected


def test_chat_defaults_come_from_the_dir(model_dir, tok, tmp_path):
    model = load_model(model_dir)
    assert default_config(model, tok).temperature == 0.3  # no sampling fields: Baichuan 2's
    own = tmp_path / "own"
    own.mkdir()
    (own / "generation_config.json").write_text(json.dumps({"do_sample": False, "top_k": 3}))
    model.name_or_path = str(own)
    assert default_config(model, tok) == SamplingConfig(
        max_new_tokens=2048,
        temperature=0.0,
        top_k=3,
        top_p=0.85,
        repetition_penalty=1.05,
        stop_token_ids=(2,),
    )


def test_reply_budget_is_cut_to_half_the_context(model_dir, tok, caplog):
    """Baichuan 2's default of 2048 new tokens would leave a 512-token model no prompt."""
    model = load_model(model_dir)
    cfg = SamplingConfig(max_new_tokens=2048, stop_token_ids=(2,))
    chat(model, tok, CONVERSATION[:2], cfg)
    assert "max_new_tokens=2048 cut to 256" in caplog.text


def test_chat_cli_with_piped_stdin(model_dir, tok, monkeypatch, capsys):
    lines = "你好\n/system 你是助手。\n\n我爱编程\n/clear\n你好\n/exit\n再见\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    main(["chat", str(model_dir), "--temperature", "0", "--max-new-tokens", "12"])
    out, err = capsys.readouterr()

    model = load_model(model_dir)
    cfg = SamplingConfig(
        max_new_tokens=12,
        temperature=0.0,
        top_k=5,
        top_p=0.85,
        repetition_penalty=1.05,
        stop_token_ids=(2,),
    )
    system = {"role": "system", "content": "你是助手。"}
    first = chat(model, tok, [{"role": "user", "content": "你好"}], cfg)
    second = chat(
        model,
        tok,
        [
            system,
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "我爱编程"},
        ],
        cfg,
    )
    third = chat(model, tok, [system, {"role": "user", "content": "你好"}], cfg)
    assert out == f"{first}\n{second}\n{third}\n"
    assert "temperature=0.0" in err and "(conversation cleared)" in err
