"""HF tokenizer classes: golden ids from llama.cpp and llama-tokenizer-js, parity with
`sentencepiece` itself on mixed zh/en/code text, loading without remote code, chat template."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import jinja2
import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

import chuan  # noqa: F401  (registers the tokenizer classes)
from chuan.model import preset_config
from chuan.tokenizer.hf import (
    BaichuanTokenizer,
    BaichuanTokenizerFast,
    load_tokenizer,
    write_tokenizer_dir,
)
from chuan.tokenizer.spm import ModelProto, load_proto

pytestmark = pytest.mark.interop  # CI runs these on the oldest supported transformers too

MIXED_TEXTS = [
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x  +  1\n\tif x:\n\t\tpass  # two tabs\n        deep()",
    "  leading, trailing and   inner   spaces  ",
    "数字 1234567890、3.14159 与 2023年9月6日",
    "emoji 🦙🚀👍🏽 and a ZWJ family 👨\u200d👩\u200d👧",
    "rare CJK 𠀀𪚥龘靐 and full-width ＡＢＣ１２３",
    "混合 mixed 文本 text\n\n第二段 second paragraph\r\n",
    "角色<reserved_106>标记<reserved_107>",
    "",
    " ",
    "\n",
    "a" * 40 + " " * 9 + "b",
]
BAICHUAN2_CONFIG = {  # the shape of a released Baichuan 2 tokenizer_config.json
    "add_bos_token": False,
    "add_eos_token": False,
    "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
    "clean_up_tokenization_spaces": False,
    "model_max_length": 4096,
    "sp_model_kwargs": {},
    "tokenizer_class": "BaichuanTokenizer",
    "use_fast": False,
    **{
        key: {
            "__type": "AddedToken",
            "content": content,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": True,
        }
        for key, content in [
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
            ("pad_token", "<unk>"),
            ("unk_token", "<unk>"),
        ]
    },
}


@pytest.fixture(scope="module")
def llama_model(test_data) -> Path:
    return test_data / "tokenizers" / "llama" / "tokenizer.model"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, llama_model) -> dict[str, Path]:
    """The LLaMA model as: a bare dir, a chuan tokenizer dir, a released-Baichuan-2-shaped dir
    and a chuan model dir (config.json + tokenizer.model)."""
    root = tmp_path_factory.mktemp("llama_tok")
    out = {name: root / name for name in ("bare", "baichuan2", "model")}
    for path in out.values():
        path.mkdir()
        shutil.copy(llama_model, path / "tokenizer.model")
    out["chuan"] = write_tokenizer_dir(root / "chuan", load_proto(llama_model))
    config = json.dumps(BAICHUAN2_CONFIG, indent=2)
    (out["baichuan2"] / "tokenizer_config.json").write_text(config, encoding="utf-8")
    preset_config("tiny").save_pretrained(out["model"])
    return out


LOADERS = {
    "auto-chuan": lambda d: AutoTokenizer.from_pretrained(d["chuan"]),
    "auto-baichuan2-use_fast=False": lambda d: AutoTokenizer.from_pretrained(
        d["baichuan2"], use_fast=False
    ),
    "auto-model-dir": lambda d: AutoTokenizer.from_pretrained(d["model"]),
    "load-fast-bare": lambda d: load_tokenizer(d["bare"]),
    "load-slow-bare": lambda d: load_tokenizer(d["bare"], use_fast=False),
    "load-slow-chuan": lambda d: load_tokenizer(d["chuan"], use_fast=False),
    "load-fast-file": lambda d: load_tokenizer(d["bare"] / "tokenizer.model"),
    "slow-baichuan2": lambda d: BaichuanTokenizer.from_pretrained(d["baichuan2"]),
}


@pytest.fixture(scope="module", params=sorted(LOADERS))
def llama_tok(request, dirs):
    return LOADERS[request.param](dirs)


def test_llama_cpp_cases(llama_tok, test_data):
    """llama.cpp's llama-spm cases: ids without BOS, with SentencePiece's dummy prefix."""
    base = test_data / "tokenizers" / "llama" / "ggml-vocab-llama-spm.gguf"
    texts = Path(f"{base}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = Path(f"{base}.out").read_text(encoding="utf-8").split("\n")
    # Every case, the last included, ends with the separator / a newline.
    assert texts.pop() == "" and lines.pop() == ""
    assert len(texts) == len(lines) == 46
    for text, line in zip(texts, lines, strict=True):
        assert llama_tok.encode(text) == [int(i) for i in line.split()], repr(text)


@pytest.mark.parametrize("cls", [BaichuanTokenizer, BaichuanTokenizerFast])
def test_llama_tokenizer_js_vectors_with_bos(cls, dirs, test_data):
    vectors = json.loads(
        (test_data / "tokenizers" / "llama" / "llama_tokenizer_js_vectors.json").read_text()
    )
    tok = cls.from_pretrained(dirs["chuan"], add_bos_token=True)
    assert len(vectors) == 12
    for vector in vectors:
        assert tok.encode(vector["text"]) == vector["ids"], vector["text"]
    ids = tok("Hello", return_special_tokens_mask=True)
    assert ids["special_tokens_mask"] == [1] + [0] * (len(ids["input_ids"]) - 1)


def test_auto_tokenizer_resolves_without_remote_code(dirs):
    """Released Baichuan 2 dirs name `BaichuanTokenizer` with an `auto_map`; chuan model dirs
    have model_type "baichuan" and no tokenizer config. transformers v5 always gives the fast
    class from `AutoTokenizer`, whatever `use_fast` says."""
    for name in ("chuan", "baichuan2", "model"):
        for use_fast in (True, False):
            tok = AutoTokenizer.from_pretrained(dirs[name], use_fast=use_fast)
            assert type(tok) is BaichuanTokenizerFast, (name, use_fast)
            assert (tok.add_bos_token, tok.add_eos_token) == (False, False)
            assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (
                0,
                0,
                1,
                2,
            )
            assert tok.model_max_length == 4096


def _variant(proto: ModelProto, **normalizer) -> ModelProto:
    out = ModelProto()
    out.CopyFrom(proto)
    for key, value in normalizer.items():
        setattr(out.normalizer_spec, key, value)
    return out


def _trained_proto(test_data) -> ModelProto:
    """A small Baichuan 2-style BPE model (no normalisation, no dummy prefix, byte fallback,
    split digits, whitespace pieces) with the role pieces as user-defined symbols."""
    lines = []
    text = test_data / "text" / "parallel" / "tatoeba_cmn_eng.txt"
    with open(text, encoding="utf-8-sig") as f:
        for _, line in zip(range(400), f, strict=False):
            lines += line.split("\t")[:2]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=1000,  # room for the 256 byte pieces and ~580 characters
        character_coverage=0.9999,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        byte_fallback=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["<reserved_106>", "<reserved_107>", "\u2581" * 4],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    proto = ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, test_data) -> Path:
    return write_tokenizer_dir(tmp_path_factory.mktemp("chat") / "tok", _trained_proto(test_data))


def _protos(test_data, llama_model) -> dict[str, ModelProto]:
    llama = load_proto(llama_model)
    nfkc = load_proto(test_data / "tokenizers" / "chinese_llama" / "chinese_sp.model")
    return {
        "llama": llama,
        "no-dummy-prefix": _variant(llama, add_dummy_prefix=False),
        "remove-extra-whitespaces": _variant(llama, remove_extra_whitespaces=True),
        "no-prefix-remove-ws": _variant(
            llama, add_dummy_prefix=False, remove_extra_whitespaces=True
        ),
        "nmt_nfkc": _variant(
            llama,
            name="nmt_nfkc",
            precompiled_charsmap=nfkc.normalizer_spec.precompiled_charsmap,
            remove_extra_whitespaces=True,
        ),
    }


def _assert_parity(directory: Path, tokenizers: list) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    for text in MIXED_TEXTS:
        expected = sp.encode(text)
        for tok in tokenizers:
            ids = tok.encode(text)
            assert ids == expected, (type(tok).__name__, text)
            assert tok.decode(ids) == sp.decode(ids), (type(tok).__name__, text)


def test_parity_with_sentencepiece_across_normalizer_settings(
    tmp_path, test_data, llama_model, chat_dir
):
    """Slow, fast and sentencepiece agree for LLaMA's settings, each normaliser flag flipped,
    an NFKC character map, and a Baichuan 2-style model with user-defined symbols."""
    for name, proto in _protos(test_data, llama_model).items():
        directory = write_tokenizer_dir(tmp_path / name, proto)
        _assert_parity(directory, [load_tokenizer(directory, use_fast=f) for f in (True, False)])
    chat = [load_tokenizer(chat_dir, use_fast=f) for f in (True, False)]
    _assert_parity(chat_dir, [*chat, AutoTokenizer.from_pretrained(chat_dir)])


def test_parity_for_bare_and_released_layouts(dirs):
    for name in ("bare", "baichuan2"):
        tokenizers = [load_tokenizer(dirs[name], use_fast=f) for f in (True, False)]
        if name == "baichuan2":
            tokenizers.append(AutoTokenizer.from_pretrained(dirs[name], use_fast=False))
        _assert_parity(dirs[name], tokenizers)


def test_slow_decode_keeps_special_tokens_verbatim(dirs):
    sp = spm.SentencePieceProcessor(model_file=str(dirs["bare"] / "tokenizer.model"))
    tok = load_tokenizer(dirs["bare"], use_fast=False)
    ids = sp.encode("你好 world")
    assert tok.decode([1, *ids, 2]) == "<s>" + sp.decode(ids) + "</s>"
    assert tok.decode([1, *ids, 2], skip_special_tokens=True) == sp.decode(ids)


CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Translate: 我爱    编程"},
]


def _expected_chat_ids(sp: spm.SentencePieceProcessor, messages: list[dict]) -> list[int]:
    """Baichuan 2's `build_chat_input`, written out: system text, then role id + content."""
    role_ids = {
        "user": sp.piece_to_id("<reserved_106>"),
        "assistant": sp.piece_to_id("<reserved_107>"),
    }
    ids = []
    for message in messages:
        role = [] if message["role"] == "system" else [role_ids[message["role"]]]
        ids += role + sp.encode(message["content"])
    return ids


