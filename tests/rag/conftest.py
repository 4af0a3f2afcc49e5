"""Fixtures of the rag tests: a small knowledge base of real sample text (Tang poems in
Traditional characters, KJV chapters in English), built once per session; for the cited
answers of a random tiny model, that model and a knowledge base that also holds a glossary of
its tokenizer's pieces: a question made of glossary words retrieves it first, and whatever
the model writes shares terms with it, so a citation threshold of 0 cites the noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chuan.fileio import write_jsonl
from chuan.infer.loading import load_saved_tokenizer
from chuan.rag.build import build_kb
from helpers.serving import chat_model_dir

GLOSSARY_WORDS = 40  # of the glossary's first pieces make the question
SAMPLE = Path(__file__).resolve().parents[2] / "src/chuan/assets/sample"


def _head(path: Path, lines: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(lines), f, strict=False)]


@pytest.fixture(scope="session")
def small_kb(tmp_path_factory) -> Path:
    """40 poems and 20 Genesis / Exodus chapters, BM25 only."""
    root = tmp_path_factory.mktemp("small_kb")
    poems = write_jsonl(root / "poems.jsonl", _head(SAMPLE / "poetry_zh.jsonl", 40))
    bible = write_jsonl(root / "kjv.jsonl", _head(SAMPLE / "bible_kjv_en.jsonl", 20))
    build_kb([poems, bible], root / "kb", progress=False)
    return root / "kb"


@pytest.fixture(scope="session")
def chat_model(test_data, tmp_path_factory) -> Path:
    """A random tiny chat model dir with a 1,200-piece KJV / CUV tokenizer."""
    return chat_model_dir(test_data, tmp_path_factory.mktemp("chat_model"))


@pytest.fixture(scope="session")
def glossary(chat_model) -> list[str]:
    """The tokenizer's word pieces (no control or byte pieces), in id order."""
    tokenizer = load_saved_tokenizer(chat_model)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    words = [p.strip("▁") for p in pieces if not p.startswith("<")]
    return [w for w in words if w.isalpha()]


@pytest.fixture(scope="session")
def question(glossary) -> str:
    return " ".join(glossary[:GLOSSARY_WORDS]) + "?"


@pytest.fixture(scope="session")
def glossary_kb(small_kb, glossary, tmp_path_factory) -> Path:
    """The small KB's documents and the glossary, a chunk each."""
    root = tmp_path_factory.mktemp("kb_glossary")
    words = write_jsonl(root / "glossary.jsonl", [{"text": " ".join(glossary)}])
    inputs = [small_kb.parent / "poems.jsonl", small_kb.parent / "kjv.jsonl", words]
    build_kb(inputs, root / "kb", chunk_chars=20_000, progress=False)
    return root / "kb"
