"""A small real bilingual corpus, its tokenizer and packed rows, for the pretraining tests.

Documents are runs of five consecutive Bible verses in English (KJV) or Chinese (CUV,
simplified) from `tests/data/text/parallel/`, so the model has real structure to learn.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from helpers.corpus import write_jsonl

VERSES_PER_DOC = 5


def bible_documents(test_data: Path, verses: int) -> list[dict]:
    path = test_data / "text" / "parallel" / "bible_kjv_cuvs_wenli.tsv"
    rows = path.read_text(encoding="utf-8").splitlines()[1 : verses + 1]
    english = [r.split("\t")[1] for r in rows]
    chinese = [r.split("\t")[2] for r in rows]
    docs = []
    for start in range(0, len(rows), VERSES_PER_DOC):
        docs.append({"text": " ".join(english[start : start + VERSES_PER_DOC]), "category": "en"})
        docs.append({"text": "".join(chinese[start : start + VERSES_PER_DOC]), "category": "zh"})
    return docs


def bible_corpus(root: Path, test_data: Path, *, verses: int, max_length: int) -> dict[str, Path]:
    """A 3,000-piece tokenizer trained on the verses and the verses packed into rows."""
    from chuan.data.pack import pack_corpus
    from chuan.tokenizer.train import train_tokenizer

    text = write_jsonl(root / "corpus.jsonl", bible_documents(test_data, verses))
    train_tokenizer(text, root / "tok", vocab_size=3000, progress=False)
    pack_corpus([text], root / "tok", root / "packed", max_length=max_length, progress=False)
    return {"tokenizer": root / "tok", "packed": root / "packed"}


def pretrain_config(out: Path, data: Path, tokenizer: Path, **fields) -> dict:
    """A small CPU recipe as a mapping; `fields` replace top-level keys."""
    config = {
        "out": str(out),
        "preset": "tiny",
        "tokenizer": str(tokenizer),
        "seed": 7,
        "micro_batch_size": 4,
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "checkpoint": {"every": 4, "keep": 2},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [{"data": [str(data)], "steps": 16}],
    }
    config.update(fields)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path