@pytest.fixture(scope="module", params=["USER_DEFINED", "CONTROL"])
def role_dir(request, chat_dir, tmp_path_factory) -> Path:
    """The chat model as trained (role pieces user-defined) and with them as control pieces."""
    if request.param == "USER_DEFINED":
        return chat_dir
    proto = load_proto(chat_dir)
    for piece in proto.pieces:
        if piece.piece in ("<reserved_106>", "<reserved_107>"):
            piece.type = ModelProto.SentencePiece.CONTROL
    return write_tokenizer_dir(tmp_path_factory.mktemp("control") / "tok", proto)


@pytest.mark.parametrize("use_fast", [True, False])
def test_chat_template_ids(role_dir, use_fast):
    """System as plain tokens, each turn as its role id + content, no EOS after past answers,
    EOS after the last, generation prompt = the assistant id."""
    sp = spm.SentencePieceProcessor(model_file=str(role_dir / "tokenizer.model"))
    assistant = sp.piece_to_id("<reserved_107>")
    assert sp.id_to_piece(assistant) == "<reserved_107>" and assistant != sp.unk_id()

    tok = load_tokenizer(role_dir, use_fast=use_fast)
    prompt = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]
    assert prompt == _expected_chat_ids(sp, CONVERSATION) + [assistant]
    # A finished conversation (the training form) ends with EOS, not after past answers.
    history = tok.apply_chat_template(CONVERSATION[:3])["input_ids"]
    assert history == _expected_chat_ids(sp, CONVERSATION[:3]) + [sp.eos_id()]
    with pytest.raises(jinja2.TemplateError, match="system message may only come first"):
        tok.apply_chat_template([CONVERSATION[1], CONVERSATION[0]])


