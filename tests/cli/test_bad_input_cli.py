"""Every verb of `chuan --help` against hostile input.

Each case runs the real command line in-process and asserts what a user must see: a non-zero
exit (1 for bad input, 2 for a flag argparse refuses), no traceback, and a message that names
the file, field or flag at fault. Cases that start from an earlier output also check that the
output is byte-for-byte unchanged afterwards. The verb-specific fixes have their own tests in
`test_bad_input_corpus.py` and `test_bad_input_models.py`; this table makes sure no verb is
left out (`test_every_verb_is_covered`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from chuan.cli import build_parser, main
from chuan.model.checkpoint import init_model_dir
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import load_proto


@dataclass(frozen=True)
class Case:
    """`argv(files)` run through `chuan`; `says` must all appear in the output; `keeps` names
    a file set up before the run whose bytes must not change."""

    verb: str
    argv: Callable[[dict], list[str]]
    says: tuple[str, ...]
    code: int = 1
    keeps: str | None = None


def _jsonl(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode()


@pytest.fixture(scope="module")
def files(tmp_path_factory, test_data) -> dict:
    """Good and hostile inputs, made once: a tiny model with a tokenizer, truncated and
    corrupt compressed files, binary and empty files, broken model dirs and configs."""
    root = tmp_path_factory.mktemp("hostile")
    tok = write_tokenizer_dir(
        root / "tok", load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    )
    init_model_dir(root / "model", "tiny", tokenizer_dir=tok, seed=1)
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog. " * 8 for i in range(40)]
    whole = _jsonl(docs)
    (root / "good.jsonl").write_bytes(whole)
    packed = zstandard.compress(whole)
    (root / "half.jsonl.zst").write_bytes(packed[: len(packed) // 2])
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        f.write(whole)
    (root / "half.jsonl.gz").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 16)
    (root / "binary.txt").write_bytes(bytes(range(256)) * 16)
    (root / "empty.txt").write_bytes(b"")
    (root / "empty_dir").mkdir()
    (root / "bad.yaml").write_text("stages: [unclosed\n")
    for name, config in (("list_config", "[1, 2]"), ("broken_config", '{"hidden_size": ')):
        init_model_dir(root / name, "tiny", vocab_size=300)
        (root / name / "config.json").write_text(config)
    init_model_dir(root / "typo_config", "tiny", vocab_size=300)
    config = json.loads((root / "typo_config" / "config.json").read_text())
    (root / "typo_config" / "config.json").write_text(json.dumps(config | {"hidden_size": "big"}))
    init_model_dir(root / "wrong_shapes", "tiny", vocab_size=300)
    config = json.loads((root / "wrong_shapes" / "config.json").read_text())
    (root / "wrong_shapes" / "config.json").write_text(json.dumps(config | {"vocab_size": 400}))
    (root / "corrupt_tok").mkdir()
    (root / "corrupt_tok" / "tokenizer.model").write_bytes(b"\x0a\xff\xff not a proto")
    init_model_dir(root / "existing", "tiny", vocab_size=300)  # an earlier output
    (root / "runs.csv").write_text("this,is,not\n1,2,3\n")
    return {name: str(root / name) for name in (p.name for p in root.iterdir())} | {
        "root": str(root)
    }


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KTO_DATA = Path(__file__).resolve().parents[1] / "data" / "preference" / "kto_en_demo.json"


def _out(f: dict, name: str) -> str:
    return str(Path(f["root"]) / "outputs" / name)


CASES = [
    # model
    Case("model init", lambda f: ["model", "init", "--preset", "tiny", "--vocab-size", "0",
         "--out", _out(f, "m0")], ("--vocab-size", ">= 1"), code=2),
    Case("model init", lambda f: ["model", "init", "--preset", "tiny", "--out", f["existing"]],
         ("existing", "--overwrite"), keeps="existing"),
    Case("model info", lambda f: ["model", "info", _out(f, "nowhere")], ("nowhere",)),
    Case("model info", lambda f: ["model", "info", f["list_config"]], ("config.json",)),
    Case("model resize", lambda f: ["model", "resize", "--model", f["broken_config"],
         "--tokenizer", f["tok"], "--out", _out(f, "resized")], ("config.json",)),
    # convert
    Case("convert", lambda f: ["convert", f["broken_config"], _out(f, "c1"), "--to", "llama"],
         ("config.json",)),
    Case("convert", lambda f: ["convert", f["typo_config"], _out(f, "c2"), "--to", "baichuan"],
         ("config.json", "hidden_size")),
    Case("convert", lambda f: ["convert", f["wrong_shapes"], _out(f, "c3"), "--to", "baichuan"],
         ("embed_tokens", "400")),
    Case("convert", lambda f: ["convert", f["model"], f["existing"], "--to", "baichuan"],
         ("--overwrite",), keeps="existing"),
    # tokenizer
    Case("tokenizer train", lambda f: ["tokenizer", "train", f["empty.txt"], "--vocab-size",
         "1000", "--out", _out(f, "t1")], ("empty.txt",)),
    Case("tokenizer train", lambda f: ["tokenizer", "train", f["good.jsonl"], "--vocab-size",
         "1000", "--out", f["existing"]], ("--overwrite",), keeps="existing"),
    Case("tokenizer train", lambda f: ["tokenizer", "train", f["good.jsonl"], "--vocab-size",
         "1000", "--character-coverage", "2", "--out", _out(f, "t2")],
         ("--character-coverage",), code=2),
    Case("tokenizer expand", lambda f: ["tokenizer", "expand", "--base", f["corrupt_tok"],
         "--train-on", f["good.jsonl"], "--add", "10", "--out", _out(f, "x1")],
         ("tokenizer.model",)),
    Case("tokenizer stats", lambda f: ["tokenizer", "stats", f["corrupt_tok"], "--text",
         f["good.jsonl"]], ("tokenizer.model",)),
    # data
    Case("data clean", lambda f: ["data", "clean", f["half.jsonl.zst"], "--out", _out(f, "d1")],
         ("half.jsonl.zst",)),
    Case("data clean", lambda f: ["data", "clean", f["half.jsonl.gz"], "--out", _out(f, "d2")],
         ("half.jsonl.gz",)),
    Case("data clean", lambda f: ["data", "clean", f["empty_dir"], "--out", _out(f, "d3")],
         ("empty_dir",)),
    Case("data dedup", lambda f: ["data", "dedup", f["good.jsonl"], "--out", _out(f, "d4"),
         "--num-perm", "0"], ("--num-perm", ">= 1"), code=2),
    Case("data dedup", lambda f: ["data", "dedup", f["good.jsonl"], "--out", _out(f, "d5"),
         "--bands", "3", "--rows", "100"], ("--bands", "--rows")),
    Case("data quality train", lambda f: ["data", "quality", "train", "--good", f["binary.jsonl"],
         "--bad", f["good.jsonl"], "--out", _out(f, "q1")], ("binary.jsonl",)),
    Case("data quality score", lambda f: ["data", "quality", "score", f["good.jsonl"], "--model",
         _out(f, "no_model"), "--out", _out(f, "q2")], ("no_model",)),
    Case("data mix", lambda f: ["data", "mix", "--config", f["bad.yaml"], "--out",
         _out(f, "mix")], ("bad.yaml",)),
    Case("data pack", lambda f: ["data", "pack", f["good.jsonl"], "--tokenizer", f["tok"],
         "--max-length", "0", "--out", _out(f, "p1")], ("--max-length", ">= "), code=2),
    Case("data pack", lambda f: ["data", "pack", f["good.jsonl"], "--tokenizer",
         f["corrupt_tok"], "--max-length", "64", "--out", _out(f, "p2")], ("tokenizer.model",)),
    # pretrain
    Case("pretrain", lambda f: ["pretrain", "--config", f["bad.yaml"]], ("bad.yaml",)),
    Case("pretrain", lambda f: ["pretrain", "--config", str(CONFIGS / "tiny-cpu.yaml"),
         "optim.lr=-1", f"out={_out(f, 'pre')}"], ("optim.lr", "> 0")),
    # sft / lora merge
    Case("sft", lambda f: ["sft", "--config", f["bad.yaml"]], ("bad.yaml",)),
    Case("sft", lambda f: ["sft", "--config", str(CONFIGS / "sft-tiny-cpu.yaml"),
         f"model={_out(f, 'no_model')}", f"out={_out(f, 'sft')}"], ("no_model",)),
    Case("sft", lambda f: ["sft", "--config", str(CONFIGS / "sft-tiny-cpu.yaml"),
         f"model={f['model']}", "finetune=bitfit", f"out={_out(f, 'sft')}"], ("finetune",)),
    Case("sft", lambda f: ["sft", "--config", str(CONFIGS / "sft-tiny-cpu.yaml"),
         f"model={f['model']}", "finetune=qlora", f"out={_out(f, 'sft')}"],
         ("qlora", "CUDA", "finetune=lora")),
    Case("sft", lambda f: ["sft", "--config", str(CONFIGS / "sft-tiny-cpu.yaml"),
         f"model={f['model']}", f"stages.0.data=[{f['binary.jsonl']}]", f"out={_out(f, 'sft')}"],
         ("binary.jsonl",)),
    Case("sft", lambda f: ["sft", "--config", str(CONFIGS / "sft-tiny-cpu.yaml"),
         f"model={f['model']}", "--inspect", "0"], ("--inspect",), code=2),
    # dpo
    Case("dpo", lambda f: ["dpo", "--config", f["bad.yaml"]], ("bad.yaml",)),
    Case("dpo", lambda f: ["dpo", "--config", str(CONFIGS / "dpo-tiny-cpu.yaml"),
         f"model={_out(f, 'no_model')}", f"out={_out(f, 'dpo')}"], ("no_model",)),
    Case("dpo", lambda f: ["dpo", "--config", str(CONFIGS / "dpo-tiny-cpu.yaml"),
         f"model={f['model']}", "loss=rlhf", f"out={_out(f, 'dpo')}"], ("loss", "sigmoid")),
    Case("dpo", lambda f: ["dpo", "--config", str(CONFIGS / "dpo-tiny-cpu.yaml"),
         f"model={f['model']}", "packing=true", f"out={_out(f, 'dpo')}"], ("packing",)),
    Case("dpo", lambda f: ["dpo", "--config", str(CONFIGS / "dpo-tiny-cpu.yaml"),
         f"model={f['model']}", "template=plain", f"stages.0.data.0.path={f['good.jsonl']}",
         f"out={_out(f, 'dpo')}"],
         ("good.jsonl", "preference data format")),
    Case("dpo", lambda f: ["dpo", "--config", str(CONFIGS / "dpo-tiny-cpu.yaml"),
         f"model={f['model']}", "template=plain", f"stages.0.data.0.path={KTO_DATA}",
         f"out={_out(f, 'dpo')}"],
         ("kto_en_demo.json", "unpaired", "loss: kto")),
    Case("dpo", lambda f: ["dpo", "--config", str(CONFIGS / "dpo-tiny-cpu.yaml"),
         f"model={f['model']}", "--inspect", "0"], ("--inspect",), code=2),
    # ppo / grpo
    Case("ppo", lambda f: ["ppo", "--config", f["bad.yaml"]], ("bad.yaml",)),
    Case("ppo", lambda f: ["ppo", "--config", str(CONFIGS / "ppo-tiny-cpu.yaml"),
         f"model={f['model']}", "template=plain", f"reward_model={_out(f, 'no_rm')}",
         f"out={_out(f, 'ppo')}"],
         ("no_rm",)),
    Case("ppo", lambda f: ["ppo", "--config", str(CONFIGS / "ppo-tiny-cpu.yaml"),
         f"model={f['model']}", "template=plain", f"reward_model={f['model']}",
         f"out={_out(f, 'ppo')}"],
         ("not a reward model",)),
    Case("ppo", lambda f: ["ppo", "--config", str(CONFIGS / "ppo-tiny-cpu.yaml"),
         f"model={f['model']}", "kl_estimator=k2", f"out={_out(f, 'ppo')}"],
         ("kl_estimator", "k1")),
    Case("grpo", lambda f: ["grpo", "--config", str(CONFIGS / "grpo-tiny-cpu.yaml"),
         f"model={f['model']}", "template=plain", "reward_function=chuan.align.rewards:nothing",
         f"out={_out(f, 'grpo')}"], ("no function 'nothing'",)),
    Case("grpo", lambda f: ["grpo", "--config", str(CONFIGS / "grpo-tiny-cpu.yaml"),
         f"model={f['model']}", "group_size=1", f"out={_out(f, 'grpo')}"], ("group_size",)),
    Case("grpo", lambda f: ["grpo", "--config", str(CONFIGS / "grpo-tiny-cpu.yaml"),
         f"model={f['model']}", "template=plain", f"stages.0.data.0.path={f['good.jsonl']}",
         f"out={_out(f, 'grpo')}"], ("good.jsonl", "prompt data format")),
    Case("grpo", lambda f: ["grpo", "--config", str(CONFIGS / "grpo-tiny-cpu.yaml"),
         f"model={f['model']}", "--inspect", "0"], ("--inspect",), code=2),
    # rm
    Case("rm train", lambda f: ["rm", "train", "--config", f["bad.yaml"]], ("bad.yaml",)),
    Case("rm train", lambda f: ["rm", "train", "--config", str(CONFIGS / "rm-tiny-cpu.yaml"),
         f"model={f['model']}", "finetune=qlora", f"out={_out(f, 'rm')}"], ("qlora",)),
    Case("rm train", lambda f: ["rm", "train", "--config", str(CONFIGS / "rm-tiny-cpu.yaml"),
         f"model={_out(f, 'no_model')}", f"out={_out(f, 'rm')}"], ("no_model",)),
    Case("rm score", lambda f: ["rm", "score", f["model"], f["good.jsonl"], "--out",
         _out(f, "scores.jsonl")], ("not a reward model",)),
    Case("rm score", lambda f: ["rm", "score", _out(f, "no_model"), f["good.jsonl"], "--out",
         _out(f, "scores.jsonl")], ("no_model",)),
    Case("rm score", lambda f: ["rm", "score", f["model"], f["good.jsonl"], "--out",
         _out(f, "scores.jsonl"), "--batch-size", "0"], ("--batch-size",), code=2),
    Case("lora merge", lambda f: ["lora", "merge", f["model"], f["model"], "--out",
         _out(f, "merged")], ("adapter_config.json",)),
    Case("lora merge", lambda f: ["lora", "merge", _out(f, "no_model"), f["model"], "--out",
         _out(f, "merged")], ("no_model",)),
    # generate / chat
    Case("generate", lambda f: ["generate", f["model"], "--prompt", "word " * 3000],
         ("context",)),
    Case("generate", lambda f: ["generate", f["broken_config"], "--prompt", "hi"],
         ("config.json",)),
    Case("generate", lambda f: ["generate", f["model"], "--prompt", "hi", "--top-p", "1.5"],
         ("--top-p", "<= 1"), code=2),
    Case("chat", lambda f: ["chat", _out(f, "no_model")], ("no_model",)),
    Case("chat", lambda f: ["chat", f["model"], "--temperature", "-1"], ("--temperature",),
         code=2),
    # quantize
    Case("quantize", lambda f: ["quantize", f["model"], _out(f, "q3"), "--bits", "4",
         "--group-size", "0"], ("--group-size",), code=2),
    Case("quantize", lambda f: ["quantize", f["model"], _out(f, "q4"), "--bits", "8",
         "--eval-text", f["binary.txt"]], ("binary.txt",)),
    Case("quantize", lambda f: ["quantize", f["model"], f["existing"], "--bits", "8"],
         ("--overwrite",), keeps="existing"),
    # eval
    Case("eval mcq", lambda f: ["eval", "mcq", f["model"], "--task", "cmmlu", "--data",
         f["empty_dir"]], ("empty_dir",)),
    Case("eval mcq", lambda f: ["eval", "mcq", f["model"], "--task", "cmmlu", "--data",
         f["empty_dir"], "--shots", "-1"], ("--shots",), code=2),
    Case("eval ppl", lambda f: ["eval", "ppl", f["model"], "--text", f["good.jsonl"],
         "--stride", "0"], ("--stride",), code=2),
    Case("eval ppl", lambda f: ["eval", "ppl", f["model"], "--text", f["half.jsonl.gz"]],
         ("half.jsonl.gz",)),
    Case("eval harness", lambda f: ["eval", "harness", f["model"], "--tasks", "x",
         "--num-fewshot", "-2"], ("--num-fewshot",), code=2),
    # scaling
    Case("scaling sweep", lambda f: ["scaling", "sweep", "--config", f["bad.yaml"]],
         ("bad.yaml",)),
    Case("scaling fit", lambda f: ["scaling", "fit", f["runs.csv"]], ("runs.csv",)),
    # serve
    Case("serve", lambda f: ["serve", f["model"], "--port", "70000"], ("--port", "65535"),
         code=2),
    Case("serve", lambda f: ["serve", _out(f, "no_model")], ("no_model",)),
    Case("serve", lambda f: ["serve", f["model"], "--runs", _out(f, "no_runs")],
         ("--runs", "no_runs", "not a directory")),
    # quickstart
    Case("quickstart", lambda f: ["quickstart", "--minutes", "0", "--out", _out(f, "qs")],
         ("--minutes",), code=2),
    Case("quickstart", lambda f: ["quickstart", "--until", "nothing", "--out", _out(f, "qs")],
         ("nothing",)),
    # rag
    Case("rag index", lambda f: ["rag", "index", f["half.jsonl.zst"], "--out", _out(f, "kb1")],
         ("half.jsonl.zst",)),
    Case("rag index", lambda f: ["rag", "index", f["good.jsonl"], "--out", f["existing"]],
         ("existing", "--overwrite"), keeps="existing"),
    Case("rag index", lambda f: ["rag", "index", f["good.jsonl"], "--chunk-chars", "50",
         "--overlap", "50", "--out", _out(f, "kb2")], ("--overlap", "below --chunk-chars")),
    Case("rag index", lambda f: ["rag", "index", f["good.jsonl"], "--dense",
         _out(f, "no_model"), "--out", _out(f, "kb3")], ("no_model", "no such model dir")),
    Case("rag index", lambda f: ["rag", "index", f["good.jsonl"], "--add", "--out",
         _out(f, "no_kb")], ("no_kb", "chuan rag index")),
    Case("rag search", lambda f: ["rag", "search", _out(f, "no_kb"), "query"],
         ("no_kb", "manifest.json", "chuan rag index")),
    Case("rag search", lambda f: ["rag", "search", f["existing"], "q", "--threshold", "2"],
         ("--threshold", "<= 1"), code=2),
    Case("rag make-qa", lambda f: ["rag", "make-qa", f["good.jsonl"], "--out",
         _out(f, "qa.jsonl")], ("nothing to ask",)),
    Case("rag eval", lambda f: ["rag", "eval", _out(f, "no_kb"), f["good.jsonl"], "--out",
         _out(f, "ev")], ("no_kb", "chuan rag index")),
    Case("rag ask", lambda f: ["rag", "ask", f["model"], _out(f, "no_kb"), "q"],
         ("no_kb", "chuan rag index")),
    Case("rag ask", lambda f: ["rag", "ask", f["model"], f["existing"], "q", "--cite-threshold",
         "1.5"], ("--cite-threshold", "<= 1"), code=2),
    Case("chat", lambda f: ["chat", f["model"], "--kb", _out(f, "no_kb")],
         ("no_kb", "chuan rag index")),
    Case("serve", lambda f: ["serve", f["model"], "--kb", _out(f, "no_kb")],
         ("no_kb", "chuan rag index")),
]  # fmt: skip


def _digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[f"{c.verb}-{i}" for i, c in enumerate(CASES)])
def test_hostile_input_gets_a_message_not_a_traceback(case, files, capsys):
    kept = Path(files[case.keeps]) if case.keeps else None
    before = _digest(kept) if kept else None
    with pytest.raises(SystemExit) as stopped:
        main(case.argv(files))
    captured = capsys.readouterr()
    said = f"{captured.out}\n{captured.err}\n{stopped.value.code}"
    assert stopped.value.code not in (0, None), said
    expected_code = 2 if case.code == 2 else 1
    assert (stopped.value.code if isinstance(stopped.value.code, int) else 1) == expected_code
    assert "Traceback" not in said
    for words in case.says:
        assert words in said, f"{words!r} not in: {said}"
    if kept:
        assert _digest(kept) == before, f"{kept} changed"


def _verbs(parser, prefix: str = "") -> set[str]:
    found = set()
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                inner = _verbs(sub, f"{prefix}{name} ")
                found |= inner or {f"{prefix}{name}"}
    return found


def test_every_verb_is_covered():
    assert _verbs(build_parser()) == {case.verb for case in CASES}
