"""Shared fixtures: the real third-party test data beside the project, and tiny model dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`; its absence is a broken checkout, so fail rather than skip."""
    assert SHARED_DATA.is_dir(), f"test data missing: {SHARED_DATA} (see ../shared/data/README.md)"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A randomly initialised `tiny` (RoPE, NormHead) model dir, made once per session."""
    from chuan.model.checkpoint import init_model_dir

    out = tmp_path_factory.mktemp("models") / "tiny"
    init_model_dir(out, "tiny", seed=3)
    return out