def test_written_config(chat_dir, dirs):
    chat = json.loads((chat_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    llama = json.loads((dirs["chuan"] / "tokenizer_config.json").read_text(encoding="utf-8"))
    for config in (chat, llama):
        assert config["tokenizer_class"] == "BaichuanTokenizer"
        assert (config["add_bos_token"], config["add_eos_token"]) == (False, False)
        assert config["model_max_length"] == 4096 and config["pad_token"] == "<unk>"
    assert "chat_template" in chat and "chat_template" not in llama  # LLaMA has no role pieces
    special_map = json.loads((dirs["chuan"] / "special_tokens_map.json").read_text())
    assert {k: v["content"] for k, v in special_map.items()} == {
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<unk>",
    }


@pytest.mark.parametrize("use_fast", [True, False])
def test_save_pretrained_round_trip(tmp_path, chat_dir, use_fast):
    """BOS/EOS flags, user-defined symbols and the chat template survive save → load."""
    tok = load_tokenizer(chat_dir, use_fast=use_fast)
    tok.add_eos_token = True
    if use_fast:
        tok.update_post_processor()
    tok.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "tokenizer.json").exists()
    text = "Translate: 我爱    编程<reserved_106>"
    for reloaded in (load_tokenizer(tmp_path / "saved", use_fast=f) for f in (True, False)):
        assert reloaded.encode(text) == tok.encode(text)
        assert reloaded.encode(text)[-1] == tok.eos_token_id
        assert reloaded.apply_chat_template(CONVERSATION) == tok.apply_chat_template(CONVERSATION)


def test_load_errors(tmp_path, test_data):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_tokenizer(tmp_path)
    unigram = test_data / "tokenizers" / "chinese_llama" / "chinese_sp.model"
    with pytest.raises(ValueError, match="UNIGRAM.*use_fast=False"):
        load_tokenizer(unigram)
    sp = spm.SentencePieceProcessor(model_file=str(unigram))
    assert load_tokenizer(unigram, use_fast=False).encode("你好，世界") == sp.encode("你好，世界")


def test_tied_scores_warn_and_slow_stays_exact(test_data, llama_model):
    """Chinese-LLaMA-2 appended 23,296 pieces all scoring 0; SentencePiece breaks the ties
    leftmost-first, which ranked merges cannot, so the fast tokenizer warns."""
    expanded = test_data / "tokenizers" / "chinese_llama" / "chinese_llama2_tokenizer.model"
    text = "在 Debian 这种规模的项目中"  # SentencePiece: ▁这 | 种; rank order: ▁ | 这种
    with pytest.warns(UserWarning, match="share their score.*use_fast=False"):
        load_tokenizer(expanded)
    sp = spm.SentencePieceProcessor(model_file=str(expanded))
    assert load_tokenizer(expanded, use_fast=False).encode(text) == sp.encode(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LLaMA's only ties are runs of ▁, which are harmless
        load_tokenizer(llama_model)
