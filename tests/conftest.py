"""Fixtures for every test module: the real third-party test data in `tests/data`, and tiny
model dirs.

The tests mirror the rooms of `src/chuan` (`tests/model/`, `tests/tokenizer/`, ...), one folder
per room; `test_layers.py`, which walks every room, stays here. Test file basenames stay unique
(no `__init__.py`: pytest's default import mode needs that); a fixture used by one room only
goes into that room's `conftest.py`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers

# `tests/data` is test data, not the data room: chuan.data's tests live in `tests/corpus/`
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """`tests/data`: slices of real third-party text, tokenizers, a tiny pretrained model and
    benchmark CSVs, with their sources, licences and trims in `tests/data/README.md`. It is part
    of the repository; its absence is a broken checkout, so fail rather than skip."""
    assert TEST_DATA.is_dir(), f"test data missing: {TEST_DATA} (see tests/data/README.md)"
    return TEST_DATA


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A randomly initialised `tiny` (RoPE, NormHead) model dir, made once per session."""
    from chuan.model.checkpoint import init_model_dir

    out = tmp_path_factory.mktemp("models") / "tiny"
    init_model_dir(out, "tiny", seed=3)
    return out
