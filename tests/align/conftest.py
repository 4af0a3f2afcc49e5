"""Fixtures of the post-training tests: a bilingual tokenizer with Baichuan's reserved role
pieces, and a tiny model pretrained briefly on real text (Bible verses, English and Chinese),
so that fine-tuning has something to build on."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.pretrain_fixtures import bible_corpus, pretrain_config, write_config


@pytest.fixture(scope="session")
def bible(tmp_path_factory, test_data) -> dict[str, Path]:
    """A 3,000-piece tokenizer trained on 2,000 verses, and the verses packed into rows."""
    return bible_corpus(
        tmp_path_factory.mktemp("sft-corpus"), test_data, verses=2000, max_length=128
    )


@pytest.fixture(scope="session")
def sft_tokenizer(bible):
    from chuan.tokenizer.hf import load_tokenizer

    return load_tokenizer(bible["tokenizer"])


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, bible) -> Path:
    """A `tiny` model pretrained for 120 steps on the verses (about 15 s on two cores)."""
    from chuan.train.config import load_pretrain_config
    from chuan.train.loop import pretrain

    root = tmp_path_factory.mktemp("sft-base")
    config = pretrain_config(
        root / "run",
        bible["packed"],
        bible["tokenizer"],
        micro_batch_size=8,
        checkpoint={"every": 1000, "keep": 1},
        stages=[{"data": [str(bible["packed"])], "steps": 120}],
    )
    result = pretrain(load_pretrain_config(write_config(root / "pretrain.yaml", config)))
    return result.model_dir
