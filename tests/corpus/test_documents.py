"""Corpus reading: every format and compression gives the same documents; bad input is named."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from chuan.documents import (
    Document,
    RecordError,
    corpus_files,
    iter_documents,
    iter_records,
    to_document,
)

RECORDS = [
    {"text": "起初，　神创造天地。", "id": "a", "category": "zh"},
    {"text": "In the beginning\nGod created the heaven.", "category": "en", "meta": {"k": 1}},
    {"text": "", "id": "empty"},
]


def _jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _expected(path) -> list[Document]:
    return [
        Document(RECORDS[0]["text"], "zh", str(path), 1),
        Document(RECORDS[1]["text"], "en", str(path), 2),
        Document("", None, str(path), 3),
    ]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.jsonl.gz", "d.jsonl.zst", "d.parquet"])
def test_every_record_format_reads_the_same_documents(tmp_path, name):
    path = tmp_path / name
    data = _jsonl(RECORDS).encode("utf-8")
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif name.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist([{**r, "meta": None} for r in RECORDS]), path)
    else:
        path.write_bytes(data)
    assert list(iter_documents([path])) == _expected(path)


def test_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n  " + json.dumps(RECORDS, ensure_ascii=False, indent=1), encoding="utf-8")
    assert list(iter_documents([path])) == _expected(path)


def test_txt_is_one_document_per_non_blank_line(tmp_path):
    path = tmp_path / "d.txt.gz"
    path.write_bytes(gzip.compress(b"first line\r\n\n   \n  second, indented \n"))
    assert list(iter_documents([path])) == [
        Document("first line", None, str(path), 1),
        Document("  second, indented ", None, str(path), 4),
    ]


def test_real_jsonl_and_its_compressed_copies(test_data, tmp_path):
    """c4_demo.jsonl holds 300 documents (data README); gz, zst and Parquet copies agree."""
    source = test_data / "text" / "en" / "c4_demo.jsonl"
    raw = source.read_bytes()
    (tmp_path / "c4.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c4.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c4.parquet")

    texts = [d.text for d in iter_documents([source])]
    assert len(texts) == 300 and all(texts)
    for name in ("c4.jsonl.gz", "c4.jsonl.zst", "c4.parquet"):
        assert [d.text for d in iter_documents([tmp_path / name])] == texts


def test_dirs_are_walked_sorted_skipping_hidden_and_unknown_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n', encoding="utf-8")
    (tmp_path / "LICENSE").write_text("not a corpus\n", encoding="utf-8")
    (tmp_path / ".out.tmp-1").mkdir()
    (tmp_path / ".out.tmp-1" / "x.txt").write_text("half-written\n", encoding="utf-8")
    assert corpus_files([tmp_path]) == [tmp_path / "a.jsonl", tmp_path / "b" / "2.txt"]
    assert corpus_files(str(tmp_path)) == corpus_files([tmp_path])  # one path, not its letters
    assert [d.text for d in iter_documents([tmp_path])] == ["one", "two"]


def test_unknown_named_file_and_empty_dir_are_errors(tmp_path):
    (tmp_path / "data.csv").write_text("text\nx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.csv: unknown corpus format"):
        corpus_files([tmp_path / "data.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no corpus files"):
        corpus_files([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="missing.jsonl not found"):
        corpus_files([tmp_path / "missing.jsonl"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "cut off', r"d\.jsonl:3: invalid JSON"),
        ('{"body": "x"}', r"d\.jsonl:3: field 'text': missing"),
        ('{"text": 42}', r"d\.jsonl:3: field 'text': expected a string, got int"),
        ('{"text": "x", "category": 7}', r"d\.jsonl:3: field 'category': expected a string"),
        ('["text"]', r"d\.jsonl:3: expected a JSON object, got list"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=message):
        list(iter_documents([path]))


def test_on_error_counts_bad_records_and_keeps_going(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\nnot json\n{"text": null}\n{"text": "b"}\n', encoding="utf-8")
    errors: list[RecordError] = []
    docs = list(iter_documents([path], on_error=errors.append))
    assert [d.text for d in docs] == ["a", "b"]
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "text")]


def test_records_are_reusable_with_another_text_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "x", "n": 1}\n', encoding="utf-8")
    assert list(iter_records(path)) == [(1, {"content": "x", "n": 1})]
    assert to_document({"content": "x"}, source=path, line=1, text_field="content").text == "x"
    assert next(iter_documents([path], text_field="content")).text == "x"


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(RecordError, match=r"latin1\.txt:1: not UTF-8 text"):
        list(iter_documents([path]))
