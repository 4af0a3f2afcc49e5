"""Writing small corpus files for tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON line per record; a `str` item is written as is (a deliberately broken line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def llama_tokenizer(test_data: Path, tmp_path: Path) -> Path:
    """The LLaMA tokenizer from the test data, as a tokenizer dir."""
    from chuan.tokenizer.hf import write_tokenizer_dir
    from chuan.tokenizer.spm import load_proto

    out = tmp_path / "tok"
    write_tokenizer_dir(out, load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model"))
    return out
