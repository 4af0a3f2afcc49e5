"""Chunking: the cores of a document's chunks reassemble it exactly, every span points at the
chunk's text, chunks stay within their size, and every corpus format keeps file and line."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chuan.documents import RecordError
from chuan.rag.chunking import chunk_file, chunk_spans, sentence_spans

TEXTS = [
    "",
    "one",
    "\n\n",
    "白日依山盡，黃河入海流。欲窮千里目，更上一層樓。",
    'It is 3.14 ok. Yes! "Quoted." Next 中文。好？」再\n\n\nlast paragraph\n',
    "x" * 1000,
    "a. " * 300,
]


def _sample_texts(test_data) -> list[str]:
    texts = list(TEXTS)
    for name in ("poetry_zh", "bible_kjv_en"):
        path = test_data.parents[1] / "src/chuan/assets/sample" / f"{name}.jsonl"
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines()[:40]]
    return texts


@pytest.mark.parametrize("chunk_chars,overlap", [(400, 50), (100, 0), (10, 3), (1, 0), (60, 59)])
def test_cores_partition_each_document_and_spans_hold_the_text(test_data, chunk_chars, overlap):
    for text in _sample_texts(test_data):
        spans = chunk_spans(text, chunk_chars, overlap)
        assert "".join(text[core:end] for _, core, end in spans) == text
        for (start, core, end), nxt in zip(spans, [*spans[1:], None][: len(spans)], strict=True):
            assert start == max(0, core - overlap)
            assert end - core > 0 and end - start <= chunk_chars
            if nxt is not None:
                assert nxt[1] == end  # the next core starts where this one ends


def test_cuts_prefer_paragraphs_then_sentences():
    text = "First sentence here. Second one!\n\n第一句。第二句？"
    pieces = [text[c:e] for _, c, e in chunk_spans(text, 22, 0)]
    # the first paragraph is too long: cut at its sentence end; the rest fits one chunk
    assert pieces == ["First sentence here. ", "Second one!\n\n第一句。第二句？"]
    line = "Pi is 3.14 ok. 好。"
    assert [line[s:e] for s, e in sentence_spans(line)] == [
        "Pi is 3.14 ok. ",
        "好。",
    ]


def test_every_format_keeps_file_line_and_span(tmp_path):
    docs = ["第一篇。很短。", "Second document. It has two sentences.", "三"]
    (tmp_path / "a.jsonl").write_text(
        "\n".join(
            json.dumps({"text": d, "id": f"d{i}"}, ensure_ascii=False) for i, d in enumerate(docs)
        )
        + "\n"  # fmt: skip
    )
    (tmp_path / "b.json").write_text(json.dumps([{"text": d} for d in docs], ensure_ascii=False))
    (tmp_path / "c.txt").write_text("\n".join(docs[:1] + [""] + docs[1:]) + "\n")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    pq.write_table(pa.table({"text": docs}), tmp_path / "e.parquet")
    expected_lines = {"a.jsonl": [1, 2, 3], "b.json": [1, 2, 3], "c.txt": [1, 3, 4],
                      "d.jsonl.gz": [1, 2, 3], "e.parquet": [1, 2, 3]}  # fmt: skip
    for name, lines in expected_lines.items():
        per_doc = list(chunk_file(tmp_path / name, 12, 2))
        assert len(per_doc) == 3
        for doc, line, chunks in zip(docs, lines, per_doc, strict=True):
            assert {c.line for c in chunks} == {line}
            assert all(c.source == str(tmp_path / name) for c in chunks)
            assert all(doc[c.start : c.end] == c.text for c in chunks)
            assert "".join(doc[c.core_start : c.end] for c in chunks) == doc
    assert [c.doc_id for c in next(chunk_file(tmp_path / "a.jsonl", 400, 50))] == ["d0"]


def test_a_bad_record_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: field 'text': missing"):
        list(chunk_file(path, 100, 10))
