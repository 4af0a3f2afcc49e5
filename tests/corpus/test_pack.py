"""`chuan data pack` on real bilingual text, checked against an independent reference: each
document tokenized alone by SentencePiece itself, spliced by a plain-Python chunker, and (for
the loss) run alone through a tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from datasets import List, Value

from chuan.data.pack import bin_bounds, labels_from_row, pack_corpus
from chuan.model import BaichuanForCausalLM, preset_config
from chuan.model.loss import IGNORE_INDEX
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import load_proto, load_sentencepiece
from helpers.corpus import write_jsonl

BOS, EOS, PAD = 1, 2, 0  # LLaMA's ids; pad is <unk>, as Baichuan pads


def _tatoeba(test_data, start: int, count: int) -> list[tuple[str, str]]:
    path = test_data / "text" / "parallel" / "tatoeba_cmn_eng.txt"
    lines = path.read_text(encoding="utf-8-sig").splitlines()[start : start + count]
    return [tuple(line.split("\t")[:2]) for line in lines]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, test_data) -> Path:
    out = tmp_path_factory.mktemp("tok") / "llama"
    write_tokenizer_dir(out, load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model"))
    return out


@pytest.fixture(scope="module")
def sp(tokenizer_dir):
    return load_sentencepiece(tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, test_data) -> Path:
    """Long English web pages, short Chinese lines (.txt) and Colossal en->zh records, one in
    four with an empty source; one page holds special-token strings as plain text."""
    root = tmp_path_factory.mktemp("corpus")
    c4 = (test_data / "text" / "en" / "c4_demo.jsonl").read_text(encoding="utf-8")
    web = [{"text": json.loads(line)["text"], "category": "web"} for line in c4.splitlines()[:30]]
    web.append(
        {"text": "A literal </s> or <s> in a page is text, not a marker.", "category": "web"}
    )
    write_jsonl(root / "web.jsonl", web)
    pairs = _tatoeba(test_data, 0, 140)
    (root / "zh.txt").write_text("".join(zh + "\n" for _, zh in pairs[:60]), encoding="utf-8")
    qa = [
        {"source": "" if i % 4 == 0 else en, "target": zh, "category": "qa"}
        for i, (en, zh) in enumerate(pairs[60:])
    ]
    write_jsonl(root / "qa.jsonl", qa)
    return root


def reference_documents(corpus: Path, sp) -> dict[str, list[tuple[list[int], list[int]]]]:
    """`(ids, loss mask)` of every document, per category in input order, via SentencePiece."""
    docs: dict[str, list] = {}
    for path in sorted(corpus.iterdir()):
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [{"text": x} if path.suffix == ".txt" else json.loads(x) for x in lines]
        for r in records:
            if "target" in r:
                source = sp.encode(r["source"])
                ids = [BOS, *source, *sp.encode(r["target"]), EOS]
                masked = 1 + len(source) if source else 0
            else:
                ids, masked = [*sp.encode(r["text"]), EOS], 0
            mask = [0] * masked + [1] * (len(ids) - masked)
            docs.setdefault(r.get("category", "default"), []).append((ids, mask))
    return docs


def reference_rows(docs: list[tuple[list[int], list[int]]], length: int) -> list[tuple]:
    """Concatenate, cut every `length` tokens, number document pieces per row, pad the end."""
    ids = [t for d, _ in docs for t in d]
    masks = [m for _, mask in docs for m in mask]
    owner = [i for i, (d, _) in enumerate(docs) for _ in d]
    rows = []
    for start in range(0, len(ids), length):
        piece = slice(start, start + length)
        pad = length - len(ids[piece])
        segments = [doc - owner[start] + 1 for doc in owner[piece]] + [0] * pad
        rows.append(
            (
                tuple(ids[piece] + [PAD] * pad),
                tuple(segments),
                tuple(masks[piece] + [0] * pad),
            )
        )
    return rows


def load(out: Path) -> dict[str, np.ndarray]:
    return datasets.load_from_disk(str(out)).with_format("numpy")[:]


def row_tuples(data: dict[str, np.ndarray], where: np.ndarray) -> list[tuple]:
    columns = [data[name][where].tolist() for name in ("input_ids", "segment_ids", "loss_mask")]
    return [tuple(map(tuple, row)) for row in zip(*columns, strict=True)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory, corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("packed") / "out"
    report = pack_corpus(
        [corpus], tokenizer_dir, out, max_length=128, bins=3, seed=1, progress=False
    )
    return report, load(out), out


def test_every_token_once_rows_exact_and_padding_only_at_bin_ends(packed, corpus, sp):
    report, data, out = packed
    docs = reference_documents(corpus, sp)
    assert data["input_ids"].shape == (report.rows, 128)
    features = datasets.load_from_disk(str(out)).features
    assert features["input_ids"] == features["segment_ids"] == List(Value("int32"), length=128)
    assert features["loss_mask"] == List(Value("int8"), length=128)
    assert (features["category"], features["bucket"]) == (Value("string"), Value("int32"))
    for category, category_docs in docs.items():
        # Each bin is a run of whole documents: its token count, from the report, must land
        # on a document boundary of the reference.
        ends = np.cumsum([len(ids) for ids, _ in category_docs]).tolist()
        boundary, first = 0, 0
        for bucket in range(3):
            boundary += report.tokens_per_bucket_per_category[bucket][category]
            end = ends.index(boundary) + 1
            expected = reference_rows(category_docs[first:end], 128)
            where = (data["category"] == category) & (data["bucket"] == bucket)
            assert sorted(row_tuples(data, where)) == sorted(expected)
            assert (data["segment_ids"][where] == 0).any(axis=1).sum() <= 1
            first = end
        assert first == len(category_docs)
    tokens = sum(len(ids) for d in docs.values() for ids, _ in d)
    real = data["segment_ids"] > 0
    assert report.tokens == real.sum() == tokens
    assert Counter(data["input_ids"][real].tolist()) == Counter(
        t for d in docs.values() for ids, _ in d for t in ids
    )
    # One EOS per document: the literal "</s>" in a page was encoded as text.
    documents = sum(len(d) for d in docs.values())
    assert (data["input_ids"][real] == EOS).sum() == report.documents == documents
    assert (data["input_ids"][~real] == PAD).all()
    assert report.padding_tokens == (~real).sum()


def test_bins_and_buckets_are_balanced_per_category(packed, corpus, sp):
    report, data, _ = packed
    docs = reference_documents(corpus, sp)
    assert report.rows_per_bucket == np.bincount(data["bucket"]).tolist()
    assert (np.diff(data["bucket"]) >= 0).all()  # bucket 0's rows, then bucket 1's, ...
    for category, category_docs in docs.items():
        lengths = [len(ids) for ids, _ in category_docs]
        per_bin = [report.tokens_per_bucket_per_category[b][category] for b in range(3)]
        assert sum(per_bin) == sum(lengths) == report.tokens_per_category[category]
        assert max(abs(n - sum(lengths) / 3) for n in per_bin) <= max(lengths)
        for bucket in range(3):
            assert category in data["category"][data["bucket"] == bucket]


@pytest.mark.parametrize(
    ("lengths", "bins"),
    [
        ([5] * 100, 30),  # Colossal's ceil(100/N)% slices give 25 bins here
        ([1, 1, 1, 1000, 1, 1, 1, 1, 1], 4),
        (list(range(1, 40)), 7),
        ([3, 4], 5),
    ],
)
def test_bin_bounds_are_exactly_bins_contiguous_and_nonempty(lengths, bins):
    bounds = bin_bounds(lengths, bins)
    assert len(bounds) == bins + 1 and bounds[0] == 0 and bounds[-1] == len(lengths)
    sizes = np.diff(bounds)
    if len(lengths) >= bins:
        assert (sizes >= 1).all()
    else:
        assert sizes.tolist() == [1] * len(lengths) + [0] * (bins - len(lengths))
    if lengths == [5] * 100:
        assert sorted(set(sizes.tolist())) == [3, 4]


def test_colossal_records_mask_the_source_and_add_bos(tmp_path, tokenizer_dir, sp):
    records = [
        {"source": "Translate: good morning", "target": "早上好", "category": "qa"},
        {"source": "", "target": "没有来源的目标", "category": "qa"},
        {"text": "a plain document", "category": "qa"},
    ]
    write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    pack_corpus(tmp_path / "in.jsonl", tokenizer_dir, out, max_length=64, add_bos=True)
    data = load(out)
    source, target = sp.encode(records[0]["source"]), sp.encode(records[0]["target"])
    empty_source_target = sp.encode(records[1]["target"])
    plain = sp.encode(records[2]["text"])
    ids = [BOS, *source, *target, EOS, BOS, *empty_source_target, EOS, BOS, *plain, EOS]
    mask = [0] * (1 + len(source)) + [1] * (len(target) + 1)
    mask += [1] * (len(empty_source_target) + 2) + [1] * (len(plain) + 2)
    n = len(ids)
    assert data["input_ids"].shape == (1, 64)
    assert data["input_ids"][0, :n].tolist() == ids
    assert data["loss_mask"][0].tolist() == mask + [0] * (64 - n)
    segments = [1] * (len(source) + len(target) + 2)
    segments += [2] * (len(empty_source_target) + 2) + [3] * (len(plain) + 2)
    assert data["segment_ids"][0].tolist() == segments + [0] * (64 - n)


def test_labels_mask_first_token_of_each_segment_numpy_and_torch():
    ids = [[11, 12, 13, 14, 15, 0], [21, 22, 23, 24, 25, 26]]
    segments = [[1, 1, 1, 2, 2, 0], [1, 2, 2, 2, 3, 3]]
    mask = [[0, 1, 1, 1, 1, 0], [1, 0, 1, 1, 1, 1]]
    x = IGNORE_INDEX
    expected = [[x, 12, 13, x, 15, x], [x, x, 23, 24, x, 26]]
    as_numpy = labels_from_row(np.array(ids, np.int32), np.array(segments), np.array(mask))
    as_torch = labels_from_row(torch.tensor(ids), torch.tensor(segments), torch.tensor(mask))
    assert as_numpy.tolist() == as_torch.tolist() == expected
    assert as_torch.dtype == torch.long and as_numpy.dtype == np.int64


def test_bad_records_are_counted_and_written_with_file_and_line(tmp_path, tokenizer_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    lines = [
        {"text": "kept one"},
        "not json",
        {"category": "x"},
        {"text": 5},
        {"source": 1, "target": "t"},
        {"text": ""},
        {"text": "a", "target": "b"},
        [1, 2],
        {"source": None, "target": "kept two", "category": "qa"},
    ]
    write_jsonl(inputs / "a.jsonl", lines)
    (inputs / "b.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')  # Latin-1, not UTF-8
    report = pack_corpus(inputs, tokenizer_dir, tmp_path / "out", max_length=16, progress=False)
    rejects = [
        json.loads(x)
        for x in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert report.documents == 2 and report.rejected == len(rejects) == 8
    assert report.documents + report.rejected == len(lines) + 1
    in_a = [(r["line"], r["field"]) for r in rejects if r["file"] == str(inputs / "a.jsonl")]
    assert in_a == [
        (2, None),
        (3, "text"),
        (4, "text"),
        (5, "source"),
        (6, "text"),
        (7, "text"),
        (8, None),
    ]
    (latin1,) = [r for r in rejects if r["file"] == str(inputs / "b.jsonl")]
    assert "not UTF-8" in latin1["reason"]
    assert latin1["line"] == 1
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rejected"] == 8
    assert "rejected because" in (tmp_path / "out" / "report.md").read_text()


def test_same_seed_same_dataset_other_seed_other_order(tmp_path, corpus, tokenizer_dir):
    def pack(name: str, seed: int) -> datasets.Dataset:
        pack_corpus(corpus, tokenizer_dir, tmp_path / name, max_length=64, bins=2, seed=seed)
        return datasets.load_from_disk(str(tmp_path / name))

    a, again, other = pack("a", 7), pack("b", 7), pack("c", 8)
    assert a.data.table.equals(again.data.table)
    assert a[:]["input_ids"] != other[:]["input_ids"]
    assert a[:]["bucket"] == other[:]["bucket"]

    def rows(d: datasets.Dataset) -> list:
        columns = d[:]
        names = ("category", "input_ids", "segment_ids", "loss_mask")
        return sorted(zip(*(columns[name] for name in names), strict=True))

    assert rows(a) == rows(other)


def test_out_is_written_atomically_and_bad_settings_are_named(tmp_path, corpus, tokenizer_dir):
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        pack_corpus(corpus, tokenizer_dir, tmp_path / "x", max_length=1, progress=False)
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"no documents to pack.*'text: empty': 1"):
        pack_corpus(
            tmp_path / "empty.jsonl", tokenizer_dir, tmp_path / "y", max_length=8, progress=False
        )
    assert not (tmp_path / "y").exists()
    pack_corpus(corpus, tokenizer_dir, tmp_path / "z", max_length=512, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        pack_corpus(corpus, tokenizer_dir, tmp_path / "z", max_length=512, progress=False)


@pytest.mark.parametrize("preset", ["tiny", "tiny-alibi"])
def test_packed_loss_equals_the_documents_run_alone(preset, tmp_path, test_data, tokenizer_dir, sp):
    records = [
        {"text": f"{en} {zh}"} if i % 2 else {"source": en if i % 3 else "", "target": zh}
        for i, (en, zh) in enumerate(_tatoeba(test_data, 1000, 60))
    ]
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "d.jsonl", records)
    pack_corpus(tmp_path / "in", tokenizer_dir, tmp_path / "out", max_length=64, progress=False)
    data = load(tmp_path / "out")
    docs = reference_documents(tmp_path / "in", sp)["default"]
    whole = {(tuple(ids), tuple(mask)): False for ids, mask in docs}
    ids, segments = torch.from_numpy(data["input_ids"]).long(), data["segment_ids"]
    labels = labels_from_row(ids, torch.from_numpy(segments), torch.from_numpy(data["loss_mask"]))
    # Keep the labels of whole documents only: a piece cut at a row boundary lacks context.
    for row in range(len(segments)):
        for segment in set(segments[row].tolist()) - {0}:
            piece = segments[row] == segment
            key = (tuple(data["input_ids"][row][piece]), tuple(data["loss_mask"][row][piece]))
            if key in whole:
                whole[key] = True
            else:
                labels[row, torch.from_numpy(piece)] = IGNORE_INDEX
    assert sum(whole.values()) >= len(docs) // 2 and (segments.max(axis=1) >= 2).all()

    torch.manual_seed(0)
    model = BaichuanForCausalLM(preset_config(preset, vocab_size=32000)).double().eval()

    def loss_sum(input_ids, mask, target):
        n = (target[:, 1:] != IGNORE_INDEX).sum()
        with torch.no_grad():
            return model(input_ids, attention_mask=mask, labels=target).loss * n

    packed = loss_sum(ids, torch.from_numpy(segments), labels)
    separate = 0.0
    for doc_ids, mask in (key for key, seen in whole.items() if seen):
        doc = torch.tensor([doc_ids])
        separate += loss_sum(doc, None, torch.where(torch.tensor([mask]) == 1, doc, IGNORE_INDEX))
    # ALiBi attention runs in fp32 even in a float64 model, hence a relative tolerance.
    assert packed.item() == pytest.approx(separate.item(), rel=1e-8)
    leaky = loss_sum(ids, None, labels)  # one causal sequence per row: documents see each other
    assert leaky.item() != pytest.approx(packed.item(), rel=1e-4)
