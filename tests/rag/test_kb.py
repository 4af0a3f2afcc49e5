"""Knowledge base dirs: byte-identical rebuilds, `--add` equal to indexing at once, resuming an
interrupted run, search modes and the relevance filter, and the errors of bad KBs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chuan.errors import InputError, MissingError, OutputExistsError
from chuan.rag import build
from chuan.rag.build import build_kb
from chuan.rag.kb import KnowledgeBase

SAMPLE = Path(__file__).resolve().parents[2] / "src/chuan/assets/sample"
POETRY = SAMPLE / "poetry_zh.jsonl"
BOTCHAN = SAMPLE / "botchan_en.jsonl"


def _digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kb") / "kb"
    build_kb([POETRY, BOTCHAN], out, dense="lsa", lsa_dims=64, progress=False)
    return out


def test_indexing_twice_gives_byte_identical_kbs(kb, tmp_path):
    """Also from another process with another string-hash seed (set orders differ there)."""
    code = (
        "from chuan.rag.build import build_kb\n"
        f"build_kb([{str(POETRY)!r}, {str(BOTCHAN)!r}], {str(tmp_path / 'again')!r}, "
        "dense='lsa', lsa_dims=64, progress=False)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert _digest(tmp_path / "again") == _digest(kb)
    manifest = json.loads((kb / "manifest.json").read_text())
    assert manifest["analyzer"]["fold_traditional"] is True
    assert manifest["bm25"] == {"k1": 1.5, "b": 0.75, "method": "lucene"}
    assert {"bm25s", "numpy", "scipy"} <= set(manifest["libraries"])
    assert [e["sha256"] for e in manifest["inputs"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (POETRY, BOTCHAN)
    ]
    assert manifest["counts"]["documents"] == 620 + 11
    assert manifest["dense"] == {"kind": "lsa", "dims": 64}


def test_add_gives_the_kb_of_indexing_everything_at_once(kb, tmp_path):
    out = tmp_path / "kb"
    build_kb([POETRY], out, dense="lsa", lsa_dims=64, progress=False)
    build_kb([BOTCHAN, POETRY], out, add=True, lsa_dims=64, progress=False)  # POETRY: skipped
    assert _digest(out) == _digest(kb)
    with pytest.raises(InputError, match="--chunk-chars 100 differs"):
        build_kb([BOTCHAN], out, add=True, chunk_chars=100, progress=False)
    with pytest.raises(OutputExistsError, match="--add"):
        build_kb([BOTCHAN], out, progress=False)


def test_an_interrupted_run_resumes_file_by_file(tmp_path, monkeypatch):
    out = tmp_path / "kb"
    done = build_kb([POETRY, BOTCHAN], out, progress=False)
    (out / "manifest.json").unlink()  # as if the run had stopped before its last step
    with pytest.raises(MissingError, match="unfinished knowledge base"):
        KnowledgeBase.open(out)

    def no_rechunking(*args, **kwargs):
        raise AssertionError("a complete shard was chunked again")

    monkeypatch.setattr(build, "chunk_file", no_rechunking)
    assert build_kb([POETRY, BOTCHAN], out, progress=False) == done


def test_search_returns_located_chunks_and_abstains_off_topic(kb):
    base = KnowledgeBase.open(kb)
    hits = base.search("《登鹳雀楼》是谁写的？", 3)
    assert hits[0].doc_id == "tangshisanbaishou/1" and hits[0].location == f"{POETRY}:2"
    assert hits[0].text.startswith("登鸛雀樓（王之渙）")
    document = json.loads(POETRY.read_text().splitlines()[1])["text"]
    assert document[hits[0].start : hits[0].end] == hits[0].text
    assert base.search("《帝京篇十首》是谁写的？", 5) == []  # a title the KB does not hold
    assert base.search("quantum chromodynamics", 5) == []
    assert base.search("《帝京篇十首》是谁写的？", 5, threshold=0)  # the filter off
    english = base.search("the janitor carried me home on his back", 3, mode="hybrid")
    assert english[0].doc_id == "botchan/1"
    dense = base.search("the janitor carried me home on his back", 3, mode="dense")
    assert len(dense) == 3 and all(-1 <= h.score <= 1.0001 for h in dense)


def test_sparse_only_kbs_refuse_dense_modes(tmp_path):
    build_kb([BOTCHAN], tmp_path / "kb", progress=False)
    with pytest.raises(InputError, match="--dense"):
        KnowledgeBase.open(tmp_path / "kb").search("janitor", mode="hybrid")


def test_a_kb_of_another_format_version_is_refused(kb, tmp_path):
    copy = tmp_path / "old"
    build_kb([BOTCHAN], copy, progress=False)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | {"version": 99}))
    with pytest.raises(
        InputError, match=r"field 'version'.*format 99.*reads format 1.*--overwrite"
    ):
        KnowledgeBase.open(copy)
    with pytest.raises(MissingError, match=r"not a knowledge base.*chuan rag index"):
        KnowledgeBase.open(tmp_path / "nothing")


def test_a_model_dir_gives_dense_vectors(tmp_path, test_data):
    from chuan.model.checkpoint import init_model_dir
    from chuan.tokenizer.hf import write_tokenizer_dir
    from chuan.tokenizer.spm import load_proto

    tok = write_tokenizer_dir(
        tmp_path / "tok", load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    )
    init_model_dir(tmp_path / "model", "tiny", tokenizer_dir=tok, seed=1)
    docs = tmp_path / "docs.jsonl"
    texts = ["The cat sat on the mat.", "Dogs bark at night.", "Rain falls."]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    manifest = build_kb([docs], tmp_path / "kb", dense=str(tmp_path / "model"), progress=False)
    assert manifest["dense"]["kind"] == "model" and manifest["dense"]["dims"] > 0
    base = KnowledgeBase.open(tmp_path / "kb", device="cpu")
    assert base.vectors.dtype.name == "float32" and base.vectors.shape[0] == 3
    hits = base.search("The cat sat on the mat.", 1, mode="dense")
    assert hits[0].text == "The cat sat on the mat." and hits[0].score == pytest.approx(1, abs=1e-4)
    with pytest.raises(MissingError, match="no such model dir"):
        build_kb([docs], tmp_path / "kb2", dense=str(tmp_path / "absent"), progress=False)
