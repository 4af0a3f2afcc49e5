"""`chuan eval ppl`: perplexity and bits per byte against plain forward passes scored with
`torch.nn.functional.cross_entropy` in the test, for short documents, sliding windows,
batching and the BOS rule, plus the file readers and the command line."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from chuan.cli import eval_ppl
from chuan.eval.perplexity import evaluate_perplexity
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.model.checkpoint import init_model_dir
from chuan.model.nll import sliding_windows
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import load_proto
from helpers.corpus import write_jsonl
from helpers.pretrain_fixtures import bible_documents


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, test_data) -> Path:
    """A tiny random model with the LLaMA tokenizer (no BOS added, as in Baichuan's config).

    A wide init (0.2) makes the logits depend strongly on the context, so a wrong window or
    a lost token changes the numbers far beyond the tolerances below.
    """
    root = tmp_path_factory.mktemp("ppl")
    tok = write_tokenizer_dir(
        root / "tok", load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    )
    init_model_dir(root / "model", "tiny", tokenizer_dir=tok, seed=5, initializer_range=0.2)
    return root / "model"


@pytest.fixture(scope="module")
def lm(model_dir):
    return load_model(model_dir, device="cpu"), load_saved_tokenizer(model_dir)


@pytest.fixture(scope="module")
def docs(test_data) -> list[str]:
    """Bilingual documents of about 20 to 300 tokens."""
    return [d["text"] for d in bible_documents(test_data, 20)]


def token_nats(model, seq: list[int]) -> torch.Tensor:
    """The loss of every next-token target of `seq`, from one plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq[:-1]])).logits[0]
    return F.cross_entropy(logits.double(), torch.tensor(seq[1:]), reduction="none")


def sequence(tokenizer, text: str, first: int) -> list[int]:
    return [first, *tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]


def test_short_documents_equal_one_forward_each(lm, docs):
    model, tok = lm
    texts = {"en": docs[0:6:2], "zh": docs[1:6:2]}
    report = evaluate_perplexity(model, tok, texts, batch_size=3, progress=False)
    assert report.context_token == "eos" and report.max_length == 512 == report.stride
    for name, group in texts.items():
        seqs = [sequence(tok, text, tok.eos_token_id) for text in group]
        assert max(map(len, seqs)) < 512
        stats = report.files[name]
        assert stats.documents == len(group)
        assert stats.tokens == sum(len(s) - 1 for s in seqs)  # text tokens + EOS
        assert stats.nats == pytest.approx(sum(token_nats(model, s).sum().item() for s in seqs))
        assert stats.perplexity == pytest.approx(math.exp(stats.nats / stats.tokens))
    assert report.overall.nats == pytest.approx(sum(s.nats for s in report.files.values()))


def test_bits_per_byte_counts_utf8_bytes(lm):
    model, tok = lm
    texts = {"zh": ["你好，世界。"], "en": ["Hello, world."]}
    report = evaluate_perplexity(model, tok, texts, progress=False)
    assert report.files["zh"].bytes == 18  # six CJK characters, three bytes each
    assert report.files["en"].bytes == 13
    for stats in (*report.files.values(), report.overall):
        assert stats.bits_per_byte == pytest.approx(stats.nats / (math.log(2) * stats.bytes))
    assert report.overall.bytes == 31


def test_stride_equal_to_window_scores_independent_chunks(lm, docs):
    model, tok = lm
    window = 32
    seq = sequence(tok, docs[4], tok.eos_token_id)
    assert len(seq) > 5 * window
    chunks = [seq[start : start + window + 1] for start in range(0, len(seq) - 1, window)]
    expected = sum(token_nats(model, chunk).sum().item() for chunk in chunks)
    report = evaluate_perplexity(
        model, tok, {"d": [docs[4]]}, max_length=window, stride=window, progress=False
    )
    assert report.overall.tokens == len(seq) - 1
    assert report.overall.nats == pytest.approx(expected, rel=1e-6)


def test_overlapping_windows_match_a_hand_rolled_loop(lm, docs):
    """HF's "perplexity of fixed-length models" loop, with the window's next token as target."""
    model, tok = lm
    window, stride = 32, 8
    seq = sequence(tok, docs[4], tok.eos_token_id)
    targets = len(seq) - 1
    expected, scored = 0.0, 0
    for begin in range(0, targets, stride):
        end = min(begin + window, targets)
        expected += token_nats(model, seq[begin : end + 1])[scored - begin :].sum().item()
        scored = end
        if end == targets:
            break
    assert scored == targets
    report = evaluate_perplexity(
        model, tok, {"d": [docs[4]]}, max_length=window, stride=stride, progress=False
    )
    assert report.overall.nats == pytest.approx(expected, rel=1e-6)
    chunked = evaluate_perplexity(
        model, tok, {"d": [docs[4]]}, max_length=window, stride=window, progress=False
    )
    assert abs(chunked.overall.nats - expected) > 1e-3 * expected  # the context matters


def test_stride_one_gives_every_token_the_full_window_of_context(lm, docs):
    """Independent of any window bookkeeping: target j is predicted from the last `window`
    tokens before it."""
    model, tok = lm
    window = 12
    text = docs[2][:150]
    seq = sequence(tok, text, tok.eos_token_id)
    assert len(seq) > 3 * window
    expected = sum(
        token_nats(model, seq[max(0, j - window) : j + 1])[-1].item() for j in range(1, len(seq))
    )
    report = evaluate_perplexity(
        model, tok, {"d": [text]}, max_length=window, stride=1, batch_size=16, progress=False
    )
    assert report.overall.nats == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("targets", "window", "stride"), [(1, 4, 4), (50, 8, 3), (64, 16, 16)])
def test_windows_score_each_target_once_with_enough_context(targets, window, stride):
    windows = sliding_windows(targets, window, stride)
    scored = [j for w in windows for j in range(w.first, w.end)]
    assert scored == list(range(targets))
    assert all(w.end - w.begin <= window for w in windows)
    assert all(w.first - w.begin >= window - stride for w in windows[1:])


def test_batched_equals_unbatched(lm, docs):
    model, tok = lm
    texts = {"a": docs[:5], "b": docs[5:9]}
    one = evaluate_perplexity(model, tok, texts, max_length=48, stride=16, batch_size=1)
    many = evaluate_perplexity(model, tok, texts, max_length=48, stride=16, batch_size=7)
    for name in texts:
        assert many.files[name].tokens == one.files[name].tokens
        assert many.files[name].nats == pytest.approx(one.files[name].nats, rel=1e-6)


def test_bos_leads_when_the_tokenizer_adds_it(tmp_path, model_dir, docs):
    bos_dir = shutil.copytree(model_dir, tmp_path / "bos")
    config_file = bos_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "add_bos_token": True}))
    model, tok = load_model(bos_dir, device="cpu"), load_saved_tokenizer(bos_dir)
    assert tok.encode("x")[0] == tok.bos_token_id
    report = evaluate_perplexity(model, tok, {"d": docs[:2]}, progress=False)
    assert report.context_token == "bos"
    seqs = [sequence(tok, text, tok.bos_token_id) for text in docs[:2]]
    assert report.overall.nats == pytest.approx(sum(token_nats(model, s).sum() for s in seqs))


def _cli(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="chuan eval")
    eval_ppl.register(parser.add_subparsers(dest="eval_verb", required=True))
    args = parser.parse_args(list(argv))
    args.func(args)


def test_cli_reads_txt_jsonl_parquet_and_names_bad_lines(tmp_path, model_dir, docs, lm, capsys):
    model, tok = lm
    txt = tmp_path / "doc.txt"
    txt.write_text(f"{docs[0]}\n{docs[2]}\n", encoding="utf-8")
    bad_lines = ['{"text": "unterminated', {"body": "no text field"}, {"text": ""}]
    jsonl = write_jsonl(tmp_path / "docs.jsonl", [{"text": docs[1]}, {"text": docs[3]}, *bad_lines])
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": [docs[5]]}), parquet)
    out = tmp_path / "ppl.json"
    _cli("ppl", str(model_dir), "--text", str(txt), str(jsonl), str(parquet), "--json", str(out))
    captured = capsys.readouterr()
    assert f"{jsonl}:3: invalid JSON" in captured.err
    assert f"{jsonl}:4: field 'text': missing" in captured.err
    report = json.loads(out.read_text())
    assert [(r["file"], r["line"], r["field"]) for r in report["rejected"]] == [
        (str(jsonl), 3, None),
        (str(jsonl), 4, "text"),
        (str(jsonl), 5, "text"),
    ]
    expected = {
        str(txt): [f"{docs[0]}\n{docs[2]}\n"],  # the whole file, verbatim, is one document
        str(jsonl): [docs[1], docs[3]],
        str(parquet): [docs[5]],
    }
    reference = evaluate_perplexity(model, tok, expected, progress=False).to_dict()
    assert report["files"].keys() == expected.keys()
    for name, stats in reference["files"].items():
        assert report["files"][name]["documents"] == len(expected[name])
        assert report["files"][name]["bytes"] == sum(len(t.encode()) for t in expected[name])
        assert report["files"][name]["nats"] == pytest.approx(stats["nats"])
    row = next(line for line in captured.out.splitlines() if line.startswith(f"| {jsonl} "))
    assert row.split("|")[2:4] == [" 2 ", " 3 "]  # documents, rejected
    assert f"{report['overall']['perplexity']:.2f}" in captured.out


def test_cli_lines_mode_makes_one_document_per_line(tmp_path, model_dir, docs, capsys):
    txt = tmp_path / "lines.txt"
    txt.write_text(f"{docs[0]}\n\n{docs[1]}\n", encoding="utf-8")
    out = tmp_path / "ppl.json"
    _cli("ppl", str(model_dir), "--text", str(txt), "--lines", "--json", str(out))
    stats = json.loads(out.read_text())["files"][str(txt)]
    assert stats["documents"] == 2
    assert stats["bytes"] == len(docs[0].encode()) + len(docs[1].encode())


def test_cli_without_any_document_is_an_error(tmp_path, model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="no document to score"):
        _cli("ppl", str(model_dir), "--text", str(bad))
